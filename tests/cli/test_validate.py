"""`dstack validate`: the summary, the JSON, and one clean error line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DSTACK = Path(sys.executable).parent / "dstack"

pytestmark = pytest.mark.skipif(not DSTACK.exists(), reason=f"{DSTACK} is not installed")


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DSTACK), "validate", *args], capture_output=True, text=True, timeout=60
    )


def test_json_is_the_normalized_config(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text("type: task\ncommands: [echo hi]\nenv: [TOKEN]\nresources:\n  gpu: A100:2\n")

    run = _validate("-f", str(path), "--json")

    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["env"] == {"TOKEN": None}
    assert data["resources"]["gpu"]["name"] == ["A100"]
    assert data["spot_policy"] == "on-demand"
    assert run.stderr == ""


def test_summary_shows_resources_and_hides_secrets(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text(
        "type: task\nimage: private/img\nregistry_auth: {username: u, password: hunter2}\n"
        "env: [KEY=s3cr3t, NEED]\nresources:\n  cpu: 8..\n"
    )

    run = _validate("-f", str(path))

    assert run.returncode == 0, run.stderr
    assert "cpu=8.. mem=8GB.. disk=100GB.. gpu=0.." in run.stdout
    assert "NEED (required at apply)" in run.stdout
    assert "hunter2" not in run.stdout and "s3cr3t" not in run.stdout


def test_invalid_file_is_one_line_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text("type: task\ncommands: [x]\nresources:\n  gpu: A100::2\n")

    run = _validate("-f", str(path), "--json")

    assert run.returncode == 1
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert f"{path}:4: `resources.gpu`:" in run.stderr.replace("\n", "")


def test_missing_file(tmp_path: Path) -> None:
    run = _validate("-f", str(tmp_path / "nope.yml"))

    assert run.returncode == 1
    assert "no such file" in run.stderr


def test_summary_prints_commands_as_written(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text("type: task\ncommands:\n  - python -c 'print([b for b in [1]])'\n")

    run = _validate("-f", str(path))

    assert run.returncode == 0, run.stderr
    assert "print([b for b in [1]])" in run.stdout


# Nine levels of nine aliases: 9**9 strings once expanded, a few hundred bytes on disk.
ALIAS_BOMB = "type: task\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]\n" for level in range(1, 9)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('type: task\nname: "../../escape"\ncommands: [x]\n', ":2: `name`: '../../escape' is not"),
        ("type: task\nname: a/b\ncommands: [x]\n", ":2: `name`: 'a/b' is not a run name"),
        (ALIAS_BOMB + "commands: *a8\n", ": the file expands to more than 100000 values"),
        (f"type: task\ncommands: [x]\nworking_dir: {'w' * 600_000}\n", ":3: `working_dir`: 'www"),
    ],
)
def test_hostile_files_are_one_short_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text(text)

    run = _validate("-f", str(path))

    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert message in run.stderr.replace("\n", "")
    assert len(run.stderr) < 400


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory; pass the task file inside it, e.g. `-f"),
        (lambda p: p.write_bytes(b"\x00\xff\xfe"), "not a text file"),
    ],
)
def test_wrong_kind_of_file_says_what_to_pass(tmp_path: Path, make: Any, message: str) -> None:
    path = tmp_path / "task"
    make(path)

    run = _validate("-f", str(path))

    assert run.returncode == 1
    assert message in run.stderr.replace("\n", "")
    assert "Traceback" not in run.stderr
