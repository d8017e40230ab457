"""``python -m diffdenoise.infer``: the command; its code is :mod:`diffdenoise.inference.infer`."""

import sys

from diffdenoise.inference.infer import main

if __name__ == "__main__":
    sys.exit(main())
