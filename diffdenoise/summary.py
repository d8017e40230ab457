"""``python -m diffdenoise.summary``: the command; its code is
:mod:`diffdenoise.bench.summary`."""

import sys

from diffdenoise.bench.summary import main

if __name__ == "__main__":
    sys.exit(main())
