"""``python -m diffdenoise.shard``: pack an audio folder into WebDataset tar shards.

    python -m diffdenoise.shard gt_audio/ --name speech --sample-rate 16000
    python -m diffdenoise.shard noises/ --name noise --kind noise
    python -m diffdenoise.shard gt_audio/ --noisy-dir gl_audio/ --name pairs
    python -m diffdenoise.shard corpus/ --name big --part 3/16    # one slice of a job array
    python -m diffdenoise.shard merge shards/big                  # one manifest over parts
    python -m diffdenoise.shard verify shards/speech              # every size and sha256

Writes ``OUT/NAME/{train,val}-NNNNNN.tar`` (``{split}-pIIIII-NNNNNN.tar`` for a part) and
``manifest.json``. Each sample holds mono audio, ``flac`` (16-bit) or ``wav`` (16-bit for
``--format pcm16``, float for ``--format wav``), its ``noisy.`` twin in paired mode, and a
``json`` record of where the audio came from.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from diffdenoise.common.cli import entry, os_reason
from diffdenoise.common.progress import progress
from diffdenoise.data import audio, shardwriter
from diffdenoise.data.manifest import (
    MANIFEST,
    build_manifest,
    merge,
    remove_stale,
    verify_main,
    write_json_atomic,
)

SILENT_PEAK = 1e-4  # below -80 dBFS everywhere: nothing to learn from


@dataclass
class Options:
    sample_rate: int = 16000
    max_seconds: float = 10.0
    min_seconds: float = 0.5
    fmt: str = "flac"
    kind: str = "clean"


@dataclass
class FileResult:
    """What one source file became: samples ``(key, {ext: bytes})`` or a skip reason."""

    rel: str
    split: str
    samples: list = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""


def split_of(rel: str, val_fraction: float) -> str:
    """Deterministic split by a hash of the relative path, so chunks never straddle it."""
    u = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if u < val_fraction else "train"


def load_mono(path: Path, rate: int) -> tuple[np.ndarray, int, int]:
    """Decode, downmix and resample; returns mono audio, original rate and channels."""
    data, orig_rate = audio.read(path)
    if data.shape[1] == 0:
        raise audio.AudioError("zero-length audio (no samples)")
    mono = audio.resample(audio.to_mono(data), orig_rate, rate)
    return mono, orig_rate, data.shape[0]


def process(job: tuple[str, Path, Path | None, Options, str]) -> FileResult:
    """Turn one source file (and its noisy partner) into encoded chunks."""
    rel, root, noisy_root, opt, split = job
    result = FileResult(rel, split)
    try:
        clean, orig_rate, channels = load_mono(root / rel, opt.sample_rate)
        noisy = None
        if noisy_root is not None:
            noisy = _load_partner(rel, noisy_root, orig_rate, clean.shape[0], opt.sample_rate)
    except (audio.AudioError, OSError) as err:
        result.skipped = str(err)
        return result
    if not np.isfinite(clean).all() or (noisy is not None and not np.isfinite(noisy).all()):
        result.skipped = "holds NaN or Inf samples"
        return result
    seconds = clean.shape[0] / opt.sample_rate
    if seconds < opt.min_seconds:
        result.skipped = f"shorter than --min-seconds ({seconds:.3f} s < {opt.min_seconds} s)"
        return result
    if np.abs(clean).max() < SILENT_PEAK:
        result.skipped = "all-silent audio"
        return result
    peak = float(max(np.abs(clean).max(), np.abs(noisy).max() if noisy is not None else 0.0))
    gain = 0.99 / peak if peak > 0.99 else 1.0  # resampling can overshoot; FLAC clips at 1
    n_chunks = int(np.ceil(seconds / opt.max_seconds))
    bounds = np.linspace(0, clean.shape[0], n_chunks + 1).astype(int)
    digest = hashlib.sha1(rel.encode()).hexdigest()[:16]
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        meta = {
            "source": rel,
            "orig_rate": orig_rate,
            "orig_channels": channels,
            "offset": a / opt.sample_rate,
            "duration": (b - a) / opt.sample_rate,
            "sample_rate": opt.sample_rate,
            "gain": gain,
            "kind": opt.kind,
        }
        ext = audio.SHARD_FORMATS[opt.fmt]
        entry = {ext: audio.encode(gain * clean[a:b], opt.sample_rate, opt.fmt)}
        if noisy is not None:
            entry[f"noisy.{ext}"] = audio.encode(gain * noisy[a:b], opt.sample_rate, opt.fmt)
        entry["json"] = json.dumps(meta, sort_keys=True).encode()
        result.samples.append((f"{digest}_{i:04d}", entry))
    result.seconds = seconds
    return result


def _load_partner(rel: str, noisy_root: Path, rate: int, length: int, target: int) -> np.ndarray:
    path = audio.find_partner(rel, noisy_root)
    if path is None:
        raise audio.AudioError(f"no noisy partner (noisy_<name> or same path) in {noisy_root}")
    noisy, noisy_rate, _ = load_mono(path, target)
    if noisy_rate != rate or noisy.shape[0] != length:
        raise audio.AudioError(
            f"pair mismatch with {path}: {rate} Hz / {length} samples vs "
            f"{noisy_rate} Hz / {noisy.shape[0]} samples"
        )
    return noisy


def encode_to_spool(job: tuple, spool: Path) -> FileResult:
    """:func:`process` one file in a worker and write its samples' tar blocks to ``spool``;
    the result's samples become ``(key, seconds, bytes)``: all the main process needs."""
    result = process(job)
    if result.samples:
        sizes = shardwriter.spool(spool, result.samples)
        result.samples = [
            (key, json.loads(entry["json"])["duration"], size)
            for (key, entry), size in zip(result.samples, sizes)
        ]
    return result


