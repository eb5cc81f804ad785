"""CLI start-up: taskstack's `dstack` against the dstack 0.22.5 CLI, one process per run.

- `dstack --help`: both print their help and exit; dstack's argparse exits while parsing,
  before its update check, so neither side touches the network.
- `dstack validate -f FILE`: dstack 0.22.5 has no `validate`. Its nearest offline step is
  the start of `dstack apply -f FILE -y`: the whole CLI is imported and its parser built,
  then `load_apply_configuration` reads and validates the file. A small script runs dstack's
  own `main()` that way and exits right after the file is parsed; it skips what needs a
  server or the network (the API client, the daily update check) and the `ssh -V` probe,
  so the baseline is, if anything, faster than a real `dstack apply`.

Both sides get a fresh, empty HOME (and TASKSTACK_HOME) so no user state is read or written,
run alternately, one warm-up each; the figure is the median.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.baseline import DSTACK_VERSION, dstack_baseline
from bench.common import row, run_child

ROOT = Path(__file__).resolve().parents[1]
TASKSTACK = ROOT / ".venv" / "bin" / "dstack"
REPEAT = 7

TASK = """\
type: task
name: train
python: "3.11"
env:
  - HF_TOKEN
  - EPOCHS=3
commands:
  - pip install -r requirements.txt
  - python train.py --epochs $EPOCHS
ports:
  - 6006
resources:
  cpu: 8..
  memory: 32GB..
  gpu: A100:80GB:2
  disk: 200GB..
spot_policy: auto
retry:
  on_events: [no-capacity, interruption]
  duration: 2h
max_duration: 1d
"""

# Runs dstack's CLI entry point as `dstack apply -f FILE -y` up to the parsed configuration.
DSTACK_APPLY_PARSE_ONLY = """\
import os
import sys

import dstack._internal.cli.main as cli_main
from dstack._internal.cli.commands import APIBaseCommand, BaseCommand
from dstack._internal.cli.commands import apply as apply_command

load = apply_command.load_apply_configuration


def parse_then_stop(configuration_file):
    path, conf = load(configuration_file)
    print(conf.type, conf.name)
    raise SystemExit(0)


apply_command.load_apply_configuration = parse_then_stop
# The API client would need a server; `apply` builds it just before reading the file.
APIBaseCommand._command = BaseCommand._command
# The daily update check calls get.dstack.ai; `ssh -V` is not part of reading a file.
cli_main.check_for_updates = lambda: None
cli_main.get_ssh_client_info = lambda: None
# dstack shows the file relative to the working folder and fails on a file outside it.
folder, name = os.path.split(os.path.abspath(sys.argv[1]))
os.chdir(folder)
sys.argv = ["dstack", "apply", "-f", name, "-y"]
cli_main.main()
"""


def run() -> list[dict]:
    """Three rows: `--help` time, validate time, validate peak memory (median of REPEAT)."""
    if not TASKSTACK.is_file():
        raise FileNotFoundError(f"{TASKSTACK} is missing; run `make` to create the virtualenv")
    dstack = dstack_baseline()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as folder:
        work = Path(folder)
        task = work / "task.dstack.yml"
        task.write_text(TASK)
        script = work / "dstack_apply_parse_only.py"
        script.write_text(DSTACK_APPLY_PARSE_ONLY)
        env = {"HOME": str(work), "TASKSTACK_HOME": str(work / ".taskstack")}

        help_ours = [str(TASKSTACK), "--help"]
        help_theirs = [str(dstack.dstack), "--help"]
        validate_ours = [str(TASKSTACK), "validate", "-f", str(task)]
        validate_theirs = [str(dstack.python), str(script), str(task)]
        _check_both_accept(validate_ours, validate_theirs, env=env)

        help_times, _ = _interleaved(help_ours, help_theirs, env=env)
        validate_times, validate_rss = _interleaved(validate_ours, validate_theirs, env=env)

    install = (
        f"dstack {DSTACK_VERSION} in its own virtualenv "
        f"(pip install: {dstack.install_seconds:.0f} s, once)"
    )
    return [
        row(
            "cli: `dstack --help`",
            taskstack=help_times[0] * 1000,
            baseline=help_times[1] * 1000,
            unit="ms",
            how=f"wall time of a fresh process, median of {REPEAT}, alternating; {install}",
        ),
        row(
            "cli: `dstack validate -f FILE`",
            taskstack=validate_times[0] * 1000,
            baseline=validate_times[1] * 1000,
            unit="ms",
            how=(
                f"a {len(TASK.splitlines())}-line GPU task; dstack has no `validate`: its "
                "`main()` as `dstack apply -f FILE -y`, stopped right after "
                "`load_apply_configuration` "
                f"(no server, update check or ssh probe); median of {REPEAT}, alternating"
            ),
        ),
        row(
            "cli: `dstack validate -f FILE` peak memory",
            taskstack=validate_rss[0],
            baseline=validate_rss[1],
            unit="MiB",
            how="peak RSS of the same processes (wait4 rusage), median",
        ),
    ]


def _check_both_accept(ours: Sequence[str], theirs: Sequence[str], *, env: dict[str, str]) -> None:
    # Timing a command that failed early would flatter it: both must parse the file.
    for argv, expected in ((ours, "valid task"), (theirs, "task train")):
        done = subprocess.run(
            list(argv), capture_output=True, text=True, env={**os.environ, **env}, timeout=120
        )
        if done.returncode != 0 or expected not in done.stdout:
            output = (done.stderr or done.stdout).strip()[-400:]
            raise RuntimeError(f"{argv[0]} did not parse the task: {output}")


def _interleaved(
    ours: Sequence[str], theirs: Sequence[str], *, env: dict[str, str]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (seconds, peak MiB) of each side, the two run alternately after a warm-up round."""
    samples: dict[int, list[tuple[float, int]]] = {0: [], 1: []}
    for attempt in range(REPEAT + 1):
        for side, argv in enumerate((ours, theirs)):
            sample = run_child(argv, env=env)
            if attempt:  # the first round warms the page cache and .pyc files
                samples[side].append(sample)

    times = [statistics.median(s[0] for s in samples[side]) for side in (0, 1)]
    rss = [statistics.median(s[1] for s in samples[side]) for side in (0, 1)]
    return (times[0], times[1]), (rss[0], rss[1])
