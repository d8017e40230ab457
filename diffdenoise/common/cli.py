"""What every user-facing command shares: argument types that refuse bad numbers, an
output check made before any work, and :func:`entry`, which turns a cause outside the
program (a signal, a full disk, a read-only folder) into one line and a bug into one line
naming the file that holds its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def number(kind: type, low: float, high: float | None = None, low_ok: bool = True):
    """An argparse type: ``kind`` (int or float) at least ``low`` (above it without
    ``low_ok``) and at most ``high``; anything else is refused with the range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value < low if low_ok else value <= low
        if too_low or (high is not None and value > high) or value != value:
            where = f">= {low}" if low_ok else f"> {low}"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: must be {where}" + (f" and <= {high}" if high else "")
            )
        return value

    return parse


def check_writable(path: Path) -> None:
    """Raise ``OSError`` naming ``path`` unless its folder exists and can be written:
    checked before a command spends minutes on the work it would then lose."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OSError(errno.ENOENT, f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OSError(errno.EACCES, f"cannot write {path}: folder {folder} is not writable")


def same_file(a: Path, b: Path) -> bool:
    """Whether ``b`` names the file ``a`` is (through links and relative paths too)."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def os_reason(err: OSError) -> str:
    """Why the machine refused a write, in a few words: full disk, read-only, ..."""
    if err.errno == errno.ENOSPC:
        return "no space left on the device"
    if err.errno == errno.EROFS:
        return "read-only file system"
    return err.strerror or str(err)


def os_error_line(err: OSError) -> str:
    """One line for an error of the machine, not the program, naming the file if known."""
    return f"{err.filename}: {os_reason(err)}" if err.filename else os_reason(err)


PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_DEFAULT_FORMAT = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """This package's warnings (a damaged shard, an unreachable one) as the one line a
    user reads, ``warning: ...``, not Python's file, line and source line; another
    library's as Python prints them."""
    if str(Path(filename).resolve()).startswith(PACKAGE_DIR):
        return f"warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


def entry(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a command's ``main``: Ctrl-C, a full disk or a read-only folder give one line
    (exit 130 or 2); any other exception is a bug, written to a traceback file that the
    one line names (exit 1)."""

    def wrapped(argv: list[str] | None = None) -> int:
        warnings.formatwarning = _format_warning  # loader workers fork with it
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT
        except OSError as err:
            print(f"error: {os_error_line(err)}", file=sys.stderr)
            return 2
        except Exception as err:
            log = (
                Path(tempfile.gettempdir())
                / f"diffdenoise-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            )
            log.write_text(traceback.format_exc())
            first = (str(err).strip().splitlines() or [""])[0][:200]
            print(
                f"error: internal error {type(err).__name__}: {first} (a bug in diffdenoise; "
                f"the full traceback is in {log})",
                file=sys.stderr,
            )
            return 1

    wrapped.__doc__, wrapped.__name__ = main.__doc__, main.__name__
    return wrapped
