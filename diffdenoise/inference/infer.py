"""Denoise audio files of any length: ``python -m diffdenoise.infer INPUT... -c CHECKPOINT``.

Inputs are files, folders (searched recursively) and globs. One input file with
``-o FILE`` writes that file; otherwise ``-o DIR`` mirrors the input names under DIR, and
without ``-o`` each output goes beside its input as ``<name>_denoised.<ext>``.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffdenoise.common.cli import entry, number
from diffdenoise.common.progress import progress
from diffdenoise.data import audio
from diffdenoise.inference.denoiser import MODES, WRITE_FORMATS, Denoiser
from diffdenoise.inference.loading import add_share_args, shares_of
from diffdenoise.training.checkpoint import CheckpointError

SUFFIX = "_denoised"
# Each step is a network call per segment: the bridge is trained for a handful (default 4),
# and 1,000 already costs about a thousand times a predictive pass.
MAX_STEPS = 1000
PLOT_SECONDS = 60.0


class UsageError(ValueError):
    """Arguments that cannot work together, phrased for the user."""


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


def expand_inputs(inputs: list[str]) -> list[tuple[Path, Path | None]]:
    """``(file, folder it was found under or None)`` for every input, in a stable order.

    Folders and globs skip earlier outputs (``*_denoised.*``) so rerunning on a folder
    does not denoise its own results.
    """
    found: list[tuple[Path, Path | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if _is_audio(p))
            found += [(p, path) for p in files if not p.stem.endswith(SUFFIX)]
        elif path.exists():
            found.append((path, None))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            found += [(p, None) for p in matches if _is_audio(p) and not p.stem.endswith(SUFFIX)]
        else:
            found.append((path, None))  # reported as missing when its turn comes
    return list(dict.fromkeys(found))


def plan_jobs(inputs: list[str], output: str | None, overwrite: bool) -> list[Job]:
    """Map every input to its output path (see the module docstring)."""
    found = expand_inputs(inputs)
    if not found:
        raise UsageError(f"no audio files found in {' '.join(inputs)}")
    single_file = len(found) == 1 and found[0][1] is None
    out = Path(output) if output else None
    if out is not None and out.suffix.lower() in WRITE_FORMATS and not out.is_dir():
        if not single_file:
            raise UsageError(f"-o {out} is a file name, but there are {len(found)} inputs")
        jobs = [Job(found[0][0], out)]
    else:
        jobs = [Job(src, _output_for(src, root, out)) for src, root in found]
    sources = {job.src.resolve() for job in jobs}
    for job in jobs:
        if job.dst.resolve() in sources and not overwrite:
            raise UsageError(f"{job.dst}: output would overwrite an input (use --overwrite)")
    return jobs


def _output_for(src: Path, root: Path | None, out_dir: Path | None) -> Path:
    ext = src.suffix if src.suffix.lower() in WRITE_FORMATS else ".wav"
    if out_dir is None:
        return src.with_name(f"{src.stem}{SUFFIX}{ext}")
    relative = src.relative_to(root) if root is not None else Path(src.name)
    return (out_dir / relative).with_suffix(ext)


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in audio.AUDIO_EXTENSIONS


def run_job(denoiser: Denoiser, job: Job, bar, plot: bool) -> float:
    """Denoise one file; returns its seconds of audio. Raises AudioError on bad input."""
    if not job.src.is_file():
        raise audio.AudioError("no such file")
    if job.src.stat().st_size == 0:
        raise audio.AudioError("empty file (0 bytes)")
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise audio.AudioError(f"cannot write output {job.dst} ({err.strerror})") from None
    seconds = denoiser.denoise_file(job.src, job.dst, on_progress=bar.update)
    if plot:
        write_plot(job.src, job.dst)
    return seconds


def write_plot(src: Path, dst: Path) -> Path:
    """Spectrograms of the input and output (first minute, channels averaged)."""
    from diffdenoise.common.plots import spectrogram_figure

    x, rate = audio.read_head(src, PLOT_SECONDS)
    y, _ = audio.read_head(dst, PLOT_SECONDS)
    n_fft = 2 ** round(np.log2(rate * 0.032))
    fig = spectrogram_figure({f"input: {src.name}": x, f"denoised: {dst.name}": y}, rate, n_fft)
    png = dst.with_suffix(".png")
    fig.savefig(png, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m diffdenoise.infer", description=__doc__)
    p.add_argument("inputs", nargs="+", help="audio files, folders (recursive) or globs")
    p.add_argument("-c", "--checkpoint", help="best.pt or best_model_*.pth")
    p.add_argument("--onnx", help="an offline graph from diffdenoise.export, run in onnxruntime")
    p.add_argument("-o", "--output", help="output file (one input) or folder")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an input file")
    p.add_argument("--mode", choices=MODES, default="overlap", help="seed: the original 1 s cut")
    p.add_argument(
        "--segment", type=number(float, 0, 3600, low_ok=False),
        help="segment seconds (default: the training crop; a spectral model at least 8)",
    )  # fmt: skip
    seconds = number(float, 0, 60)
    p.add_argument("--overlap", type=seconds, default=0.05, help="cross-fade seconds (0.05)")
    p.add_argument("--context", type=seconds, default=0.05, help="extra real audio per side")
    p.add_argument(
        "--batch-size",
        type=number(int, 1, 4096),
        help="segments per model call (CPU: up to 4, about 8 s of audio; GPU 32)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no", help="GPU only")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA ones")
    p.add_argument("--plot", action="store_true", help="also write <name>_denoised.png")
    p.add_argument(
        "--steps", type=number(int, 1, MAX_STEPS), help="sampler steps of a bridge model: N "
        f"network calls per segment, at most {MAX_STEPS} (default: the checkpoint's "
        "diffusion.steps)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="a bridge sampler's noise seed (0)")
    add_share_args(p)
    return p.parse_args(argv)


def load_denoiser(args: argparse.Namespace, options: dict):
    """The checkpoint's :class:`Denoiser`, or an ONNX graph's runner with ``--onnx``."""
    if (args.checkpoint is None) == (args.onnx is None):
        raise UsageError("give one of -c CHECKPOINT and --onnx MODEL")
    if args.onnx:
        from diffdenoise.inference.export import OnnxDenoiser

        if any(v is not None for v in shares_of(args).values()):
            raise UsageError(
                "an ONNX graph has its shares built in: give them to diffdenoise.export"
            )
        return OnnxDenoiser(args.onnx)
    return Denoiser.from_checkpoint(
        args.checkpoint, device=args.device, ema=not args.no_ema, mode=args.mode,
        precision=args.precision, shares=shares_of(args), **options,
    )  # fmt: skip


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = {"overlap": args.overlap, "context": args.context, "batch_size": args.batch_size}
    options["seed"] = args.seed
    if args.steps is not None:
        options["steps"] = args.steps
    if args.segment:
        options["segment"] = args.segment
    try:
        jobs = plan_jobs(args.inputs, args.output, args.overwrite)
        denoiser = load_denoiser(args, options)
    except (UsageError, CheckpointError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = sum(_seconds(job.src) for job in jobs)
    failed, seconds, started = 0, 0.0, time.perf_counter()
    with progress(total=round(total, 2), unit="s", desc="denoising") as bar:
        for index, job in enumerate(jobs, 1):
            bar.set_postfix_str(f"file {index}/{len(jobs)}")
            try:
                seconds += run_job(denoiser, job, bar, args.plot)
                tqdm.write(f"{job.src} -> {job.dst}")
            except (audio.AudioError, OSError) as err:
                failed += 1
                reason = getattr(err, "strerror", None) or err
                tqdm.write(f"error: {job.src}: {reason}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    rtf = elapsed / seconds if seconds else float("nan")
    print(
        f"denoised {len(jobs) - failed}/{len(jobs)} file(s), {seconds:.1f} s of audio in "
        f"{elapsed:.1f} s on {denoiser.device}: real-time factor {rtf:.4f}"
    )
    if failed:
        print(f"error: {failed} of {len(jobs)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _seconds(path: Path) -> float:
    try:
        meta = audio.info(path)
        return meta.frames / meta.samplerate
    except (audio.AudioError, OSError):
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
