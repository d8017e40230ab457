"""``python -m diffdenoise.demo_data``: the command; its code is
:mod:`diffdenoise.bench.demo_data`."""

import sys

from diffdenoise.bench.demo_data import main

if __name__ == "__main__":
    sys.exit(main())
