"""Audio I/O in one place: find, read, downmix, resample, encode and decode.

Arrays are float32 numpy ``(channels, time)`` unless a docstring says otherwise.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".opus")
MEMBER_EXTENSIONS = ("flac", "wav")  # how audio is stored inside a shard's samples


class AudioError(ValueError):
    """An audio file that cannot be used, with a one-line reason."""


def read(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a whole file to ``(channels, time)`` float32 and its sample rate."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile reports corrupt and non-audio files alike
        raise AudioError(f"unreadable or corrupt audio ({_first_line(err)})") from None
    return np.ascontiguousarray(data.T), int(rate)


def info(path: str | Path) -> sf._SoundFileInfo:
    try:
        return sf.info(str(path))
    except Exception as err:
        raise AudioError(f"unreadable or corrupt audio ({_first_line(err)})") from None


def can_write(fmt: str, subtype: str) -> bool:
    """Whether libsndfile writes ``subtype`` (e.g. PCM_16) in container ``fmt`` (e.g. FLAC)."""
    return bool(sf.check_format(fmt, subtype))


def open_writer(path, rate: int, channels: int, fmt: str = "WAV", subtype=None, shown=None):
    """A ``soundfile.SoundFile`` open for writing blocks of ``(time, channels)``; a failure
    is an :class:`AudioError` that names ``shown`` (the final name, when ``path`` is a
    temp file)."""
    try:
        return sf.SoundFile(str(path), "w", rate, channels, subtype=subtype, format=fmt)
    except Exception as err:
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
        raise AudioError(f"cannot write output {shown or path} ({reason})") from None


def read_blocks(path: str | Path, frames: int) -> Iterator[np.ndarray]:
    """``(channels, frames)`` float32 blocks of a file, so any length fits in memory.

    NaN or infinite samples stop it with an :class:`AudioError` giving their time.
    """
    try:
        reader = sf.SoundFile(str(path))
    except Exception as err:
        raise AudioError(f"unreadable or corrupt audio ({_first_line(err)})") from None
    with reader:
        position = 0
        while True:
            try:
                block = reader.read(frames, dtype="float32", always_2d=True).T
            except Exception as err:
                raise AudioError(f"unreadable or corrupt audio ({err})") from None
            if block.shape[1] == 0:
                return
            bad = ~np.isfinite(block).all(axis=0)
            if bad.any():
                when = (position + int(np.argmax(bad))) / reader.samplerate
                raise AudioError(f"NaN or infinite samples at {when:.2f} s")
            position += block.shape[1]
            yield np.ascontiguousarray(block)


def read_head(path: str | Path, seconds: float) -> tuple[np.ndarray, int]:
    """The first ``seconds`` of a file, downmixed: ``(time,)`` and its rate."""
    with sf.SoundFile(str(path)) as f:
        data = f.read(int(seconds * f.samplerate), dtype="float32", always_2d=True)
        return data.mean(axis=1), f.samplerate


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(channels, time)`` -> ``(time,)`` by averaging channels."""
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def resample(audio: np.ndarray | torch.Tensor, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc)."""
    if orig == new:
        return np.asarray(audio, dtype=np.float32)
    wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    return AF.resample(wave, orig, new).numpy()


def encode(audio: np.ndarray, rate: int, fmt: str = "flac") -> bytes:
    """``(time,)`` float32 -> FLAC (16-bit) or WAV (float) bytes."""
    buf = io.BytesIO()
    if fmt == "flac":
        sf.write(buf, np.clip(audio, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
    elif fmt == "wav":
        sf.write(buf, audio, rate, format="WAV", subtype="FLOAT")
    else:
        raise ValueError(f"unknown audio format '{fmt}' (use flac or wav)")
    return buf.getvalue()


def decode(data: bytes, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode ``frames`` samples from ``start`` of encoded mono audio -> ``(time,)``, rate.

    Seeking means a 1 s crop of a 10 s FLAC chunk decodes only about 1 s.
    """
    with sf.SoundFile(io.BytesIO(data)) as f:
        if start:
            f.seek(start)
        out = f.read(frames, dtype="float32", always_2d=True)
        return out[:, 0] if out.shape[1] == 1 else out.mean(axis=1), f.samplerate


def num_frames(data: bytes) -> int:
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.frames


def write(path: str | Path, audio: np.ndarray, rate: int, subtype: str | None = None) -> None:
    """Write ``(channels, time)`` or ``(time,)`` audio; the format follows the extension."""
    data = audio.T if audio.ndim == 2 else audio
    sf.write(str(path), data, rate, subtype=subtype)


def walk(root: Path) -> tuple[list[str], list[dict]]:
    """Sorted relative paths of audio files, and skips for unreadable folders/other files.

    Symlinked folders are followed; one that leads back into a folder already walked (a
    loop, or a second link to the same place) is listed as skipped.
    """
    files, skipped = [], []
    seen = {os.path.realpath(root)}

    def on_error(err: OSError) -> None:
        skipped.append({"path": err.filename, "reason": f"unreadable folder ({err.strerror})"})

    for dirpath, dirnames, names in os.walk(root, onerror=on_error, followlinks=True):
        for name in list(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if real in seen:
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                skipped.append({"path": rel, "reason": "symlinked folder already walked (loop)"})
                dirnames.remove(name)
            seen.add(real)
        dirnames.sort()
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if name.lower().endswith(AUDIO_EXTENSIONS):
                files.append(rel)
            else:
                skipped.append({"path": rel, "reason": "not an audio file extension"})
    return sorted(files), skipped


def find_partner(rel: str, noisy_root: Path) -> Path | None:
    """The noisy file for a clean ``rel``: the original's ``noisy_<name>`` or the same path."""
    head, name = os.path.split(rel)
    for candidate in (os.path.join(head, f"noisy_{name}"), rel):
        if (noisy_root / candidate).is_file():
            return noisy_root / candidate
    return None


def member(sample: dict, prefix: str = "") -> bytes | None:
    """The encoded audio of a WebDataset sample (``flac`` or ``wav``; ``prefix="noisy."``
    for a stored noisy twin), or None if it has none."""
    ext = next((e for e in MEMBER_EXTENSIONS if f"{prefix}{e}" in sample), None)
    return None if ext is None else sample[f"{prefix}{ext}"]


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]
