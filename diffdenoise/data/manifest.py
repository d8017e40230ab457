"""Shard manifests: write them atomically, merge the parts of a job array, verify shards.

``manifest.json`` lists every shard with its sample count, seconds, size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

from diffdenoise.common.files import atomic_path

MANIFEST = "manifest.json"
KINDS = ("clean", "noise", "paired")
FORMATS = ("flac", "pcm16", "wav")  # what the shard tool writes (audio.SHARD_FORMATS)
MAX_SHARD_SAMPLES = 10**8  # far above any real shard (256 MB of 0.5 s clips: about 16,000)
MAX_SHARD_SECONDS = 10**8
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PART = re.compile(r"^(\d+)/(\d+)$")


class ManifestError(ValueError):
    """A manifest that cannot be trusted: its path and the field, in one line."""


def _need(ok: bool, path: Path, field: str, problem: str) -> None:
    if not ok:
        raise ManifestError(f"{path}: {field}: {problem}")


def _count(value, path: Path, field: str, low: int, high: float) -> None:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    _need(is_int and low <= value <= high, path, field,
          f"{value!r} is not a whole number from {low} to {high:g}")  # fmt: skip


def _amount(value, path: Path, field: str, high: float) -> None:
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    _need(
        is_num and 0 <= value <= high, path, field, f"{value!r} is not a number from 0 to {high:g}"
    )


def check_shard(entry, path: Path, field: str) -> None:
    """One shard entry: a plain file name in the manifest's own folder, sane numbers."""
    _need(isinstance(entry, dict), path, field, "not an object")
    name = entry.get("file")
    _need(isinstance(name, str) and name.endswith(".tar"), path, f"{field}.file",
          f"{name!r} is not a .tar file name")  # fmt: skip
    inside = name == Path(name).name and not name.startswith(".") and "\\" not in name
    _need(inside, path, f"{field}.file", f"{name!r} points outside the manifest's folder")
    _count(entry.get("samples"), path, f"{field}.samples", 1, MAX_SHARD_SAMPLES)
    _amount(entry.get("seconds"), path, f"{field}.seconds", MAX_SHARD_SECONDS)
    _count(entry.get("bytes"), path, f"{field}.bytes", 1024, 2**50)
    sha = entry.get("sha256")
    _need(isinstance(sha, str) and bool(_SHA256.match(sha)), path, f"{field}.sha256",
          f"{sha!r} is not a sha256 hex digest")  # fmt: skip


def check_manifest(manifest, path: Path) -> dict:
    """Every field training, ``verify`` and ``merge`` read: types, ranges, shard names
    inside the folder, no shard listed twice, split totals that add up. Returns it."""
    _need(isinstance(manifest, dict), path, "top level", f"a JSON {type(manifest).__name__}, "
          "not an object")  # fmt: skip
    _need(
        manifest.get("kind") in KINDS,
        path,
        "kind",
        f"{manifest.get('kind')!r} is not one of {KINDS}",
    )
    _need(manifest.get("format", "flac") in FORMATS, path, "format",
          f"shards of format {manifest.get('format')!r}, which the loader cannot read; "
          f"reshard with --format {' or '.join(FORMATS)}")  # fmt: skip
    _count(manifest.get("sample_rate"), path, "sample_rate", 1000, 768000)
    part = str(manifest.get("part", "0/1"))
    _need(bool(_PART.match(part)) or part.startswith("merged "), path, "part",
          f"{part!r} is not I/N")  # fmt: skip
    splits = manifest.get("splits")
    _need(isinstance(splits, dict) and set(splits) == {"train", "val"}, path, "splits",
          "must hold exactly 'train' and 'val'")  # fmt: skip
    seen: set[str] = set()
    for name, split in splits.items():
        field = f"splits.{name}"
        _need(isinstance(split, dict) and isinstance(split.get("shards"), list), path, field,
              "must hold a 'shards' list")  # fmt: skip
        for i, entry in enumerate(split["shards"]):
            check_shard(entry, path, f"{field}.shards[{i}]")
            _need(entry["file"] not in seen, path, f"{field}.shards[{i}].file",
                  f"{entry['file']} is listed twice")  # fmt: skip
            seen.add(entry["file"])
        total = sum(s["samples"] for s in split["shards"])
        _need(split.get("samples") == total, path, f"{field}.samples",
              f"{split.get('samples')!r}, but its shards hold {total}")  # fmt: skip
    return manifest


def read_manifest(path: Path) -> dict:
    """Load and :func:`check_manifest` a manifest file; :class:`ManifestError` if not."""
    return parse_manifest(path.read_bytes(), path)


