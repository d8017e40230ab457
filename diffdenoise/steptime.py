"""``python -m diffdenoise.steptime``: the command; its code is
:mod:`diffdenoise.bench.steptime`."""

import sys

from diffdenoise.bench.steptime import main

if __name__ == "__main__":
    sys.exit(main())
