"""`retry` and `max_duration` in the run lifecycle, with faults injected for real.

Cloud runs use `FakeEngine` (stacks as files) whose nodes are network-namespace test hosts,
so everything after `up` is the real SSH runtime: a host killed mid-run is a node lost. The
`error` retries run on the local backend, where reruns are cheap. Every test ends by
checking that nothing of the run is left: no stack, no key, no container.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from taskstack import apply, records
from taskstack.apply import AttemptStarted
from taskstack.errors import NoCapacityError
from taskstack.provision import CloudProvisioner, MachineImage
from taskstack.runtime.job import JobStopping, LogLine
from taskstack.settings import load_settings
from taskstack.stacks.keys import keys_dir
from tests.testbed.fake_engine import FakeEngine
from tests.testbed.hosts import Testbed, TestHost

RUN = "retried"
LOST_AFTER = 3.0


def _plan(job: Path, body: str, *, image: bool = True) -> apply.RunPlan:
    text = f"type: task\nname: {RUN}\n"
    if image:
        # At least 2 CPUs and 8 GB: both t3.large and t3.xlarge fit.
        text += "image: localhost/busybox:latest\nresources: {cpu: 2.., memory: 8GB..}\n"
    (job / ".dstack.yml").write_text(text + textwrap.dedent(body))
    return apply.plan_run(job / ".dstack.yml", cwd=job, environ={})


def _provisioner(engine: FakeEngine) -> CloudProvisioner:
    return CloudProvisioner(
        load_settings(),
        backend="aws",
        engine=engine,
        image=MachineImage(image_id="ami-0fake", ssh_user="root"),
        lost_after_seconds=LOST_AFTER,
    )


def _nothing_left(engine: FakeEngine, hosts: list[TestHost]) -> None:
    assert engine.list_stacks() == []
    assert not (keys_dir() / RUN).exists()
    assert not (records.run_dir(RUN) / "known_hosts").exists()
    assert [host.containers() for host in hosts if "dockerd" in host.processes] == [
        [] for host in hosts if "dockerd" in host.processes
    ]


def _attempts(events: list[object]) -> list[tuple[int, str]]:
    return [(e.number, e.event) for e in events if isinstance(e, AttemptStarted)]


def test_no_capacity_moves_to_the_next_offer(aws: Path, test_hosts: list[TestHost]) -> None:
    engine = FakeEngine(hosts=test_hosts, no_capacity_for={"t3.large"})
    plan = _plan(aws, "retry: {on_events: [no-capacity]}\ncommands: [echo on $DSTACK_RUN_NAME]\n")
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append, provisioner=_provisioner(engine))

    assert (result.status, result.exit_status, result.attempts) == ("done", 0, 2)
    assert engine.instance_types == ["t3.large", "t3.xlarge"]
    assert engine.calls == ["preview", "up", "destroy", "preview", "up", "destroy"]
    assert _attempts(events) == [(2, "no-capacity")]
    assert [e.text for e in events if isinstance(e, LogLine)] == [f"on {RUN}"]
    record = records.load_record(RUN)
    assert (record.status, record.attempt) == ("done", 2)
    _nothing_left(engine, test_hosts)


def test_no_capacity_without_retry_fails_and_destroys(aws: Path) -> None:
    engine = FakeEngine(no_capacity_for={"t3.large"})
    plan = _plan(aws, "commands: ['true']\n")

    with pytest.raises(NoCapacityError, match="no capacity for t3.large"):
        apply.execute_run(plan, on_event=lambda event: None, provisioner=_provisioner(engine))

    assert engine.calls == ["preview", "up", "destroy"]
    assert records.load_record(RUN).status == "failed"
    _nothing_left(engine, [])


class _KillFirstNode:
    """Kills the host of the first attempt's node once its task has started (a lost node)."""

    def __init__(self, testbed: Testbed, hosts: list[TestHost]) -> None:
        self.testbed = testbed
        self.by_address = {host.address: host for host in hosts}
        self.killed: list[str] = []
        self.address = ""
        self.events: list[object] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, apply.NodesUp):
            self.address = event.nodes[0].address
        elif isinstance(event, LogLine) and event.text == "started" and not self.killed:
            self.testbed.kill(self.by_address[self.address])
            self.killed.append(self.address)


@pytest.fixture
def spare_hosts(testbed: Testbed) -> list[TestHost]:
    """Two fresh hosts for tests that kill one; removed afterwards."""
    hosts = [testbed.create_host(), testbed.create_host()]
    yield hosts
    for host in hosts:
        testbed.remove_host(host)


# Long enough that the kill lands while the first attempt runs, even on a loaded machine.
_SLEEPER = "commands: [echo started, sleep 8, echo finished]\n"


