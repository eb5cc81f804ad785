"""dstack 0.22.5's own answers on a folder of task configs (`../shared/conformance`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = REPO.parent / "shared" / "conformance"
DSTACK = Path(sys.executable).parent / "dstack"


@pytest.mark.skipif(
    not (CONFORMANCE / "check.py").exists(),
    reason=f"{CONFORMANCE} is absent: the conformance cases ship with the workspace, not the repo",
)
@pytest.mark.skipif(not DSTACK.exists(), reason=f"{DSTACK} is not installed in this environment")
def test_every_conformance_case_passes() -> None:
    command = f"{DSTACK} validate --json -f {{file}}"

    run = subprocess.run(
        [sys.executable, str(CONFORMANCE / "check.py"), "--cmd", command],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )

    summary = run.stdout.strip().splitlines()[-1]
    failures = "\n".join(line for line in run.stdout.splitlines() if line.startswith("FAIL"))
    assert summary.endswith(" passed, 0 failed"), failures
    assert int(summary.split()[0]) > 0
    assert run.returncode == 0
