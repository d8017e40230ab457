"""``python -m diffdenoise.metrics CLEAN FILE...``: score files against a clean reference
(SI-SDR, wideband PESQ, STOI)."""

from __future__ import annotations

import argparse
import sys

from diffdenoise.common.cli import entry
from diffdenoise.data import audio
from diffdenoise.models.metrics import METRICS, score


@entry
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m diffdenoise.metrics", description=__doc__.split("\n")[0]
    )
    p.add_argument("reference", help="the clean file")
    p.add_argument("files", nargs="+", help="files to score against it (same rate)")
    args = p.parse_args(argv)
    try:
        ref, rate = audio.read(args.reference)
        for path in args.files:
            est, est_rate = audio.read(path)
            if est_rate != rate or est.shape[-1] != ref.shape[-1]:
                raise audio.AudioError(f"{path}: rate or length differs from {args.reference}")
            values = score(audio.to_mono(est), audio.to_mono(ref), rate, METRICS)
            print(
                f"{path}: SI-SDR {values['si_sdr']:6.2f} dB  PESQ {values['pesq']:.3f}  "
                f"STOI {values['stoi']:.3f}"
            )
    except (audio.AudioError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