def parse_manifest(raw: bytes, where) -> dict:
    """:func:`check_manifest` of a manifest's bytes read from ``where`` (a path or URL)."""
    try:
        manifest = json.loads(raw.decode())
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: not a JSON text file") from None
    except ValueError as err:
        raise ManifestError(f"{where}: not valid JSON ({err})") from None
    return check_manifest(manifest, where)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_parts(out: Path) -> list[dict]:
    """The checked part manifests of a ``--part`` job array: every index 0..N-1 of one N,
    once each, with one kind, rate and format."""
    parts = sorted(out.glob("manifest.part-*.json"))
    if not parts:
        raise SystemExit(f"error: {out}: no manifest.part-*.json to merge")
    try:
        loaded = [read_manifest(p) for p in parts]
    except ManifestError as err:
        raise SystemExit(f"error: {err}") from None
    for path, m in zip(parts, loaded):
        if not _PART.match(m.get("part", "")):
            raise SystemExit(f"error: {path}: part: {m.get('part')!r} is not I/N")
    expected = int(loaded[0]["part"].split("/")[1])
    if len(loaded) != expected:
        raise SystemExit(f"error: {out}: found {len(loaded)} of {expected} part manifests")
    for path, m in zip(parts, loaded):
        for key, want in (("part", f"/{expected}"), ("kind", None), ("sample_rate", None),
                          ("format", None)):  # fmt: skip
            have = m.get(key)
            ok = have.endswith(want) if want else have == loaded[0].get(key)
            if not ok:
                raise SystemExit(f"error: {path}: {key}: {have!r} does not match "
                                 f"{parts[0].name} ({loaded[0].get(key)!r})")  # fmt: skip
    indices = sorted(int(m["part"].split("/")[0]) for m in loaded)
    if indices != list(range(len(parts))):
        raise SystemExit(
            f"error: {out}: part manifests {indices} are not 0..{len(parts) - 1} once each"
        )
    return loaded


def merge(out: Path) -> dict:
    """Combine ``manifest.part-*.json`` into one ``manifest.json``."""
    loaded = read_parts(out)
    merged = {k: loaded[0][k] for k in ("name", "kind", "sample_rate", "format")}
    merged["files"] = sum(m["files"] for m in loaded)
    merged["skipped"] = [s for m in loaded for s in m["skipped"]]
    merged["splits"] = {}
    for split in ("train", "val"):
        shards = [s for m in loaded for s in m["splits"][split]["shards"]]
        merged["splits"][split] = {
            "samples": sum(s["samples"] for s in shards),
            "seconds": round(sum(s["seconds"] for s in shards), 3),
            "shards": shards,
        }
    merged["part"] = f"merged {len(loaded)}"
    merged["command"] = [m["command"] for m in loaded] + [
        f"python -m diffdenoise.shard merge {out}"
    ]
    try:  # a shard listed by two parts
        check_manifest(merged, out / MANIFEST)
    except ManifestError as err:
        raise SystemExit(f"error: {err} (in the part manifests; nothing was written)") from None
    write_json_atomic(out / MANIFEST, merged)
    return merged


def verify(out: Path) -> list[str]:
    """Every shard the manifest lists, checked for presence, size and sha256: the problems."""
    path = out / MANIFEST
    if not path.is_file():
        raise SystemExit(f"error: {path}: manifest missing; nothing to verify")
    try:
        manifest = read_manifest(path)
    except ManifestError as err:
        raise SystemExit(f"error: {err}") from None
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    problems = []
    for entry in shards:
        tar = out / entry["file"]
        if not tar.is_file():
            problems.append(f"{tar}: missing")
        elif tar.stat().st_size != entry["bytes"]:
            problems.append(
                f"{tar}: {tar.stat().st_size} bytes, the manifest says {entry['bytes']}"
            )
        elif sha256_of(tar) != entry["sha256"]:
            problems.append(f"{tar}: sha256 differs from the manifest (changed after sharding)")
    return problems


def verify_main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise SystemExit("usage: python -m diffdenoise.shard verify SHARD_DIR")
    problems = verify(Path(argv[0]))
    for line in problems:
        print(line, file=sys.stderr)
    manifest = read_manifest(Path(argv[0]) / MANIFEST)
    total = sum(len(split["shards"]) for split in manifest["splits"].values())
    print(f"{argv[0]}: {total - len(problems)} of {total} shards intact")
    return 1 if problems else 0


def build_manifest(args, sinks, skipped, n_files, part, parts) -> dict:
    """The manifest of one sharding run (or ``--part``): its splits' shards and totals."""
    splits = {}
    for name, sink in sinks.items():
        splits[name] = {
            "samples": sum(s["samples"] for s in sink.shards),
            "seconds": round(sum(s["seconds"] for s in sink.shards), 3),
            "shards": sink.shards,
        }
    return {
        "name": args.name,
        "kind": "paired" if args.noisy_dir else args.kind,
        "sample_rate": args.sample_rate,
        "format": args.format,
        "files": n_files,
        "skipped": skipped,
        "splits": splits,
        "part": f"{part}/{parts}",
        "command": shlex.join(["python", "-m", "diffdenoise.shard", *args.argv]),
    }


def remove_stale(out: Path, tag: str, manifest: dict) -> None:
    """Drop shards of this part left by an earlier, larger run of the same command."""
    keep = {s["file"] for sp in manifest["splits"].values() for s in sp["shards"]}
    for split in manifest["splits"]:
        for path in out.glob(f"{split}{tag}[0-9]*.tar"):
            if path.name not in keep:
                path.unlink()
    for split in manifest["splits"]:  # only this part's: other parts may be writing now
        for tmp in out.glob(f".{split}{tag}[0-9]*.tar.tmp"):
            tmp.unlink()
