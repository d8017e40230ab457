"""Shard manifests: write them atomically, merge the parts of a job array, verify shards.

``manifest.json`` lists every shard with its sample count, seconds, size and sha256.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from diffdenoise.files import atomic_path

MANIFEST = "manifest.json"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def merge(out: Path) -> dict:
    """Combine ``manifest.part-*.json`` into one ``manifest.json``."""
    parts = sorted(out.glob("manifest.part-*.json"))
    if not parts:
        raise SystemExit(f"error: {out}: no manifest.part-*.json to merge")
    loaded = [json.loads(p.read_text()) for p in parts]
    expected = int(loaded[0]["part"].split("/")[1])
    if len(loaded) != expected:
        raise SystemExit(f"error: {out}: found {len(loaded)} of {expected} part manifests")
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
    merged["part"] = f"merged {expected}"
    merged["command"] = [m["command"] for m in loaded] + [
        f"python -m diffdenoise.shard merge {out}"
    ]
    write_json_atomic(out / MANIFEST, merged)
    return merged


def verify(out: Path) -> list[str]:
    """Every shard the manifest lists, checked for presence, size and sha256: the problems."""
    path = out / MANIFEST
    if not path.is_file():
        raise SystemExit(f"error: {path}: manifest missing; nothing to verify")
    try:
        manifest = json.loads(path.read_text())
        shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    except (ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"error: {path}: not a shard manifest ({err})") from None
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
    manifest = json.loads((Path(argv[0]) / MANIFEST).read_text())
    total = sum(len(split["shards"]) for split in manifest["splits"].values())
    print(f"{argv[0]}: {total - len(problems)} of {total} shards intact")
    return 1 if problems else 0
