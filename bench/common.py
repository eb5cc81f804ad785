"""What every benchmark shares: timing by median, peak memory of a child, one result row."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


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

    The peak comes from `wait4`'s rusage of that child alone, so children measured one
    after another do not mix.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise RuntimeError(f"{argv[0]} failed: {stderr.strip()[-400:]}")
    return elapsed, usage.ru_maxrss // 1024


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
