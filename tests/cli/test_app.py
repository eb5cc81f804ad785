"""The entry point: exit codes and how errors reach the person."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DSTACK = Path(sys.executable).with_name("dstack")


def _dstack(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DSTACK), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("bogus",), 2, "No such command 'bogus'"),
        (("validate", "--nope"), 2, "No such option: --nope"),
        (("validate", "-f", "missing.yml"), 1, "missing.yml: no such file"),
    ],
)
def test_bad_command_lines_exit_non_zero_without_a_traceback(
    tmp_path: Path, args: tuple[str, ...], code: int, says: str
) -> None:
    done = _dstack(*args, cwd=tmp_path)

    assert done.returncode == code
    assert says in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_error_keeps_square_brackets_in_its_message(tmp_path: Path) -> None:
    (tmp_path / "task.yml").write_text("type: task\ncommands: ['true']\nbackends: [nope]\n")

    done = _dstack("validate", "-f", "task.yml", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stderr.startswith("error: task.yml:3: `backends[0]`")
    assert len(done.stderr.strip().splitlines()) == 1


def test_help_lists_every_command(tmp_path: Path) -> None:
    done = _dstack("--help", cwd=tmp_path)

    assert done.returncode == 0
    for command in ("apply", "plan", "offer", "validate", "ps", "logs", "stop", "destroy"):
        assert command in done.stdout
