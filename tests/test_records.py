from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taskstack import records
from taskstack.errors import RunError


def _record(name: str = "calm-owl-1", **fields) -> records.RunRecord:
    record = records.new_record(
        name=name, run_id="r1", backend="local", config_path="/t.yml", nodes_num=2
    )
    return record.model_copy(update=fields)


def test_record_is_written_before_the_run_starts() -> None:
    records.create_record(_record())

    stored = json.loads((records.run_dir("calm-owl-1") / "run.json").read_text())
    assert stored["status"] == "submitted" and stored["backend"] == "local"
    assert records.log_path("calm-owl-1").read_bytes() == b""


def test_an_active_name_is_refused() -> None:
    records.create_record(_record())

    with pytest.raises(RunError, match=r"run calm-owl-1 is still submitted .*dstack stop"):
        records.create_record(_record())


def test_a_finished_name_can_be_applied_again() -> None:
    first = records.create_record(_record())
    records.finish(first, status="done", exit_status=0)

    again = records.create_record(_record())

    assert records.load_record("calm-owl-1").created == again.created


def test_a_run_whose_apply_died_is_aborted() -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    records.create_record(_record(apply_pid=int(dead.stdout), apply_started=None))

    record = records.load_record("calm-owl-1")

    assert (record.status, record.active) == ("aborted", False)
    assert records.list_records(include_finished=False) == []
    assert [r.name for r in records.list_records(include_finished=True)] == ["calm-owl-1"]


def test_a_reused_pid_is_not_mistaken_for_the_apply() -> None:
    # Our own pid, but a start time that is not ours: another process took the pid.
    record = _record(apply_started=1.0)

    assert not records.apply_alive(record)
    assert records.apply_alive(_record())


def test_unknown_run_is_one_clear_error() -> None:
    with pytest.raises(RunError, match=r"^no run named nope; `dstack ps -a` lists the runs$"):
        records.load_record("nope")
