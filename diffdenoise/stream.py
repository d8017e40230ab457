"""``python -m diffdenoise.stream IN OUT -c CKPT --chunk-ms 10``: the command; its code is
:func:`diffdenoise.inference.realtime.main`."""

import sys

from diffdenoise.inference.realtime import main

if __name__ == "__main__":
    sys.exit(main())
