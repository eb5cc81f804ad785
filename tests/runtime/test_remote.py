"""The SSH transport driven by the shared job logic, on real test hosts with Docker."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from pydantic import SecretStr

from taskstack.errors import NodeLostError, RunError
from taskstack.runtime.job import (
    JobEvent,
    LogLine,
    NodeStarted,
    PortsForwarded,
    run_job,
)
from taskstack.runtime.remote import REMOTE_ROOT, RemoteTransport
from taskstack.runtime.spec import JobSpec, Node, PortMapping, RegistryAuth
from taskstack.runtime.ssh import SSHPool
from taskstack.runtime.workdir import write_snapshot
from tests.testbed.busybox import IMAGE
from tests.testbed.hosts import (
    Testbed,
    TestHost,
    free_local_port,
    http_get_local,
    remove_lost_disks,
)

SECRET = "pa55 'word'\nline2"


def _spec(run_name: str, *commands: str, **fields) -> JobSpec:
    return JobSpec(run_name=run_name, image=IMAGE, commands=commands, **fields)


async def _run(spec: JobSpec, nodes: list[Node], *, snapshot: Path | None = None, **kwargs):
    events: list[JobEvent] = []
    async with SSHPool(deadline_seconds=10) as pool:
        transports = [
            RemoteTransport(node, pool=pool, run_name=spec.run_name, nodes=len(nodes), **kwargs)
            for node in nodes
        ]
        result = await run_job(spec, nodes, transports, events.append, snapshot=snapshot, grace=1)
    return result, events


def _lines(events: list[JobEvent], rank: int) -> list[str]:
    return [event.text for event in events if isinstance(event, LogLine) and event.rank == rank]


def test_two_nodes_run_the_task_with_env_snapshot_and_hostfile(
    test_hosts: list[TestHost], tmp_path: Path
):
    source = tmp_path / "src"
    source.mkdir()
    (source / "hello.txt").write_text("from the working directory\n")
    snapshot = write_snapshot(source, tmp_path / "snapshot.tar").archive
    nodes = [host.node(rank=rank) for rank, host in enumerate(test_hosts)]
    spec = _spec(
        "two-nodes",
        "echo rank=$DSTACK_NODE_RANK of $DSTACK_NODES_NUM",
        'echo "$DSTACK_NODES_IPS"',
        "cat $DSTACK_MPI_HOSTFILE",
        "cat hello.txt",
        '[ "$TOKEN" = "$(printf "pa55 \'word\'\\nline2")" ] && echo token-intact',
        "echo to-stderr >&2",
        env={"TOKEN": SECRET},
    )
    uploads: list[tuple[int, int, int]] = []

    result, events = asyncio.run(
        _run(spec, nodes, snapshot=snapshot, on_upload=lambda *p: uploads.append(p))
    )

    ips = [host.address for host in test_hosts]
    for rank in (0, 1):
        assert _lines(events, rank) == [
            f"rank={rank} of 2",
            *ips,
            *(f"{ip} slots=1" for ip in ips),
            "from the working directory",
            "token-intact",
            "to-stderr",
        ]
    assert result.status == "done" and result.exit_codes == {0: 0, 1: 0}
    assert {rank for rank, _, _ in uploads} == {0, 1}
    assert all(sent == total for _, sent, total in uploads[-2:])
    _assert_nothing_left(test_hosts, "two-nodes")


def test_exit_code_comes_from_docker_wait(test_hosts: list[TestHost]):
    spec = _spec("exit-code", "echo before", "exit 7", "echo never")

    result, events = asyncio.run(_run(spec, [test_hosts[0].node()]))

    assert _lines(events, 0) == ["before"]
    assert result.status == "failed" and result.exit_codes == {0: 7}
    assert result.exit_status == 7
    _assert_nothing_left(test_hosts[:1], "exit-code")


def test_every_line_of_a_large_log_arrives_in_order(test_hosts: list[TestHost]):
    # `docker logs --follow` alone drops the tail of a log it lags behind (Docker 20.10).
    spec = _spec("big-log", "seq 1 300000", "printf no-line-break")

    result, events = asyncio.run(_run(spec, [test_hosts[0].node()]))

    lines = _lines(events, 0)
    assert lines[:-1] == [str(number) for number in range(1, 300001)]
    assert lines[-1] == "no-line-break"
    assert result.status == "done"


def test_ports_are_forwarded_while_it_runs_and_cancel_removes_the_container(
    test_hosts: list[TestHost],
):
    local_port = free_local_port()
    spec = _spec(
        "serve",
        "echo served-by-rank-$DSTACK_NODE_RANK > /www/index.html",
        "exec httpd -f -p 8000 -h /www",
        ports=(PortMapping(local_port=local_port, container_port=8000),),
    )
    answers: list[str] = []

    async def scenario():
        forwarded = asyncio.Event()

        def on_event(event: JobEvent) -> None:
            if isinstance(event, PortsForwarded):
                forwarded.set()

        async with SSHPool(deadline_seconds=10) as pool:
            node = test_hosts[0].node()
            transport = RemoteTransport(node, pool=pool, run_name="serve", nodes=1)
            job = asyncio.create_task(run_job(spec, [node], [transport], on_event, grace=1))
            await forwarded.wait()
            answers.append(
                await asyncio.to_thread(http_get_local, f"http://127.0.0.1:{local_port}/")
            )
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job

    asyncio.run(scenario())

    assert answers == ["served-by-rank-0\n"]
    _assert_nothing_left(test_hosts[:1], "serve")


def test_a_container_that_cannot_start_is_a_run_error(test_hosts: list[TestHost]):
    spec = _spec("no-start", "ignored", entrypoint="/no/such/program")

    with pytest.raises(RunError, match="did not start on node 0: .*no/such/program"):
        asyncio.run(_run(spec, [test_hosts[0].node()]))

    _assert_nothing_left(test_hosts[:1], "no-start")


def test_registry_login_failure_is_a_run_error_without_the_password(test_hosts: list[TestHost]):
    # A registry on the node's own loopback: nothing answers there, so the login fails
    # without any traffic leaving the test host.
    auth = RegistryAuth(username="bot", password=SecretStr(SECRET))
    spec = JobSpec(
        run_name="login", image="localhost:5999/app:1", commands=("true",), registry_auth=auth
    )

    with pytest.raises(RunError, match="`docker login` as bot on node 0 failed") as failure:
        asyncio.run(_run(spec, [test_hosts[0].node()]))

    assert "pa55" not in str(failure.value)
    assert "\n" not in str(failure.value) and str(failure.value).endswith("check `registry_auth`")
    _assert_nothing_left(test_hosts[:1], "login")


def test_an_image_that_cannot_be_pulled_is_one_line_with_the_fix(test_hosts: list[TestHost]):
    # From a registry on the node's own loopback, where nothing answers.
    spec = JobSpec(run_name="nopull", image="localhost:5999/missing:1", commands=("true",))

    with pytest.raises(RunError, match="`docker create` of localhost:5999/missing:1") as failure:
        asyncio.run(_run(spec, [test_hosts[0].node()]))

    message = str(failure.value)
    assert "\n" not in message and "Unable to find image" not in message, message
    assert message.endswith("check `image` (and `registry_auth` for a private registry)")
    _assert_nothing_left(test_hosts[:1], "nopull")


def test_a_node_that_dies_mid_run_is_lost(testbed: Testbed):
    host = testbed.create_host()
    spec = _spec("doomed", "echo started", "sleep 60")

    async def scenario():
        def on_event(event: JobEvent) -> None:
            if isinstance(event, NodeStarted):
                # The kill runs off the event loop: it waits for processes to die.
                threading.Timer(0.5, testbed.kill, args=(host,)).start()

        async with SSHPool(deadline_seconds=10) as pool:
            node = host.node()
            transport = RemoteTransport(
                node, pool=pool, run_name="doomed", nodes=1, stop_connect_seconds=2
            )
            await run_job(spec, [node], [transport], on_event, grace=1)

    with pytest.raises(NodeLostError, match=f"node 0 \\({host.address}\\) was lost"):
        asyncio.run(scenario())

    testbed.remove_host(host)
    assert testbed.leftovers(host) == []
    remove_lost_disks("doomed")


def _assert_nothing_left(hosts: list[TestHost], run_name: str) -> None:
    for host in hosts:
        assert host.containers() == []
    # Test hosts share this machine's filesystem: every node's folder must be gone.
    assert not Path(REMOTE_ROOT, run_name).exists()
