"""Entry point for ``accelerate launch launch/train.py CONFIG.yaml [key=value ...]``."""

import sys

from diffdenoise.training.loop import main

if __name__ == "__main__":
    sys.exit(main())
