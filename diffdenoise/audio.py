"""Audio I/O in one place: read, downmix, resample, encode and decode.

Arrays are float32 numpy ``(channels, time)`` unless a docstring says otherwise.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".opus")


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


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[-1]
