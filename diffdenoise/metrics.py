"""``python -m diffdenoise.metrics``: the command; its code is
:mod:`diffdenoise.evaluation.compare`."""

import sys

from diffdenoise.evaluation.compare import main

if __name__ == "__main__":
    sys.exit(main())
