"""The local backend's Docker path, against a real Docker engine.

No engine answers in this machine's root namespace, so the tests point the local `docker`
client (`DOCKER_HOST`) at the engine of a testbed host: a real dockerd in a network
namespace that shares this filesystem, which is all the local backend needs of an engine.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from taskstack.runtime.job import JobEvent, LogLine, run_job
from taskstack.runtime.localdocker import LocalDockerTransport
from taskstack.runtime.spec import JobSpec, Node
from tests.testbed.busybox import IMAGE


@pytest.fixture
def engine(test_hosts, monkeypatch: pytest.MonkeyPatch):
    host = test_hosts[0]
    monkeypatch.setenv("DOCKER_HOST", f"unix://{host.docker_socket}")
    return host


def _run(tmp_path: Path, spec: JobSpec, *, nodes: int = 1, snapshot: Path | None = None):
    cluster = [Node(rank=r, address="127.0.0.1", private_ip="127.0.0.1") for r in range(nodes)]
    transports = [
        LocalDockerTransport(node, node_dir=tmp_path / str(node.rank), nodes=nodes, marker="m")
        for node in cluster
    ]
    events: list[JobEvent] = []
    result = asyncio.run(
        run_job(spec, cluster, transports, events.append, snapshot=snapshot, grace=1)
    )
    return result, events


def test_a_container_runs_the_task_with_its_variables_and_files(engine, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "data.txt").write_text("from the working directory\n")
    subprocess.run(["tar", "-cf", str(tmp_path / "s.tar"), "-C", str(source), "."], check=True)
    spec = JobSpec(
        run_name="dockerized-1",
        image=IMAGE,
        commands=(
            "cat data.txt",
            'echo "rank $DSTACK_NODE_RANK key=$KEY"',
            "cat $DSTACK_MPI_HOSTFILE",
        ),
        env={"KEY": "v1"},
    )

    result, events = _run(tmp_path / "nodes", spec, snapshot=tmp_path / "s.tar")

    lines = [event.text for event in events if isinstance(event, LogLine)]
    assert result.status == "done", lines
    assert lines == ["from the working directory", "rank 0 key=v1", "127.0.0.1 slots=1"]
    assert engine.containers() == []


def test_the_container_exit_code_is_the_node_exit_code(engine, tmp_path: Path) -> None:
    spec = JobSpec(run_name="dockerized-2", image=IMAGE, commands=("echo a", "exit 6", "echo b"))

    result, events = _run(tmp_path, spec)

    assert (result.status, result.exit_codes) == ("failed", {0: 6})
    assert [event.text for event in events if isinstance(event, LogLine)] == ["a"]
    assert engine.containers() == []


def test_max_duration_stops_and_removes_the_containers(engine, tmp_path: Path) -> None:
    spec = JobSpec(run_name="dockerized-3", image=IMAGE, commands=("sleep 600",), max_duration=1)

    result, _ = _run(tmp_path, spec, nodes=2)

    assert result.status == "terminated"
    assert engine.containers() == []


def test_apply_with_image_runs_every_node_in_a_container(engine, tmp_path: Path) -> None:
    from taskstack import apply, records

    path = tmp_path / ".dstack.yml"
    path.write_text(
        f"type: task\nname: boxed-1\nimage: {IMAGE}\nnodes: 2\n"
        "commands: ['echo rank $DSTACK_NODE_RANK of $DSTACK_NODES_NUM in $(pwd)']\n"
    )
    plan = apply.plan_run(path, cwd=tmp_path)

    result = apply.execute_run(plan, on_event=lambda event: None)

    assert (result.status, result.exit_status) == ("done", 0)
    assert sorted(records.log_path("boxed-1").read_text().splitlines()) == [
        "[0] rank 0 of 2 in /workflow",
        "[1] rank 1 of 2 in /workflow",
    ]
    assert engine.containers() == []
