from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import baseline


@pytest.fixture()
def venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "dstack-0.22.5"
    monkeypatch.setattr(baseline, "VENV", folder)
    monkeypatch.setattr(baseline, "MARKER", folder / "installed.json")
    return folder


def test_an_installed_baseline_is_reused_without_running_pip(
    venv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv.mkdir()
    (venv / "installed.json").write_text(json.dumps({"version": "0.22.5", "install_seconds": 42}))
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")

    found = baseline.dstack_baseline()

    assert found.python == venv / "bin" / "python"
    assert found.dstack == venv / "bin" / "dstack"
    assert found.install_seconds == 42
    assert not found.installed_now


def test_a_failed_install_is_a_clear_error_and_a_half_made_folder_is_redone(
    venv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv.mkdir()
    (venv / "leftover").write_text("from an interrupted install")
    monkeypatch.setattr(sys, "executable", "/bin/false")

    with pytest.raises(baseline.BaselineError, match="could not create the virtualenv"):
        baseline.dstack_baseline()

    assert not (venv / "leftover").exists()
    assert not (venv / "installed.json").exists()
