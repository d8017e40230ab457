"""Audio I/O in one place: find, read, downmix, resample, encode and decode.

Arrays are float32 numpy ``(channels, time)`` unless a docstring says otherwise.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from diffdenoise.data import flacseek

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".opus")
MEMBER_EXTENSIONS = ("flac", "wav")  # how audio is stored inside a shard's samples
# Shard formats: the member each one writes. FLAC is compact, for archives; the WAV forms
# are sliced straight out of the tar member's bytes, with no decoding (see wav_layout).
SHARD_FORMATS = {"flac": "flac", "pcm16": "wav", "wav": "wav"}
_WAV_SAMPLES = {(1, 16): np.dtype("<i2"), (3, 32): np.dtype("<f4")}  # (format tag, bits)


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
    """``(time,)`` float32 -> FLAC (16-bit, with a seek table: see
    :mod:`diffdenoise.flacseek`), WAV 16-bit (``pcm16``) or WAV float bytes."""
    buf = io.BytesIO()
    if fmt == "flac":
        sf.write(buf, np.clip(audio, -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")
        return flacseek.add_seektable(buf.getvalue())
    if fmt == "pcm16":
        sf.write(buf, np.clip(audio, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    elif fmt == "wav":
        sf.write(buf, audio, rate, format="WAV", subtype="FLOAT")
    else:
        raise ValueError(f"unknown audio format '{fmt}' (use {', '.join(SHARD_FORMATS)})")
    return buf.getvalue()


def wav_layout(data) -> tuple[int, int, int, np.dtype] | None:
    """Where the samples of a mono 16-bit or float WAV lie: ``(byte offset, frames, rate,
    dtype)``; None for any other audio, which :func:`decode` then hands to libsndfile.

    ``data`` is bytes or anything sliced like bytes (a :class:`diffdenoise.data.tarindex.Member`
    reads only the slices asked for).
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and size >= 16:
            body = data[pos + 8 : pos + 8 + min(size, 40)]
            tag, channels, rate = struct.unpack_from("<HHI", body)
            bits = struct.unpack_from("<H", body, 14)[0]
            if tag == 0xFFFE and size >= 40:  # WAVE_FORMAT_EXTENSIBLE: the tag opens the GUID
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (_WAV_SAMPLES.get((tag, bits)), channels, rate)
        elif chunk == b"data" and fmt is not None:
            dtype, channels, rate = fmt
            if dtype is None or channels != 1:
                return None
            return pos + 8, min(size, len(data) - pos - 8) // dtype.itemsize, rate, dtype
        pos += 8 + size + (size & 1)
    return None


class Encoded:
    """Encoded mono audio opened once: ``frames``, ``rate`` and :meth:`read` of a span.

    A 16-bit or float WAV is sliced from the bytes directly (scaled as libsndfile scales
    it); anything else goes to libsndfile, and FLAC seeks, so a 1 s crop of a 10 s chunk
    decodes only about 1 s. ``data`` is bytes or a :class:`diffdenoise.data.tarindex.Member`,
    of which only the slices asked for are read.
    """

    def __init__(self, data):
        self.layout = wav_layout(data)
        if self.layout is not None:
            self.data, self.file = data, None
            _, self.frames, self.rate, _ = self.layout
        else:
            self.file = sf.SoundFile(io.BytesIO(bytes(data)))
            self.frames, self.rate = self.file.frames, self.file.samplerate

    def read(self, start: int = 0, frames: int = -1, keep_int16: bool = False) -> np.ndarray:
        """``(time,)`` from ``start``; with ``keep_int16``, 16-bit audio stays int16 (half
        the bytes to move; ``x / 32768`` is the float it stands for), else float32."""
        start = min(start, self.frames)
        count = self.frames - start if frames < 0 else min(frames, self.frames - start)
        if self.file is None:
            offset, _, _, dtype = self.layout
            first = offset + start * dtype.itemsize
            raw = np.frombuffer(_slice(self.data, first, first + count * dtype.itemsize), dtype)
            if dtype.kind == "i":
                return raw if keep_int16 else raw * np.float32(1 / 32768)
            return raw.astype(np.float32)
        with self.file as f:
            if start:
                f.seek(start)
            as_int = keep_int16 and f.subtype == "PCM_16" and f.channels == 1
            out = f.read(count, dtype="int16" if as_int else "float32", always_2d=True)
            return out[:, 0] if out.shape[1] == 1 else out.mean(axis=1)


def decode(data, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Decode ``frames`` float32 samples from ``start`` of encoded mono audio (see
    :class:`Encoded`) -> ``(time,)``, rate."""
    clip = Encoded(data)
    return clip.read(start, frames), clip.rate


def _slice(data, start: int, stop: int):
    return memoryview(data)[start:stop] if isinstance(data, bytes | bytearray) else data[start:stop]


def num_frames(data) -> int:
    return Encoded(data).frames


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
