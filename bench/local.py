"""The local backend: `dstack apply -y` of a task that does nothing, against `sh -c`.

Two rows: the overhead of a whole apply (wall time of the command, minus nothing: the
baseline runs the same commands with `sh -c`), and the peak memory of `dstack apply`
against the peak memory of that shell. Each process runs alone, one after another,
sharing one TASKSTACK_HOME (set up by a warm-up round), alternating taskstack and baseline.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import row, run_child

REPEAT = 7
COMMANDS = ["true", "echo done"]
TASK = "type: task\nname: bench-noop\ncommands:\n" + "".join(f"  - '{c}'\n" for c in COMMANDS)


def run() -> list[dict]:
    """Measure both rows in one temporary folder that holds the task."""
    dstack = Path(sys.executable).with_name("dstack")
    workdir = Path(tempfile.mkdtemp(prefix="bench-local-"))
    try:
        (workdir / ".dstack.yml").write_text(TASK)
        ours, baseline = _alternate(dstack, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ours_ms = statistics.median(t for t, _ in ours) * 1000
    base_ms = statistics.median(t for t, _ in baseline) * 1000
    how = f"median of {REPEAT}, alternating, after a warm-up run in the same TASKSTACK_HOME"
    return [
        row(
            "local: `dstack apply -y` of a no-op task vs `sh -c`",
            taskstack=ours_ms,
            baseline=base_ms,
            unit="ms",
            how=f"{how}; overhead {ours_ms - base_ms:.0f} ms",
        ),
        row(
            "local: peak memory of `dstack apply -y`",
            taskstack=statistics.median(m for _, m in ours),
            baseline=statistics.median(m for _, m in baseline),
            unit="MiB",
            how="peak RSS of the command's own process (wait4), against the same `sh -c`",
        ),
    ]


def _alternate(dstack: Path, workdir: Path) -> tuple[list, list]:
    ours, baseline = [], []
    script = " && ".join(COMMANDS)
    home = Path(tempfile.mkdtemp(prefix="bench-local-home-"))
    for i in range(REPEAT + 1):
        # One state folder, as a user has: the warm-up round pays its one-time set-up.
        env = {"TASKSTACK_HOME": str(home), "TASKSTACK_OFFLINE": "1"}
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            ours_sample = run_child([str(dstack), "apply", "-f", ".dstack.yml", "-y"], env=env)
            base_sample = run_child(["sh", "-c", script], env=env)
        finally:
            os.chdir(cwd)
        if i == REPEAT:
            shutil.rmtree(home, ignore_errors=True)
        if i:  # the first round warms the page cache and the byte-code cache
            ours.append(ours_sample)
            baseline.append(base_sample)
    return ours, baseline
