"""Frame-in, frame-out denoising with a causal model: ``StreamingDenoiser``.

    live = StreamingDenoiser.from_checkpoint("runs/<run>/best.pt")
    for chunk in microphone():            # any sizes, at live.sample_rate
        speaker(live.process(chunk))      # the audio that is final so far
    speaker(live.flush())                 # the rest, then ready for the next stream

Concatenated, the output equals the offline causal model on the whole input (to float
rounding), delayed by nothing: output sample ``n`` is returned once the input has reached
``n`` plus the algorithmic latency (:attr:`StreamingDenoiser.latency_ms`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffdenoise.common.cli import check_writable, entry, number, same_file
from diffdenoise.data import audio
from diffdenoise.inference.loading import model_from_checkpoint
from diffdenoise.models.causal import CausalSpectralModel
from diffdenoise.training.checkpoint import CheckpointError

# From this many frames in one call on, the frames run as one batched pass
# (CausalSpectralModel.run_frames: 0.14 ms a frame for 10 frames, 0.07 for 100, against
# 0.4 ms a frame stepped, at 48 kHz on one thread; one frame alone steps faster).
BATCHED_FRAMES = 3


class StreamingDenoiser:
    """Feeds a :class:`~diffdenoise.models.causal.CausalSpectralModel` one frame at a time; keeps
    its state (input history, noise statistics, convolution frames, GRU, overlap-add)."""

    def __init__(self, model: CausalSpectralModel, sample_rate: int, timestep: int = 0):
        self.model, self.sample_rate = model.eval(), sample_rate
        with torch.no_grad():
            self.film = model.film(torch.full((1,), float(timestep), device=model.analysis.device))
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, ema: bool = True, threads: int | None = None):
        """A streamer for ``best.pt`` of a ``model.causal`` run; ``threads`` sets torch's."""
        if threads:
            torch.set_num_threads(threads)
        model, cfg = model_from_checkpoint(path, ema)
        if not isinstance(model, CausalSpectralModel):
            raise CheckpointError(
                f"{path}: not a causal model (model.causal is false); train one with "
                "configs/realtime.yaml to stream"
            )
        return cls(model, cfg.data.sample_rate, cfg.noise.infer_timestep)

    @property
    def latency_ms(self) -> float:
        return self.model.latency_ms

    @property
    def hop(self) -> int:
        return self.model.hop

    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` starts a new one."""
        self.state = self.model.initial_state(1)
        self.pending = np.zeros(0, np.float32)  # input not yet a whole frame
        self.frames = 0  # frames stepped
        self.seen = 0  # input samples taken
        self.emitted = 0  # output samples returned
        self.skip = self.model.n_fft - self.model.hop  # leading output before sample 0

    def process(self, chunk) -> np.ndarray:
        """Take ``(n,)`` float samples (any ``n``, even 0 or 1); return the output samples
        that became final, as float32."""
        chunk = np.asarray(chunk, np.float32).reshape(-1)
        if not np.isfinite(chunk).all():
            raise ValueError("audio contains NaN or infinite samples")
        self.seen += chunk.size
        self.pending = np.concatenate([self.pending, chunk])
        whole = self.pending.size // self.hop * self.hop
        blocks, self.pending = self.pending[:whole], self.pending[whole:]
        return self._run(blocks)

    def flush(self) -> np.ndarray:
        """Pad the stream's end with silence until every input sample has its output;
        return that output, then :meth:`reset`."""
        total = self.model.frames_for(self.seen) + self.model.lookahead
        padded = np.zeros((total - self.frames) * self.hop, np.float32)
        padded[: self.pending.size] = self.pending
        wanted = self.seen - self.emitted
        out = self._run(padded)[:wanted]
        self.reset()
        return out

    def _run(self, samples: np.ndarray) -> np.ndarray:
        wave = torch.from_numpy(samples).to(self.model.analysis.device)
        if wave.numel() >= BATCHED_FRAMES * self.hop:  # many frames: in one pass
            out, self.state = self.model.run_frames(wave[None], self.state, *self.film)
            out = out[0]
        else:
            pieces = []
            for block in wave.view(-1, 1, self.hop):
                piece, self.state = self.model.step(block, self.state, *self.film)
                pieces.append(piece[0])
            out = torch.cat(pieces) if pieces else wave[:0]
        waiting = max(0, min(self.model.lookahead - self.frames, out.numel() // self.hop))
        self.frames += wave.numel() // self.hop
        out = out[waiting * self.hop :].cpu().numpy()  # frames before the lookahead: no audio
        drop = min(self.skip, out.size)
        self.skip -= drop
        out = out[drop:]
        self.emitted += out.size
        return out


def stream_file(live: StreamingDenoiser, wave: np.ndarray, chunk: int):
    """Feed ``(time,)`` audio through ``live`` in ``chunk``-sample pieces, as a sound card
    would; returns the output and each piece's compute seconds."""
    outs, seconds = [], []
    for start in range(0, wave.size, chunk):
        begin = time.perf_counter()
        outs.append(live.process(wave[start : start + chunk]))
        seconds.append(time.perf_counter() - begin)
    outs.append(live.flush())
    return np.concatenate(outs), np.array(seconds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m diffdenoise.stream",
        description="Denoise a file through the streaming API in live-sized chunks; print the "
        "latency and each chunk's compute time against its duration.",
    )
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("-c", "--checkpoint", required=True, help="best.pt of a model.causal run")
    p.add_argument("--chunk-ms", type=number(float, 0, 10_000, low_ok=False), default=10.0,
                   help="audio per process() call, in ms (> 0)")  # fmt: skip
    p.add_argument("--threads", type=number(int, 1, 1024), default=1, help="torch threads (1)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing the input file")
    return p.parse_args(argv)


def read_input(path: Path) -> tuple[np.ndarray, int]:
    """The input file, refused with :class:`audio.AudioError` if not finite."""
    wave, rate = audio.read(path)
    if not np.isfinite(wave).all():
        raise audio.AudioError("audio contains NaN or infinite samples")
    return wave, rate


@entry
def main(argv: list[str] | None = None) -> int:
    """``python -m diffdenoise.stream IN OUT -c CKPT --chunk-ms 10``."""
    args = parse_args(argv)
    if same_file(args.input, args.output) and not args.overwrite:
        print(f"error: {args.output}: output would overwrite the input (use --overwrite)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        check_writable(args.output)
    except OSError as err:
        print(f"error: {err.strerror}", file=sys.stderr)
        return 2
    try:
        live = StreamingDenoiser.from_checkpoint(args.checkpoint, threads=args.threads)
        wave, rate = read_input(args.input)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (audio.AudioError, OSError) as err:
        print(f"error: {args.input}: {getattr(err, 'strerror', None) or err}", file=sys.stderr)
        return 2
    mono = audio.resample(audio.to_mono(wave), rate, live.sample_rate)
    chunk = max(1, round(args.chunk_ms * live.sample_rate / 1000))
    out, seconds = stream_file(live, mono, chunk)
    audio.write(args.output, audio.resample(out, live.sample_rate, rate), rate)
    budget = chunk / live.sample_rate * 1000
    ms = seconds * 1000
    print(
        f"streamed {args.input} ({mono.size / live.sample_rate:.1f} s at {live.sample_rate} Hz) "
        f"in {len(ms)} chunks of {budget:.1f} ms, {args.threads} thread(s)\n"
        f"algorithmic latency {live.latency_ms:.1f} ms\n"
        f"compute per chunk: median {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, "
        f"worst {ms.max():.2f} ms of {budget:.1f} ms (RTF {ms.sum() / budget / len(ms):.3f})\n"
        f"wrote {args.output}"
    )
    return 0
