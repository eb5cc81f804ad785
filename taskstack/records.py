"""Run records: what `dstack ps`, `dstack logs` and `dstack stop` know about runs.

Each run has a folder `runs/NAME/` under the state folder holding `run.json` (the record)
and `logs.txt` (every node's output). The record is written before anything of the run
starts, so a run that crashes half-way still leaves a trail to its processes. Env values
never reach a record: they may be secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from taskstack.errors import RunError
from taskstack.home import ensure_home, runs_dir

RunStatus = Literal[
    "submitted",
    "provisioning",
    "running",
    "done",
    "failed",
    "terminated",
    "aborted",
    "interrupted",
]
"""`terminated`: stopped by `dstack stop` or `max_duration`; `interrupted`: Ctrl+C on the
apply; `aborted`: the apply process vanished (found dead by `dstack ps`)."""

ACTIVE: frozenset[str] = frozenset({"submitted", "provisioning", "running"})

RECORD_FILE = "run.json"
LOG_FILE = "logs.txt"


log = logging.getLogger(__name__)


class NodeRecord(BaseModel):
    """One node of a run: its rank, where it is, and its process group on this machine."""

    model_config = ConfigDict(extra="forbid")

    rank: int
    address: str
    pgid: int | None = None
    instance_id: str | None = None
    exit_code: int | None = None


class RunRecord(BaseModel):
    """The record of one run, as `runs/NAME/run.json` holds it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    run_id: str
    """Unique per apply: two runs of the same name (one after the other) differ in it."""
    backend: str
    status: RunStatus = "submitted"
    reason: str = ""
    created: str
    finished: str | None = None
    config_path: str
    nodes_num: int
    apply_pid: int
    apply_started: float | None = None
    """Start time of the apply process (Linux clock ticks); tells a reused pid apart."""
    nodes: list[NodeRecord] = []
    exit_status: int | None = None
    engine: str | None = None
    """The IaC engine of a cloud run; None on the local backend."""
    stack: str | None = None
    """The run's stack in that engine's state backend; None once it is destroyed."""
    attempt: int = 1
    """The attempt running now, or the last one: `retry` starts over with the next number."""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def run_dir(name: str) -> Path:
    """The folder of run `name`."""
    return runs_dir() / name


def log_path(name: str) -> Path:
    """The log file of run `name`."""
    return run_dir(name) / LOG_FILE


def new_record(
    *,
    name: str,
    run_id: str,
    backend: str,
    config_path: str,
    nodes_num: int,
    engine: str | None = None,
    stack: str | None = None,
) -> RunRecord:
    """A fresh `submitted` record owned by this process; `create_record` stores it."""
    return RunRecord(
        name=name,
        run_id=run_id,
        backend=backend,
        created=_now(),
        config_path=config_path,
        nodes_num=nodes_num,
        apply_pid=os.getpid(),
        apply_started=_process_start(os.getpid()),
        engine=engine,
        stack=stack,
    )


def create_record(record: RunRecord) -> RunRecord:
    """Store a new run's record and empty its log, refusing a name whose run is active.

    Raises:
        RunError: a run with the same name is still active.
    """
    folder = ensure_home("runs", record.name)
    with _locked(folder):
        existing = _read(folder / RECORD_FILE)
        if existing is not None and refresh(existing).active:
            raise RunError(
                f"run {record.name} is still {existing.status} (pid {existing.apply_pid}); "
                f"stop it with `dstack stop {record.name}` or pick another `--name`"
            )
        (folder / LOG_FILE).write_bytes(b"")
        save_record(record)
    return record


def remove_run(name: str) -> None:
    """Forget run `name` entirely: its record and log (a run that never started)."""
    import shutil

    shutil.rmtree(run_dir(name), ignore_errors=True)


def save_record(record: RunRecord) -> None:
    """Write the record atomically: a reader never sees half a file."""
    folder = run_dir(record.name)
    scratch = folder / f".{RECORD_FILE}.{os.getpid()}"
    scratch.write_text(record.model_dump_json(indent=2) + "\n")
    scratch.replace(folder / RECORD_FILE)


def load_record(name: str) -> RunRecord:
    """The current record of run `name`, with a dead run marked as such.

    Raises:
        RunError: there is no such run.
    """
    record = _read(run_dir(name) / RECORD_FILE)
    if record is None:
        raise RunError(f"no run named {name}; `dstack ps -a` lists the runs")
    return refresh(record)


def list_records(*, include_finished: bool) -> list[RunRecord]:
    """Runs, newest first; only active ones unless `include_finished`."""
    folder = runs_dir()
    records = []
    for path in folder.glob(f"*/{RECORD_FILE}") if folder.is_dir() else ():
        try:
            record = _read(path)
        except RunError as exc:
            # One damaged record must not hide every other run.
            log.warning("%s", exc)
            continue
        if record is None:
            continue
        record = refresh(record)
        if include_finished or record.active:
            records.append(record)
    return sorted(records, key=lambda record: record.created, reverse=True)


def refresh(record: RunRecord) -> RunRecord:
    """Mark an active run whose apply process is gone as `aborted` (and store that)."""
    if not record.active or apply_alive(record):
        return record
    dead = record.model_copy(
        update={"status": "aborted", "reason": "the apply process is gone", "finished": _now()}
    )
    with contextlib.suppress(OSError):
        save_record(dead)
    return dead


def apply_alive(record: RunRecord) -> bool:
    """Whether the process that applied the run still runs (and is the same process)."""
    try:
        os.kill(record.apply_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    if _process_state(record.apply_pid) == "Z":
        return False  # exited; its parent has not reaped it yet
    started = _process_start(record.apply_pid)
    return record.apply_started is None or started is None or started == record.apply_started


def finish(
    record: RunRecord, *, status: RunStatus, reason: str = "", exit_status: int
) -> RunRecord:
    """The record of a run that ended, stored."""
    done = record.model_copy(
        update={
            "status": status,
            "reason": reason,
            "finished": _now(),
            "exit_status": exit_status,
        }
    )
    save_record(done)
    return done


def _read(path: Path) -> RunRecord | None:
    try:
        return RunRecord.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ValidationError) as exc:
        raise RunError(
            f"run record {path} is unreadable ({exc.__class__.__name__}); remove it"
        ) from exc


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the run folder's lock: two applies of one name cannot both pass the check."""
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _process_start(pid: int) -> float | None:
    """A process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name before it may hold spaces and parentheses.
    return float(stat.rsplit(")", 1)[1].split()[19])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def age_seconds(record: RunRecord) -> float:
    """Seconds since the run was created."""
    created = datetime.fromisoformat(record.created).timestamp()
    return max(time.time() - created, 0.0)
