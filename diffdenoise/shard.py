"""``python -m diffdenoise.shard``: the command; its code is :mod:`diffdenoise.data.sharding`."""

import sys

from diffdenoise.data.sharding import main

if __name__ == "__main__":
    sys.exit(main())
