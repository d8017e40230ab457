"""The Python inference API: ``Denoiser.from_checkpoint(path)(audio, sample_rate)``.

Audio of any length, rate and channel count goes through the same streaming path:
resample to the model's rate, cut into overlapping segments padded with real
neighbouring audio, denoise them in batches, join them by overlap-add with unity-gain
cross-fades, and resample back. Each channel is denoised on its own.

A causal model (``model.causal``) instead hears each channel as one continuous stream,
as it would live (:class:`~diffdenoise.inference.realtime.StreamingDenoiser`): its noise statistics
and recurrent state carry on through the file. Cut into segments, each would start cold,
and on held-out speech that cost 1.8 dB SI-SDR (+2.85 against +4.68; ``bench/causal``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch

from diffdenoise.common.files import atomic_path
from diffdenoise.data import audio
from diffdenoise.inference.loading import model_from_checkpoint, set_shares
from diffdenoise.inference.overlap import overlap_add, resample_stream, resampled_length
from diffdenoise.inference.realtime import StreamingDenoiser
from diffdenoise.models.causal import CausalSpectralModel
from diffdenoise.models.objectives import Bridge, Predictive, objective_of
from diffdenoise.models.spectral import SpectralMaskModel

MODES = ("overlap", "seed")
# A spectral model estimates the noise from the quietest fifth of a segment's frames: the
# more frames, the better the estimate. default.yaml's checkpoint (2 s training crops), on
# training speech with training noise, 16 kHz, SI-SDR: 13.59 / 13.83 / 13.86 / 13.88 dB
# in 2 / 4 / 8 / 30 s segments; PESQ 1.849 -> 1.877 from 2 to 8 s.
SPECTRAL_SEGMENT_S = 8.0
CPU_BATCH_SECONDS = 8.0
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


class Denoiser:
    """A trained model plus the segmenting recipe used to apply it to long audio.

    ``mode="overlap"`` (default): segments of ``segment`` seconds overlapping by
    ``overlap`` seconds, each seen with ``context`` seconds of real neighbouring audio,
    ``batch_size`` segments per model call (default 4 on a CPU, 32 on a GPU).
    ``mode="seed"``: the original's non-overlapping 1 s segments from t = 0, zero-padded
    at the end and concatenated, kept for comparison.

    A bridge model (``objective``, see :mod:`diffdenoise.diffusion`) is sampled in
    ``steps`` network calls per segment; its noise is drawn from ``seed`` and the
    segment's position and channel, so the output is the same for any batching.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sample_rate: int,
        *,
        timestep: int = 0,
        segment: float = 1.0,
        overlap: float = 0.05,
        context: float = 0.05,
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "no",
        mode: str = "overlap",
        objective: Predictive | Bridge | None = None,
        steps: int = 1,
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
        if not 0 <= overlap < segment:
            raise ValueError(f"overlap ({overlap} s) must be >= 0 and < segment ({segment} s)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate = sample_rate
        self.timestep = timestep
        self.mode = mode
        self.objective, self.steps, self.seed = objective or Predictive(), steps, seed
        if steps < 1 or (steps > 1 and not self.objective.conditioned):
            raise ValueError(
                f"--steps {steps}: a predictive model takes exactly 1 step; more need a model "
                "trained with diffusion.objective=bridge"
            )
        # A CPU gains no speed from big batches (make bench, B4) but holds their activations:
        # at most 4 segments and about 8 s of audio a call (B5: 8 s segments in fours took
        # a 1-hour 48 kHz file to 1.16 GB).
        cpu_rows = max(1, min(4, round(CPU_BATCH_SECONDS / segment)))
        self.batch_size = batch_size or (32 if self.device.type == "cuda" else cpu_rows)
        self.segment = max(1, round(segment * sample_rate))
        self.overlap = round(overlap * sample_rate)
        self.context = round(context * sample_rate)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if self.device.type != "cuda":
            self.autocast_dtype = None  # half precision only pays off on a GPU

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | None = None, ema: bool = True, *,
        shares: dict | None = None, **options,
    ) -> Denoiser:  # fmt: skip
        """Load ``best.pt`` (or a ``best_model_*.pth`` copy) safely with ``weights_only``.
        ``shares`` overrides a spectral model's inference-only shares of its learned
        correction (:data:`SHARES`), e.g. ``{"correction_scale": 0.5}``."""
        model, cfg = model_from_checkpoint(path, ema)
        set_shares(model, path, shares or {})
        crop = cfg.data.segment / cfg.data.sample_rate
        spectral = isinstance(model, SpectralMaskModel)
        options.setdefault("segment", max(crop, SPECTRAL_SEGMENT_S) if spectral else crop)
        options.setdefault("timestep", cfg.noise.infer_timestep)
        options.setdefault("steps", cfg.diffusion.steps)
        options["objective"] = objective_of(cfg.diffusion)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, cfg.data.sample_rate, device=device, **options)

    def __call__(self, x, sample_rate: int):
        """Denoise ``(time,)`` or ``(channels, time)`` audio (numpy or tensor); same shape out."""
        is_tensor = isinstance(x, torch.Tensor)
        wave = x.detach().cpu().float().numpy() if is_tensor else np.asarray(x, np.float32)
        if wave.ndim not in (1, 2) or wave.shape[-1] == 0:
            raise ValueError(f"expected (time,) or (channels, time) audio, got {wave.shape}")
        if not np.isfinite(wave).all():
            raise ValueError("audio contains NaN or infinite samples")
        frames = wave.reshape(-1, wave.shape[-1])
        out = np.concatenate(list(self.stream([frames], sample_rate, *frames.shape)), axis=1)
        out = out.reshape(wave.shape)
        return torch.from_numpy(out).to(x.device) if is_tensor else out

    def stream(
        self, blocks: Iterable[np.ndarray], rate: int, channels: int, frames: int
    ) -> Iterator[np.ndarray]:
        """Denoise ``frames`` samples given as ``(channels, n)`` blocks; yields blocks."""
        seed = self.mode == "seed"
        length = self.sample_rate if seed else self.segment
        model_rate = resample_stream(blocks, rate, self.sample_rate, channels)
        if isinstance(self.model, CausalSpectralModel):
            denoised = self._stream_causal(model_rate, channels)
        else:
            denoised = overlap_add(
                model_rate,
                resampled_length(frames, rate, self.sample_rate),
                channels,
                self.process,
                length=length,
                overlap=0 if seed else self.overlap,
                context=0 if seed else self.context,
                batch_rows=self.batch_size,
                pad_last=seed,
            )
        remaining = frames
        for block in resample_stream(denoised, self.sample_rate, rate, channels):
            block = block[:, :remaining]
            remaining -= block.shape[1]
            if block.shape[1]:
                yield block

    def _stream_causal(self, blocks: Iterable[np.ndarray], channels: int) -> Iterator[np.ndarray]:
        lives = [
            StreamingDenoiser(self.model, self.sample_rate, self.timestep) for _ in range(channels)
        ]
        for block in blocks:
            yield np.stack([live.process(row) for live, row in zip(lives, block)])
        yield np.stack([live.flush() for live in lives])

    @torch.inference_mode()
    def process(self, rows: np.ndarray, keys: list[tuple[int, int]] | None = None) -> np.ndarray:
        """``(rows, time)`` noisy segments at the model rate -> denoised, same shape;
        ``keys``: each row's ``(segment start, channel)``, which seed a sampler's noise."""
        x = torch.from_numpy(rows).to(self.device)[:, None]
        t = torch.full((x.shape[0],), float(self.timestep), device=self.device)
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype
            else contextlib.nullcontext()
        )
        with autocast:
            if self.objective.conditioned:
                keys = keys or [(i, 0) for i in range(len(rows))]
                normal = partial(self._normal, keys, rows.shape[-1])
                y = self.objective.sample(self.model, x, steps=self.steps, normal=normal)
            else:
                y = self.model(x, t)
        return y[:, 0].float().cpu().numpy()

    def _normal(self, keys: list[tuple[int, int]], length: int, step: int) -> torch.Tensor:
        """The sampler's N(0, I) draw for ``step``: one seeded row per segment key."""
        rows = [
            np.random.default_rng([self.seed, start, channel, step]).standard_normal(length)
            for start, channel in keys
        ]
        return torch.from_numpy(np.stack(rows).astype(np.float32))[:, None].to(self.device)

    def denoise_file(
        self,
        src: str | Path,
        dst: str | Path,
        block_seconds: float = 30.0,
        on_progress: Callable[[float], None] | None = None,
    ) -> float:
        """Stream ``src`` through the model into ``dst``; returns the seconds of audio.

        ``on_progress`` is called with the seconds of audio in each block written.

        The output is written to a temporary name and renamed into place at the end, so a
        failure part-way (NaN samples, a full disk) never leaves half a file behind.
        """
        src, dst = Path(src), Path(dst)
        meta = audio.info(src)
        if meta.frames == 0:
            raise audio.AudioError("empty audio (0 samples)")
        fmt = WRITE_FORMATS.get(dst.suffix.lower())
        if fmt is None:
            raise audio.AudioError(f"cannot write '{dst.suffix}' files (use .wav, .flac or .ogg)")
        subtype = meta.subtype if audio.can_write(fmt, meta.subtype) else None
        with atomic_path(dst) as tmp:
            output = audio.open_writer(tmp, meta.samplerate, meta.channels, fmt, subtype, dst)
            with output as out:
                blocks = audio.read_blocks(src, round(block_seconds * meta.samplerate))
                for block in self.stream(blocks, meta.samplerate, meta.channels, meta.frames):
                    if out.subtype not in ("FLOAT", "DOUBLE", "VORBIS"):
                        block = np.clip(block, -1.0, 1.0)
                    out.write(block.T)
                    if on_progress:
                        on_progress(block.shape[1] / meta.samplerate)
        return meta.frames / meta.samplerate


def denoise_audio(model_path, noisy_audio_path, output_path, device: str | None = None) -> Path:
    """The original project's one-call API, kept as a thin wrapper around :class:`Denoiser`."""
    Denoiser.from_checkpoint(model_path, device=device).denoise_file(noisy_audio_path, output_path)
    return Path(output_path)
