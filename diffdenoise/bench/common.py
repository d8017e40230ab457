"""What the benchmark modules share: a result row, a timer, a demo corpus, quiet calls."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from diffdenoise.bench import demo_data


def row(bid, figure, value, target, passed, **details) -> dict:
    return {
        "id": bid,
        "figure": figure,
        "value": value,
        "target": target,
        "pass": passed,
        **details,
    }


def timed(fn, repeat: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_corpus(work: Path, minutes: float, rate: int) -> Path:
    src = work / f"corpus{rate}"
    if not src.exists():
        demo_data.generate(src, minutes, seed=7, rate=rate)
    return src


def quiet(fn, *args):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)
