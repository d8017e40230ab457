"""``python -m diffdenoise.tune``: the command; its code is
:mod:`diffdenoise.evaluation.tune`."""

import sys

from diffdenoise.evaluation.tune import main

if __name__ == "__main__":
    sys.exit(main())
