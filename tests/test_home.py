"""The state folder: where it is, and one clear error when it cannot be a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskstack.errors import ConfigError
from taskstack.home import ensure_home, taskstack_home


def test_ensure_home_creates_the_folder_and_subfolders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path / "state"))

    runs = ensure_home("runs")

    assert runs == tmp_path / "state" / "runs"
    assert runs.is_dir()
    assert ensure_home() == taskstack_home()


@pytest.fixture
def file_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TASKSTACK_HOME pointing at a file, as in `TASKSTACK_HOME=/etc/passwd`."""
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0\n")
    monkeypatch.setenv("TASKSTACK_HOME", str(afile))
    return afile


def test_a_file_as_the_home_is_one_line_naming_the_variable(file_home: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^TASKSTACK_HOME={file_home} is a file, not a"):
        ensure_home("runs")


def test_a_home_below_a_file_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "passwd").write_text("x\n")
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path / "passwd" / "state"))

    with pytest.raises(ConfigError, match=r"^TASKSTACK_HOME=.* cannot be used as the state"):
        ensure_home()


def test_a_file_where_a_subfolder_goes_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path))
    (tmp_path / "runs").write_text("x\n")

    with pytest.raises(ConfigError, match=r"runs is a file, not a folder; move the file away"):
        ensure_home("runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_home_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path.chmod(0o500)
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path / "state"))

    try:
        with pytest.raises(ConfigError, match="point TASKSTACK_HOME at a folder you can write"):
            ensure_home()
    finally:
        tmp_path.chmod(0o700)


def test_offers_with_a_file_as_home_is_one_clear_error(
    file_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskstack.compiler import catalog

    monkeypatch.delenv("TASKSTACK_CATALOG", raising=False)

    with pytest.raises(ConfigError, match="TASKSTACK_HOME=.* is a file"):
        catalog._load_online_or_fallback()


def test_apply_with_a_state_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch) -> None:
    import subprocess
    import sys

    task = tmp_path / "task.yml"
    task.write_text("type: task\ncommands: ['true']\n")
    env = {"TASKSTACK_HOME": "/etc/passwd", "PATH": "/usr/bin:/bin"}

    done = subprocess.run(
        [str(Path(sys.executable).with_name("dstack")), "apply", "-f", str(task), "-y"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "TASKSTACK_HOME" in done.stderr
    assert "Traceback" not in done.stderr
