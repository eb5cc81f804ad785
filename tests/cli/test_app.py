"""The entry point: exit codes and how errors reach the person."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from taskstack.cli.app import COMMAND_MODULES, app, register_commands

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


def test_each_command_is_registered_by_the_module_a_command_line_imports_for_it() -> None:
    register_commands([])

    registered = {
        typer.main.get_command_name(info.callback.__name__): info.callback.__module__
        for info in app.registered_commands
        if info.callback is not None
    }
    for group in app.registered_groups:
        registered[group.name] = next(
            f"taskstack.cli.{module}"
            for module in COMMAND_MODULES.values()
            if group.typer_instance
            in vars(importlib.import_module(f"taskstack.cli.{module}")).values()
        )

    assert registered == {name: f"taskstack.cli.{m}" for name, m in COMMAND_MODULES.items()}
    assert set(typer.main.get_command(app).commands) == set(COMMAND_MODULES)