def test_a_lost_node_is_provisioned_again_and_the_run_completes(
    aws: Path, testbed: Testbed, spare_hosts: list[TestHost]
) -> None:
    engine = FakeEngine(hosts=spare_hosts)
    plan = _plan(aws, "retry: {on_events: [interruption], duration: 10m}\n" + _SLEEPER)
    observer = _KillFirstNode(testbed, spare_hosts)

    result = apply.execute_run(plan, on_event=observer, provisioner=_provisioner(engine))

    assert (result.status, result.exit_status, result.attempts) == ("done", 0, 2)
    assert observer.killed == [spare_hosts[0].address]
    assert engine.calls == ["preview", "up", "destroy", "preview", "up", "destroy"]
    assert _attempts(observer.events) == [(2, "interruption")]
    lines = [e.text for e in observer.events if isinstance(e, LogLine)]
    # The killed host's docker client may still print its own error into the log stream.
    task_lines = [line for line in lines if not line.startswith("time=")]
    assert task_lines == ["started", "started", "finished"]
    record = records.load_record(RUN)
    assert (record.status, record.attempt) == ("done", 2)
    assert [node.address for node in record.nodes] == [spare_hosts[1].address]
    _nothing_left(engine, spare_hosts)


def test_a_lost_node_without_retry_ends_interrupted_and_destroyed(
    aws: Path, testbed: Testbed, spare_hosts: list[TestHost]
) -> None:
    engine = FakeEngine(hosts=spare_hosts)
    plan = _plan(aws, _SLEEPER)
    observer = _KillFirstNode(testbed, spare_hosts)

    result = apply.execute_run(plan, on_event=observer, provisioner=_provisioner(engine))

    assert (result.status, result.exit_status, result.attempts) == ("interrupted", 1, 1)
    assert "node 0" in result.reason and "was lost" in result.reason
    assert engine.calls == ["preview", "up", "destroy"]
    assert records.load_record(RUN).status == "interrupted"
    _nothing_left(engine, spare_hosts)


def test_max_duration_stops_the_containers_and_destroys_the_stack(
    aws: Path, test_hosts: list[TestHost]
) -> None:
    engine = FakeEngine(hosts=test_hosts)
    plan = _plan(aws, "max_duration: 5s\ncommands: [echo started, sleep 120]\n")
    events: list[object] = []
    started = time.monotonic()

    result = apply.execute_run(plan, on_event=events.append, provisioner=_provisioner(engine))

    assert (result.status, result.exit_status) == ("terminated", 1)
    assert result.reason == "max_duration of 5s passed"
    assert time.monotonic() - started < 60
    assert [e.kind for e in events if isinstance(e, JobStopping)] == ["max_duration"]
    assert engine.calls == ["preview", "up", "destroy"]
    assert records.load_record(RUN).status == "terminated"
    _nothing_left(engine, test_hosts)


def test_an_error_is_rerun_until_retry_duration_passes_then_failed(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        "retry: {on_events: [error], duration: 4s}\ncommands: [echo attempt, exit 1]\n",
        image=False,
    )
    events: list[object] = []
    started = time.monotonic()

    result = apply.execute_run(plan, on_event=events.append)

    elapsed = time.monotonic() - started
    # Reruns after 1 s, then 2 s; the next backoff (4 s) would end past the 4 s window.
    assert (result.status, result.exit_status, result.attempts) == ("failed", 1, 3)
    assert result.reason == "node 0 exited with 1; retry.duration of 4s passed"
    assert _attempts(events) == [(2, "error"), (3, "error")]
    assert [e.text for e in events if isinstance(e, LogLine)] == ["attempt"] * 3
    assert 3 <= elapsed < 30
    record = records.load_record(RUN)
    assert (record.status, record.attempt, record.exit_status) == ("failed", 3, 1)


def test_an_error_rerun_that_succeeds_ends_done(tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    plan = _plan(
        tmp_path,
        f"retry: {{on_events: [error], duration: 1m}}\n"
        f"commands: ['if [ -e {flag} ]; then echo ok; else touch {flag}; exit 7; fi']\n",
        image=False,
    )
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append)

    assert (result.status, result.exit_status, result.attempts) == ("done", 0, 2)
    assert _attempts(events) == [(2, "error")]
    assert [e.text for e in events if isinstance(e, LogLine)] == ["ok"]


def test_an_error_is_not_rerun_when_retry_leaves_it_out(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "retry: {on_events: [interruption]}\ncommands: [exit 5]\n", image=False)
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append)

    assert (result.status, result.exit_status, result.attempts) == ("failed", 5, 1)
    assert result.reason == "node 0 exited with 5"
    assert _attempts(events) == []
