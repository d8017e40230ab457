"""Progress that suits where it is shown: a tqdm bar on a terminal, status lines elsewhere.

A bar redrawn with carriage returns turns a SLURM log or a CI transcript into one huge
line; there a one-line status every ``every_s`` seconds says the same.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class StatusLines:
    """The part of tqdm's interface the tools use, printing a plain line now and then."""

    def __init__(self, total=None, desc: str = "", unit: str = "it", every_s: float = 30.0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _print(self) -> None:
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        tail = f", {self.postfix}" if self.postfix else ""
        took = time.monotonic() - self.start
        print(f"{self.desc}: {done} {self.unit} in {took:.0f} s{tail}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n:
            self._print()

    def __enter__(self) -> StatusLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total=None, desc: str = "", unit: str = "it", every_s: float = 30.0, **kw):
    """A tqdm bar when stderr is a terminal, else :class:`StatusLines`."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kw)
    return StatusLines(total, desc, unit, every_s)
