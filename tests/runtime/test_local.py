"""The local transport with `run_job`: real processes, real process groups, real kills."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import hashlib
import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from taskstack.runtime.job import JobEvent, JobStopping, LogLine, NodeStarted, run_job
from taskstack.runtime.local import (
    PIP_LOCK,
    LocalTransport,
    create_run_venv,
    marked_processes,
    node_marker,
)
from taskstack.runtime.spec import JobSpec, Node


def _nodes(count: int) -> list[Node]:
    return [Node(rank=rank, address="127.0.0.1", private_ip="127.0.0.1") for rank in range(count)]


def _run(tmp_path: Path, spec: JobSpec, *, nodes: int = 1, venv: Path | None = None, grace=2.0):
    events: list[JobEvent] = []
    cluster = _nodes(nodes)
    transports = [
        LocalTransport(
            node,
            node_dir=tmp_path / f"node{node.rank}",
            venv_dir=venv,
            marker=node_marker(spec.run_name, "test", node.rank),
        )
        for node in cluster
    ]
    result = asyncio.run(run_job(spec, cluster, transports, events.append, grace=grace))
    return result, events


def _lines(events: list[JobEvent], rank: int) -> list[str]:
    return [event.text for event in events if isinstance(event, LogLine) and event.rank == rank]


def _spec(*commands: str, **fields) -> JobSpec:
    return JobSpec(run_name=f"t{os.getpid()}", image=None, commands=commands, **fields)


def test_every_node_gets_its_rank_and_the_task_env(tmp_path: Path) -> None:
    spec = _spec('echo "$DSTACK_NODE_RANK/$DSTACK_NODES_NUM $GREETING"', env={"GREETING": "hi"})

    result, events = _run(tmp_path, spec, nodes=2)

    assert result.status == "done" and result.exit_status == 0
    assert _lines(events, 0) == ["0/2 hi"]
    assert _lines(events, 1) == ["1/2 hi"]


def test_commands_stop_at_the_first_failure(tmp_path: Path) -> None:
    result, events = _run(tmp_path, _spec("echo one", "exit 7", "echo never"))

    assert (result.status, result.exit_status, result.exit_codes) == ("failed", 7, {0: 7})
    assert _lines(events, 0) == ["one"]


def test_a_failed_node_stops_the_others(tmp_path: Path) -> None:
    spec = _spec('if [ "$DSTACK_NODE_RANK" = 1 ]; then exit 2; fi; sleep 30')
    started = time.monotonic()

    result, events = _run(tmp_path, spec, nodes=2)

    # Node 0 was stopped because of node 1 (killed by a signal): the job exits with node 1's code.
    assert (result.status, result.exit_status, result.exit_codes[1]) == ("failed", 2, 2)
    assert result.exit_codes[0] != 0
    assert time.monotonic() - started < 10
    assert any(isinstance(event, JobStopping) and event.kind == "failure" for event in events)


def test_max_duration_terminates_the_job(tmp_path: Path) -> None:
    started = time.monotonic()

    result, events = _run(tmp_path, _spec("echo begin", "sleep 30", max_duration=1))

    assert result.status == "terminated" and result.exit_status == 1
    assert 1 <= time.monotonic() - started < 10
    assert "max_duration" in result.reason


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    # A background child in the group, a daemon in its own session, and a shell deaf to TERM.
    spec = _spec("(sleep 101 &); setsid sleep 102 & trap '' TERM; sleep 103", max_duration=1)

    result, events = _run(tmp_path, spec, grace=0.5)

    assert result.status == "terminated"
    assert marked_processes(node_marker(spec.run_name, "test", 0)) == []
    pgid = next(event.pid for event in events if isinstance(event, NodeStarted))
    assert pgid is not None and live_group_members(pgid) == []


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (init reaps those in its own time)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_each_node_works_in_its_own_copy(tmp_path: Path) -> None:
    spec = _spec("pwd", "echo $DSTACK_NODE_RANK > mine.txt")

    result, events = _run(tmp_path, spec, nodes=2)

    assert result.status == "done"
    assert _lines(events, 0) == [str(tmp_path / "node0" / "workdir")]
    assert (tmp_path / "node1" / "workdir" / "mine.txt").read_text() == "1\n"


def test_long_lines_and_a_missing_newline_survive(tmp_path: Path) -> None:
    spec = _spec("python3 -c \"import sys; sys.stdout.write('x' * 200000 + '\\n' + 'tail')\"")

    result, events = _run(tmp_path, spec)

    assert result.status == "done"
    assert _lines(events, 0) == ["x" * 200000, "tail"]


def test_pip_in_a_task_installs_into_the_run_venv_only(tmp_path: Path) -> None:
    wheel = _tiny_wheel(tmp_path)
    venv = create_run_venv(tmp_path / "venv")
    spec = _spec(
        f"pip install --no-index --no-deps -q {wheel}",
        "python -c 'import tinytaskpkg; print(tinytaskpkg.__file__)'",
    )

    result, events = _run(tmp_path, spec, venv=venv)

    assert result.status == "done", _lines(events, 0)
    assert _lines(events, 0)[-1].startswith(str(tmp_path / "venv"))
    # The Python that runs taskstack does not see the package.
    check = subprocess.run(["python3", "-c", "import tinytaskpkg"], capture_output=True)
    assert check.returncode != 0


def _tiny_wheel(folder: Path) -> Path:
    """A real, minimal wheel built by hand: the test needs no network and no build backend."""
    files = {
        "tinytaskpkg/__init__.py": b"VALUE = 1\n",
        "tinytaskpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinytaskpkg\n"
        b"Version: 1.0\n",
        "tinytaskpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinytaskpkg-1.0.dist-info/RECORD,,")
    path = folder / "tinytaskpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("tinytaskpkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_the_nodes_pip_commands_take_turns_in_the_shared_venv(tmp_path: Path) -> None:
    venv = create_run_venv(tmp_path / "venv")
    with open(venv / PIP_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another node's `pip install` is running
        waiting = subprocess.Popen(
            [str(venv / "bin" / "pip"), "--version"], stdout=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=2)
    output, _ = waiting.communicate(timeout=60)

    assert waiting.returncode == 0
    assert output.startswith("pip ")
