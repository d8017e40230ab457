"""``python -m diffdenoise.evaluate``: the command; its code is
:mod:`diffdenoise.evaluation.evaluate`."""

import sys

from diffdenoise.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
