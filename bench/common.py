"""What every benchmark shares: timing by median, peak memory of a child, one result row."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_MEASURE = Path(__file__).with_name("measure.py")


class NotMeasured(Exception):
    """A benchmark that cannot run on this machine; the reason goes into RESULTS.md."""


def median_seconds(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1) -> float:
    """The median wall time of `fn` over `repeat` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run one command; return its wall time in seconds and its peak RSS in MiB.

    The command is started by `measure.py`, a small process of its own, so its peak RSS
    does not include the memory of this benchmark process (see measure.py).
    """
    done = subprocess.run(
        [sys.executable, "-S", str(_MEASURE), *argv],
        capture_output=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    try:
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise RuntimeError(
            f"{argv[0]} could not be measured: {done.stderr.decode()[-400:]}"
        ) from exc
    if result["exit"] != 0:
        stderr = done.stderr.decode(errors="replace")
        raise RuntimeError(f"{argv[0]} failed: {stderr.strip()[-400:]}")
    return result["seconds"], round(result["peak_mib"])


def row(
    benchmark: str, *, taskstack: float, baseline: float, unit: str, how: str
) -> dict[str, Any]:
    """One line of RESULTS.md; `ratio` is taskstack / baseline (below 1 is faster)."""
    ratio = taskstack / baseline if baseline else float("nan")
    return {
        "benchmark": benchmark,
        "taskstack": taskstack,
        "baseline": baseline,
        "unit": unit,
        "ratio": ratio,
        "how": how,
    }


def peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
