"""``python -m diffdenoise.bench``: the command; its code is :mod:`diffdenoise.bench.suite`."""

import sys

from diffdenoise.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
