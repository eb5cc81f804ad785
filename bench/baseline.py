"""dstack 0.22.5 itself, the baseline of the CLI and parser benchmarks.

    dstack = dstack_baseline()     # installs once into bench/.work/dstack-0.22.5, then reuses
    dstack.python, dstack.dstack, dstack.install_seconds

The virtualenv counts as installed only once `pip install` succeeded (a marker file records
it), so an install cut short is redone on the next run instead of being measured half-done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DSTACK_VERSION = "0.22.5"
VENV = Path(__file__).with_name(".work") / f"dstack-{DSTACK_VERSION}"
MARKER = VENV / "installed.json"
INSTALL_TIMEOUT = 900


class BaselineError(RuntimeError):
    """The dstack baseline could not be installed; the message says why."""


@dataclass(frozen=True)
class Baseline:
    """A ready dstack virtualenv: its interpreter, its `dstack` script, how long pip took."""

    python: Path
    dstack: Path
    install_seconds: float
    installed_now: bool


def dstack_baseline() -> Baseline:
    """The dstack 0.22.5 virtualenv, created with `pip install dstack==0.22.5` on first use.

    Raises BaselineError with pip's last words when the virtualenv or the install fails.
    """
    if MARKER.is_file():
        return _baseline(json.loads(MARKER.read_text())["install_seconds"], installed_now=False)

    # A folder without the marker is a failed or interrupted install: start clean.
    shutil.rmtree(VENV, ignore_errors=True)
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(VENV)], what="create the virtualenv")
    _run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"dstack=={DSTACK_VERSION}"],
        what=f"pip install dstack=={DSTACK_VERSION}",
    )
    seconds = time.perf_counter() - start

    baseline = _baseline(seconds, installed_now=True)
    _check_version(baseline)
    MARKER.write_text(json.dumps({"version": DSTACK_VERSION, "install_seconds": seconds}))
    return baseline


def _baseline(install_seconds: float, *, installed_now: bool) -> Baseline:
    return Baseline(
        python=VENV / "bin" / "python",
        dstack=VENV / "bin" / "dstack",
        install_seconds=install_seconds,
        installed_now=installed_now,
    )


def _run(argv: list[str], *, what: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BaselineError(f"could not {what}: {exc}") from exc
    if done.returncode != 0:
        last = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise BaselineError(f"could not {what} in {VENV}: {last or f'exit {done.returncode}'}")


def _check_version(baseline: Baseline) -> None:
    # A resolver surprise (another release, a missing script) must not pass as the baseline.
    probe = "import importlib.metadata as m; print(m.version('dstack'))"
    done = subprocess.run([str(baseline.python), "-c", probe], capture_output=True, text=True)
    found = done.stdout.strip()
    if found != DSTACK_VERSION or not baseline.dstack.is_file():
        raise BaselineError(
            f"{VENV} holds dstack {found or '(none)'}, not {DSTACK_VERSION}; "
            f"delete {VENV} and rerun"
        )
