"""``python -m diffdenoise.export``: the command; its code is
:mod:`diffdenoise.inference.export`."""

import sys

from diffdenoise.inference.export import main

if __name__ == "__main__":
    sys.exit(main())
