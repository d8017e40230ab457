"""``python -m diffdenoise.metrics``: the command; its code is :mod:`diffdenoise.models.metrics`."""

import sys

from diffdenoise.models.metrics import main

if __name__ == "__main__":
    sys.exit(main())
