"""``python -m diffdenoise.reccorpus``: the command; its code is
:mod:`diffdenoise.bench.reccorpus`."""

import sys

from diffdenoise.bench.reccorpus import main

if __name__ == "__main__":
    sys.exit(main())
