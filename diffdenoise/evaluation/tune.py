"""``python -m diffdenoise.tune CKPT --shards 'VAL-GLOB'``: the share of a spectral model's
learned correction that does best on your own validation audio, written into a copy of
the checkpoint.

A spectral model applies a share of what it learned on top of its Wiener prior
(``model.spectral.correction_scale``, and ``suppress_scale`` where the correction lowers
the gain). The recipe's shares were chosen on the project's speech; on yours another share
may do better. This scores each pair of :data:`GRID` on the clean audio of the shards,
mixed with noise (``--noise-dir`` files, ``--noise-shards`` tar shards, or generated
noise) at each ``--snr``, deterministically, chooses the highest mean SI-SDR (within
:data:`TIE_DB`, the highest PESQ), and writes ``CKPT-tuned.pt`` with
the choice in its config and the table in ``tune`` (and beside it as ``.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from diffdenoise.common.cli import entry
from diffdenoise.common.files import atomic_path
from diffdenoise.data import audio, tarindex
from diffdenoise.data.pipeline import DataError, expand_urls
from diffdenoise.evaluation import evaluate
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.training.checkpoint import CheckpointError, atomic_torch_save, load_best

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
# (correction_scale, suppress_scale): suppressing may take a larger share than keeping.
GRID = [(keep, suppress) for keep in SHARES for suppress in SHARES if suppress >= keep]
TIE_DB = 0.05  # SI-SDR differences this small are noise; PESQ decides between them
TUNE_SNRS = "-5,0,5,10,15,20"
MAX_NOISE_CLIPS = 64


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m diffdenoise.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("checkpoint", help="a spectral model's best.pt")
    p.add_argument("--shards", required=True, help="validation shards (glob or brace range)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-dir", type=Path, help="noise recordings to mix in")
    noise.add_argument("--noise-shards", help="noise tar shards (as make shards writes)")
    p.add_argument("--snr", default=TUNE_SNRS, help=f"input SNRs in dB ({TUNE_SNRS})")
    p.add_argument("--max-files", type=int, default=32, help="clean files scored (32; 0: all)")
    p.add_argument("-o", "--output", type=Path, help="default: CKPT-tuned.pt beside CKPT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p.parse_args(argv)


def noise_clips(pattern: str) -> list[tuple[np.ndarray, int]]:
    """Up to :data:`MAX_NOISE_CLIPS` decoded clips of noise shards, ``((time,), rate)``."""
    try:
        urls = expand_urls(pattern)
    except DataError:
        raise evaluate.EvalError(f"--noise-shards {pattern}: matches no shard files") from None
    clips = []
    for sample in tarindex.read_shards({"url": url} for url in sorted(urls)):
        data = audio.member(sample)
        if data is not None:
            clips.append(audio.decode(data))
        if len(clips) >= MAX_NOISE_CLIPS:
            break
    if not clips:
        raise evaluate.EvalError(f"--noise-shards {pattern}: no audio in these shards")
    return clips


def output_path(args) -> Path:
    src = Path(args.checkpoint)
    out = args.output or src.with_name(f"{src.stem}-tuned.pt")
    if out.resolve() == src.resolve():
        raise evaluate.EvalError(f"{out}: the output would overwrite the checkpoint it tunes")
    if out.exists() and not args.overwrite:
        raise evaluate.EvalError(f"{out}: already exists (use --overwrite to replace it)")
    return out


def systems_of(path: str, pairs=GRID, prefix: str = "") -> dict:
    """One denoiser per ``(keep, suppress)`` pair (default :data:`GRID`), named
    ``prefix + "keep/suppress"``."""
    systems = {}
    for keep, suppress in pairs:
        shares = {"correction_scale": keep, "suppress_scale": suppress}
        systems[f"{prefix}{keep:g}/{suppress:g}"] = Denoiser.from_checkpoint(
            path, device="cpu", shares=shares
        )
    return systems


def choose(summary: dict) -> tuple[float, float]:
    """The pair with the highest mean SI-SDR over all items; within :data:`TIE_DB` of it
    (a tie), the highest mean PESQ, and of equal PESQ the least correction."""
    pairs = {n: m for n, m in summary["all"].items() if n != "noisy"}
    best = max(m["si_sdr"] for m in pairs.values())

    def rank(name: str):
        pesq = pairs[name].get("pesq", float("nan"))
        keep, suppress = (float(x) for x in name.split("/"))
        return (-pesq if pesq == pesq else 0.0, keep + suppress, keep)  # NaN: no preference

    near = [n for n, m in pairs.items() if m["si_sdr"] >= best - TIE_DB]
    return tuple(float(x) for x in min(near, key=rank).split("/"))


def table(summary: dict, chosen: tuple[float, float]) -> str:
    """Markdown: one row per pair, its mean SI-SDR / PESQ / STOI over all items."""
    mark = f"{chosen[0]:g}/{chosen[1]:g}"
    lines = [
        "| correction_scale / suppress_scale | SI-SDR | PESQ | STOI |",
        "|---|---:|---:|---:|",
    ]
    for name, m in summary["all"].items():
        label = "noisy input" if name == "noisy" else name + (" (chosen)" if name == mark else "")
        cells = [evaluate.fmt_value(m[k], d) for k, d in (("si_sdr", 2), ("pesq", 3), ("stoi", 3))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tuned_payload(payload: dict, chosen, text: str, args) -> dict:
    out = dict(payload)
    config = dict(out["config"])
    model = dict(config["model"])
    model["spectral"] = dict(model["spectral"], correction_scale=chosen[0],
                             suppress_scale=chosen[1])  # fmt: skip
    config["model"] = model
    out["config"] = config
    out["tune"] = {"chosen": list(chosen), "shards": args.shards, "snrs": args.snr,
                   "table": text}  # fmt: skip
    return out


def tune(args) -> tuple[Path, str]:
    """Score the grid, write the tuned copy and its table; returns both."""
    out = output_path(args)
    payload = load_best(args.checkpoint)
    if payload.get("config", {}).get("model", {}).get("family") != "spectral":
        raise CheckpointError(f"{args.checkpoint}: tune sets a spectral model's shares; "
                              "this checkpoint is not a spectral model")  # fmt: skip
    mixing = evaluate.parse_mixing(argparse.Namespace(
        reverb=0.0, noisy_dir=None, noise_dir=args.noise_dir, snr=args.snr))  # fmt: skip
    if args.noise_shards:
        mixing.noise_files = noise_clips(args.noise_shards)
    items = list(evaluate.shard_items(args.shards, mixing, args.max_files))
    if not items:
        raise evaluate.EvalError(f"--shards {args.shards}: no clean audio in these shards")
    torch.manual_seed(0)
    rows = evaluate.run(items, systems_of(args.checkpoint))
    summary = evaluate.summarise(rows)
    chosen = choose(summary)
    text = table(summary, chosen)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(f"# tune {args.checkpoint} on {args.shards}\n\n{text}\n")
    atomic_torch_save(tuned_payload(payload, chosen, text, args), out)
    return out, text


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out, text = tune(args)
    except (evaluate.EvalError, CheckpointError, audio.AudioError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    print(f"written {out} (and its table, {out.with_suffix('.md')})")
    return 0
