"""``python -m diffdenoise.summary CONFIG...``: parameters and compute of each config's model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffdenoise.common.cli import entry
from diffdenoise.config import loading as config
from diffdenoise.models.factory import count_parameters, gflops_per_second, model_for


def describe(path: str) -> str:
    cfg = config.load([path])
    model = model_for(cfg)
    rate = cfg.data.sample_rate
    gflops = gflops_per_second(model, rate)
    kind = "U-Net" if cfg.model.skips else "plain"
    if cfg.model.family == "spectral":
        kind = "causal" if cfg.model.causal else "spectral"
    calls = ""
    if cfg.diffusion.objective == "bridge" and cfg.diffusion.steps > 1:
        calls = f", x {cfg.diffusion.steps} sampler steps"
    return (
        f"{Path(path).name:<14} {kind:<8} {count_parameters(model) / 1e6:7.2f} M params "
        f"{gflops:7.2f} GFLOP per audio-second at {rate} Hz{calls}"
    )


@entry
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("configs", nargs="+")
    args = parser.parse_args(argv)
    try:
        for path in args.configs:
            print(describe(path))
    except config.ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
