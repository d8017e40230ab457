"""Score denoisers: ``python -m diffdenoise.evaluate -c CKPT (--shards GLOB | --clean-dir D)``.

For every test item it measures SI-SDR, wideband PESQ and STOI of the noisy input and of
each system's output, and reports means overall and per input-SNR bucket, as a markdown
table on stdout and every number in a JSON file. Clean-only data gets noise mixed in at
each ``--snr``, deterministically, seeded by the file, and with ``--reverb RT60`` the
clean is first reverberated in a synthetic room (:mod:`diffdenoise.room`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffdenoise.common.cli import entry
from diffdenoise.common.files import atomic_path
from diffdenoise.common.progress import progress
from diffdenoise.data import audio, noise, room, tarindex
from diffdenoise.data.pipeline import DataError, expand_urls
from diffdenoise.evaluation.baseline import wiener
from diffdenoise.inference.denoiser import Denoiser
from diffdenoise.inference.loading import add_share_args, shares_of
from diffdenoise.models.metrics import METRICS, score
from diffdenoise.training.checkpoint import CheckpointError

EVAL_SEED = 20240917
DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)
NOISE_KINDS = tuple(noise.GENERATORS)
ROOM_STREAM = 1 << 20  # the room's random stream, apart from the SNRs' (0, 1, ...)


class EvalError(ValueError):
    """Evaluation inputs that cannot work, phrased for the user."""


@dataclass
class Mixing:
    """How clean-only audio becomes test input: the SNRs, the noise, and the room."""

    snrs: list[float]
    noise_files: list  # paths, or decoded ``((time,), rate)`` clips
    rt60: float = 0.0  # seconds; 0: the clean audio as it is


@dataclass
class Item:
    """One test signal: ``(time,)`` clean and noisy audio at ``rate``."""

    key: str
    clean: np.ndarray
    noisy: np.ndarray
    rate: int
    snr: float  # the input SNR in dB (mixed at, or measured for stored pairs)
    bucket: str
    noise: str = ""  # the noise type, where it is known


def bucket_of(snr: float) -> str:
    return f"{5 * round(snr / 5):g} dB"


def mixed(key: str, clean: np.ndarray, rate: int, mixing: Mixing) -> Iterator[Item]:
    """``clean`` with noise at every SNR; noise kind, crop and signal seeded by the key.

    With a room (``mixing.rt60``) the reverberant clean is both the input's speech and
    the reference: one room per file, the same at every SNR.
    """
    seed = [EVAL_SEED, zlib.crc32(key.encode())]
    if mixing.rt60:
        normal = np.random.default_rng([*seed, ROOM_STREAM]).standard_normal(
            room.taps(rate, mixing.rt60)
        )
        response = room.impulse_responses(
            torch.from_numpy(normal[None]).float(), torch.tensor([mixing.rt60]), rate
        )
        clean = room.reverberate(torch.from_numpy(clean[None]), response)[0].numpy()
    for index, snr in enumerate(mixing.snrs):
        rng = np.random.default_rng([*seed, index])
        if mixing.noise_files:
            files = mixing.noise_files
            sound = _noise_crop(files[rng.integers(len(files))], rate, len(clean), rng)
        else:
            sound = noise.GENERATORS[NOISE_KINDS[rng.integers(len(NOISE_KINDS))]](rng, len(clean))
        noisy = noise.mix_at_snr(clean, sound, snr)
        yield Item(f"{key}@{snr:g}dB", clean, noisy, rate, float(snr), bucket_of(snr))


def _noise_crop(source, rate: int, length: int, rng) -> np.ndarray:
    """A random ``length``-sample crop of a noise file, or of a decoded ``(wave, rate)``."""
    if isinstance(source, tuple):
        wave = audio.resample(source[0], source[1], rate)
    else:
        data, orig = audio.read(source)
        wave = audio.resample(audio.to_mono(data), orig, rate)
    wave = np.tile(wave, math.ceil(length / max(len(wave), 1)) + 1)
    start = int(rng.integers(0, len(wave) - length + 1))
    return wave[start : start + length]


def paired(key: str, clean: np.ndarray, noisy: np.ndarray, rate: int) -> Item:
    n = min(len(clean), len(noisy))
    clean, noisy = clean[:n], noisy[:n]
    snr = noise.snr_db(clean, noisy)
    return Item(key, clean, noisy, rate, snr, bucket_of(snr))


def shard_items(pattern: str, mixing: Mixing, limit: int = 0) -> Iterator[Item]:
    """Items from WebDataset shards, local or remote (read as training reads them, with its
    retries): stored noisy twins where present, else mixed noise."""
    try:
        urls = expand_urls(pattern)
    except DataError:
        raise EvalError(f"--shards {pattern}: matches no shard files") from None
    samples = tarindex.read_shards(({"url": url} for url in sorted(urls)),
                                   give_up_after=len(set(urls)))  # fmt: skip
    try:
        yield from _items_of(samples, mixing, limit)
    except tarindex.ShardsUnreachable as err:
        raise EvalError(f"--shards {pattern}: {err}") from None


def _items_of(samples, mixing: Mixing, limit: int) -> Iterator[Item]:
    for index, sample in enumerate(samples):
        if limit and index >= limit:
            return
        data, noisy = audio.member(sample), audio.member(sample, "noisy.")
        if data is None:
            continue
        clean, rate = audio.decode(data)
        key = sample["__key__"]
        if noisy is not None:
            yield paired(key, clean, audio.decode(noisy)[0], rate)
        else:
            yield from mixed(key, clean, rate, mixing)


def folder_items(clean_dir: Path, noisy_dir, mixing: Mixing, limit: int = 0):
    """Items from a clean folder, paired with ``noisy_dir`` by name, or mixed."""
    if not clean_dir.is_dir():
        raise EvalError(f"--clean-dir {clean_dir}: not a folder")
    files, _ = audio.walk(clean_dir)
    if not files:
        raise EvalError(f"--clean-dir {clean_dir}: no audio files")
    for rel in files[: limit or None]:
        data, rate = audio.read(clean_dir / rel)
        clean = audio.to_mono(data)
        if noisy_dir is None:
            yield from mixed(rel, clean, rate, mixing)
            continue
        partner = audio.find_partner(rel, noisy_dir)
        if partner is None:
            print(f"warning: {clean_dir / rel}: no noisy partner in {noisy_dir}", file=sys.stderr)
            continue
        noisy, noisy_rate = audio.read(partner)
        yield paired(rel, clean, audio.resample(audio.to_mono(noisy), noisy_rate, rate), rate)


def run(items, systems: dict[str, Callable]) -> list[dict]:
    """Score the noisy input and every system on every item."""
    rows, items = [], list(items)
    bar = progress(len(items), "scoring", "item")
    for item in items:
        bar.update()
        if not np.abs(item.clean).max(initial=0.0) > 0:
            tqdm.write(
                f"warning: {item.key}: silent clean reference, skipped (no metric is defined)",
                file=sys.stderr,
            )
            continue
        outputs = {"noisy": item.noisy}
        outputs |= {name: fn(item.noisy, item.rate) for name, fn in systems.items()}
        rows.append(
            {
                "key": item.key,
                "snr": item.snr,
                "bucket": item.bucket,
                "noise": item.noise,
                "scores": {
                    name: score(out, item.clean, item.rate, METRICS)
                    for name, out in outputs.items()
                },
            }
        )
    bar.close()
    return rows


def summarise(rows: list[dict], key: str = "bucket") -> dict:
    """Means per group of ``key`` (SNR bucket by default) and ``all``, for each system.

    Deltas are against the noisy input.
    """
    groups = sorted({r[key] for r in rows}, key=_group_order)
    summary = {}
    for group in [*groups, "all"]:
        chosen = [r for r in rows if group in ("all", r[key])]
        summary[group] = {name: _means(chosen, name) for name in chosen[0]["scores"]}
    return summary


def _group_order(group: str):
    """SNR buckets ("-5 dB") by value, then any other group names alphabetically."""
    try:
        return (0, float(group.split()[0]), "")
    except ValueError:
        return (1, 0.0, group)


def _means(rows: list[dict], system: str) -> dict:
    out: dict = {"n": len(rows)}
    for metric in METRICS:
        values = np.array([r["scores"][system][metric] for r in rows])
        base = np.array([r["scores"]["noisy"][metric] for r in rows])
        ok = np.isfinite(values) & np.isfinite(base)
        out[metric] = float(values[ok].mean()) if ok.any() else None
        out[f"{metric}_delta"] = float((values - base)[ok].mean()) if ok.any() else None
        out[f"{metric}_failed"] = int((~ok).sum())
    return out


def markdown(summary: dict) -> str:
    head = "| input SNR | system | n | SI-SDR | ΔSI-SDR | PESQ | ΔPESQ | STOI | ΔSTOI |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bucket, systems in summary.items():
        for name, m in systems.items():
            cells = []
            for metric, digits in (("si_sdr", 2), ("pesq", 3), ("stoi", 3)):
                cells.append(fmt_value(m[metric], digits))
                cells.append(
                    "" if name == "noisy" else fmt_value(m[f"{metric}_delta"], digits, "+")
                )
            lines.append(f"| {bucket} | {name} | {m['n']} | " + " | ".join(cells) + " |")
    failed = summary["all"]["noisy"]["pesq_failed"]
    if failed:
        lines.append(f"\nPESQ refused {failed} item(s) (silent or too short); left out of PESQ.")
    return "\n".join(lines)


def fmt_value(value, digits: int, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.{digits}f}"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m diffdenoise.evaluate", description=__doc__)
    p.add_argument("-c", "--checkpoint", action="append", default=[], help="repeat to compare")
    p.add_argument("--shards", help="glob of WebDataset shards, e.g. 'shards/demo/val-*.tar'")
    p.add_argument("--clean-dir", type=Path, help="folder of clean audio")
    p.add_argument("--noisy-dir", type=Path, help="noisy twins of --clean-dir (same names)")
    p.add_argument("--noise-dir", type=Path, help="noise recordings to mix (default: synthetic)")
    p.add_argument("--snr", default=",".join(f"{s:g}" for s in DEFAULT_SNRS), help="dB list")
    p.add_argument(
        "--reverb",
        type=float,
        default=0.0,
        metavar="RT60",
        help="reverberate clean-only audio in a synthetic room of this RT60 in "
        "seconds before mixing, and score against the reverberant clean",
    )
    p.add_argument("--baseline", action="store_true", help="also score a Wiener filter")
    p.add_argument("--max-files", type=int, default=0, help="evaluate at most N files (0: all)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--steps", type=int, help="a bridge checkpoint's sampler steps")
    p.add_argument("--seed", type=int, default=0, help="a bridge sampler's noise seed (0)")
    p.add_argument(
        "--json",
        type=Path,
        help="where to write every number (default: eval.json beside the "
        "first checkpoint, else ./eval.json)",
    )
    add_share_args(p)
    return p.parse_args(argv)


def parse_snrs(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EvalError(f"--snr '{text}': expected a comma-separated list of dB values") from None


def parse_mixing(args) -> Mixing:
    low, high = room.RT60_RANGE
    if args.reverb and not low <= args.reverb <= high:
        raise EvalError(f"--reverb {args.reverb:g}: expected an RT60 in seconds from {low:g} "
                        f"to {high:g} (0: off)")  # fmt: skip
    if args.reverb and args.noisy_dir:
        raise EvalError("--reverb reverberates clean audio before mixing; --noisy-dir pairs "
                        "are scored as recorded: give one of them")  # fmt: skip
    noise_files = (
        [args.noise_dir / f for f in audio.walk(args.noise_dir)[0]] if args.noise_dir else []
    )
    return Mixing(parse_snrs(args.snr), noise_files, args.reverb)


def build_systems(args) -> dict[str, Callable]:
    names = [Path(c).parent.name or "model" for c in args.checkpoint]
    if len(args.checkpoint) == 1 or len(set(names)) < len(names):
        names = ["model"] if len(args.checkpoint) == 1 else [str(c) for c in args.checkpoint]
    options = {"seed": args.seed} | ({"steps": args.steps} if args.steps else {})
    systems = {}
    for name, path in zip(names, args.checkpoint):
        try:
            systems[name] = Denoiser.from_checkpoint(
                path, device=args.device, shares=shares_of(args), **options
            )
        except CheckpointError:
            raise  # it names the file already
        except ValueError as err:  # e.g. --steps 4 for a predictive checkpoint
            raise EvalError(f"{path}: {err}") from None
    if args.baseline:
        systems["wiener"] = wiener
    if not systems:
        raise EvalError("nothing to score: give -c CHECKPOINT and/or --baseline")
    return systems


def json_path(args) -> Path:
    """Where the report goes; checked before the slow part, and its folder created."""
    out = (
        args.json
        or (Path(args.checkpoint[0]).parent if args.checkpoint else Path(".")) / "eval.json"
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EvalError(f"--json {out}: cannot create its folder ({err.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise EvalError(f"--json {out}: folder is not writable")
    return out


@entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if bool(args.shards) == bool(args.clean_dir):
            raise EvalError("give exactly one of --shards GLOB or --clean-dir DIR")
        mixing = parse_mixing(args)
        out = json_path(args)
        systems = build_systems(args)
        if args.shards:
            items = shard_items(args.shards, mixing, args.max_files)
        else:
            items = folder_items(args.clean_dir, args.noisy_dir, mixing, args.max_files)
        rows = run(items, systems)
    except (EvalError, CheckpointError, audio.AudioError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not rows:
        print("error: no items to evaluate", file=sys.stderr)
        return 2
    summary = summarise(rows)
    print(markdown(summary))
    report = {"checkpoints": args.checkpoint, "shares": shares_of(args), "snrs": mixing.snrs,
              "reverb_rt60": mixing.rt60, "summary": summary, "items": rows}  # fmt: skip
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(f"every number: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
