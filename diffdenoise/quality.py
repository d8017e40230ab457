"""``python -m diffdenoise.quality``: the command; its code is
:mod:`diffdenoise.bench.quality`."""

import sys

from diffdenoise.bench.quality import main

if __name__ == "__main__":
    sys.exit(main())
