"""``python -m diffdenoise.train``: the command; its code is :mod:`diffdenoise.training.loop`."""

import sys

from diffdenoise.training.loop import main

if __name__ == "__main__":
    sys.exit(main())
