from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.parse import LOOP


def test_the_loop_times_every_pass_and_names_the_files_taskstack_accepts(tmp_path: Path) -> None:
    (tmp_path / "001-ok.dstack.yml").write_text("type: task\ncommands: [echo hi]\n")
    (tmp_path / "002-bad-port.dstack.yml").write_text("type: task\nports: [99999]\n")
    (tmp_path / "003-not-yaml.dstack.yml").write_text("type: task\ncommands: [\n")

    done = subprocess.run(
        [sys.executable, str(LOOP), "taskstack", str(tmp_path), "3"],
        capture_output=True,
        text=True,
        check=True,
    )

    result = json.loads(done.stdout)
    assert result["cases"] == 3
    assert result["accepted"] == ["001-ok"]
    assert len(result["passes"]) == 3
    assert all(seconds > 0 for seconds in result["passes"])


def test_an_unreadable_file_fails_the_loop_instead_of_being_left_out(tmp_path: Path) -> None:
    # Dropping a case silently would make the per-case figure compare different sets.
    (tmp_path / "001-binary.dstack.yml").write_bytes(b"\xff\xfe type: task")

    done = subprocess.run(
        [sys.executable, str(LOOP), "taskstack", str(tmp_path), "1"],
        capture_output=True,
        text=True,
    )

    assert done.returncode != 0
    assert "UnicodeDecodeError" in done.stderr
    with pytest.raises(json.JSONDecodeError):
        json.loads(done.stdout)