def in_order(run, fn, tasks, window: int):
    """``fn(*task)`` for each task through ``run``, results in order, at most ``window`` in
    flight: shard assembly submitted meanwhile waits behind a few files, not all of them."""
    pending = deque()
    for task in tasks:
        pending.append(run(fn, task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def pack(args: argparse.Namespace) -> dict:
    """Shard ``args.input`` (or one ``--part`` of it) and write its manifest."""
    root = Path(args.input)
    if not root.is_dir():
        raise SystemExit(f"error: {root}: input folder not found")
    noisy_root = Path(args.noisy_dir) if args.noisy_dir else None
    if noisy_root is not None and not noisy_root.is_dir():
        raise SystemExit(f"error: {noisy_root}: noisy folder not found")
    part, parts = _parse_part(args.part)
    out = Path(args.out) / args.name
    try:
        return _pack(args, root, noisy_root, out, part, parts)
    except OSError as err:  # the disk's, not the input's: the finished shards stay
        raise SystemExit(
            f"error: {out}: {os_reason(err)}; the shards finished before are intact and no "
            "manifest was written: fix that and run again"
        ) from None


def _pack(args, root: Path, noisy_root: Path | None, out: Path, part: int, parts: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    files, skipped = audio.walk(root)
    if noisy_root is not None:
        files = [f for f in files if not os.path.basename(f).startswith("noisy_")]
    files = files[part * len(files) // parts : (part + 1) * len(files) // parts]
    opt = Options(args.sample_rate, args.max_seconds, args.min_seconds, args.format, args.kind)
    tag = f"-p{part:05d}" if parts > 1 else ""
    jobs = [(rel, root, noisy_root, opt, split_of(rel, args.val_fraction)) for rel in files]
    layouts = write_shards(jobs, out, tag, args, skipped)
    manifest = build_manifest(args, layouts, skipped, len(files), part, parts)
    if parts == 1 and not any(sp["samples"] for sp in manifest["splits"].values()):
        raise SystemExit(f"error: {root}: no usable audio, so no manifest was written: "
                         f"{nothing_usable(len(files), skipped)}")  # fmt: skip
    remove_stale(out, f"{tag}-", manifest)
    name = MANIFEST if parts == 1 else f"manifest.part-{part:05d}-of-{parts:05d}.json"
    write_json_atomic(out / name, manifest)
    return manifest


def nothing_usable(n_files: int, skipped: list[dict]) -> str:
    """What was found and why each kind of file was skipped, e.g. ``2 audio file(s) found;
    skipped 3: 2 x too short (...), 1 x not an audio file extension``."""
    reasons = collections.Counter(s["reason"].split(" (")[0] for s in skipped)
    why = ", ".join(f"{n} x {reason}" for reason, n in reasons.most_common(4))
    return f"{n_files} audio file(s) found; skipped {len(skipped)}" + (f": {why}" if why else "")


def write_shards(jobs: list, out: Path, tag: str, args, skipped: list) -> dict:
    """Encode ``jobs`` in the workers, which also write the shards; returns the splits'
    :class:`~diffdenoise.data.shardwriter.ShardLayout` and adds skipped files to ``skipped``."""
    spools = shardwriter.SpoolFiles(out / f".spool{tag}")
    try:
        return _encode_and_lay_out(jobs, out, tag, args, skipped, spools)
    except BrokenProcessPool:
        raise SystemExit(
            f"error: {args.input}: a sharding worker died (killed, e.g. out of memory); "
            f"the shards it finished are kept, no manifest was written: rerun to finish"
        ) from None
    finally:  # the pool has stopped: no worker writes a spool file any more
        spools.remove()


def _encode_and_lay_out(jobs: list, out: Path, tag: str, args, skipped: list, spools) -> dict:
    with _pool(args.workers) as pool, progress(len(jobs), args.name, "file") as bar:
        run = (lambda fn, a: pool.submit(fn, *a)) if pool else shardwriter.run_here
        layouts = {
            s: shardwriter.ShardLayout(out, f"{s}{tag}", int(args.shard_mb * 1e6), run, spools)
            for s in ("train", "val")
        }
        tasks = ((job, spools.path(i)) for i, job in enumerate(jobs))
        hours = 0.0
        for i, res in enumerate(in_order(run, encode_to_spool, tasks, 2 * max(args.workers, 1))):
            if res.skipped:
                skipped.append({"path": res.rel, "reason": res.skipped})
                tqdm.write(f"skipped {Path(args.input) / res.rel}: {res.skipped}", file=sys.stderr)
            _lay_out(layouts[res.split], res.samples, str(spools.path(i)))
            hours += res.seconds / 3600
            bar.set_postfix(audio_h=f"{hours:.2f}")
            bar.update()
        for layout in layouts.values():
            layout.close()
            layout.collect(wait=True)
    return layouts


def _lay_out(layout: shardwriter.ShardLayout, samples: list, spool: str) -> None:
    offset = 0
    for key, seconds, size in samples:
        layout.add(key, (spool, offset, size), seconds)
        offset += size
    layout.spools.laid_out(spool)
    layout.collect()


def _pool(workers: int):
    """Worker processes, or ``None`` (one thread here) for ``--workers 1``.

    A ``concurrent.futures`` pool, not ``multiprocessing.Pool``: the latter's worker-handler
    thread wakes on every result waiting in its pipe (about 8,000 times in a 1 s run of
    bench B7) and took 0.1 s of CPU from the two workers; and a killed worker breaks this
    pool with an error instead of leaving its task waiting forever.
    """
    if workers <= 1:
        return _one_thread()
    return _processes(workers)


@contextlib.contextmanager
def _processes(workers: int):
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker
    )
    try:
        yield pool
    finally:  # after an error, files not yet started are dropped, not encoded
        pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def _one_thread():
    """``--workers 1`` means one core: torch's resampler would otherwise use them all."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield None
    finally:
        torch.set_num_threads(threads)


def _parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise SystemExit(f"error: --part {text!r} must be I/N with 0 <= I < N") from None
    return i, n


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m diffdenoise.shard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="folder of audio, walked recursively")
    p.add_argument("--name", help="output name (default: the input folder's name)")
    p.add_argument("--out", default="shards", help="parent folder of the output")
    p.add_argument("--kind", choices=("clean", "noise"), default="clean")
    p.add_argument("--noisy-dir", help="paired mode: folder of noisy versions")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--max-seconds", type=float, default=10.0, help="longest chunk")
    p.add_argument("--min-seconds", type=float, default=0.5, help="skip shorter files")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--shard-mb", type=float, default=256.0, help="target shard size")
    p.add_argument(
        "--format",
        choices=tuple(audio.SHARD_FORMATS),
        default="flac",
        help="flac: 16-bit, about half the bytes (archives); pcm16: 16-bit WAV that loader "
        "workers slice without decoding (fast training); wav: 32-bit float WAV",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--part", default="0/1", help="I/N: shard only slice I of N (0-based)")
    args = p.parse_args(argv)
    args.name = args.name or Path(args.input.rstrip("/")).name
    args.argv = list(argv)
    return args


VERIFY_HELP = "check every shard's size and sha256 against manifest.json; exit 1 if any differ"
MERGE_HELP = "write one manifest.json over the part manifests of a --part job array"


def subcommand_args(argv: list[str], text: str) -> argparse.Namespace:
    """``merge``/``verify`` take one shard folder (and ``--help``)."""
    p = argparse.ArgumentParser(prog=f"python -m diffdenoise.shard {argv[0]}", description=text)
    p.add_argument("folder", help="shard folder, e.g. shards/speech")
    return p.parse_args(argv[1:])


@entry
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["verify"]:
            return verify_main([subcommand_args(argv, VERIFY_HELP).folder])
        if argv[:1] == ["merge"]:
            m = merge(Path(subcommand_args(argv, MERGE_HELP).folder))
        else:
            m = pack(parse_args(argv))
    except SystemExit as stop:
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
            return 2
        raise
    t, v = m["splits"]["train"], m["splits"]["val"]
    print(
        f"{m['name']}: train {t['samples']} samples / {t['seconds']:.1f} s in "
        f"{len(t['shards'])} shards, val {v['samples']} samples / {v['seconds']:.1f} s in "
        f"{len(v['shards'])} shards, {len(m['skipped'])} skipped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
