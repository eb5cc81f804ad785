"""Faults on the cloud in a box: `retry` and `max_duration` through Terraform against moto.

The fake-engine versions of these scenarios live in tests/test_apply_retry.py; here the
whole lifecycle is real (offers from a catalog, `terraform plan/apply/destroy` with the real
AWS provider against moto, the SSH runtime on network-namespace test hosts), and the faults
are injected where they happen in a cloud:

1. a node's machine dies mid-run (the test host's sshd, dockerd and container are killed):
   with `retry: {on_events: [interruption]}` the stack is destroyed and applied again, and
   the run completes on the new instance; without it the run ends `interrupted`;
2. EC2 has no capacity for the first offer: a proxy in front of moto answers `RunInstances`
   for t3.large with AWS's `InsufficientInstanceCapacity` (tests/testbed/moto_faults.py),
   and the run moves to t3.xlarge after destroying what the failed apply created;
3. `max_duration` passes while the task sleeps;
4. the task exits 1 under `retry: {on_events: [error]}` until `retry.duration` passes.

One stack per scenario, one node each. The test hosts stand in for the instances: when the
run reports its nodes (`NodesUp`, before anything connects), the observer starts a host
with sshd and Docker at each node's address, with the run's key authorized. The nodes of
these runs live in their own subnet (`SUBNET_CIDR`), so another pytest session's cloud
tests on this machine, whose hosts sit at moto's first addresses of 10.200.0.0/24, do not
collide with them. After each scenario nothing may be left: no instance or resource of the
run in moto, no stack, no container or run process on a host, no trace of a host.

A module-level tally of faults injected, runs completed after a retry and resources left
behind is printed when the module ends (run with `-s`), with each run's wall time.
"""

from __future__ import annotations

import base64
import contextlib
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taskstack import apply, records
from taskstack.apply import AttemptStarted, NodesUp, Previewed, StepStarted
from taskstack.compiler.plan import ClusterPlan
from taskstack.home import taskstack_home
from taskstack.provision import CloudProvisioner
from taskstack.runtime.job import JobStopping, LogLine
from taskstack.runtime.spec import Node
from taskstack.stacks.cloudinit import user_data
from taskstack.stacks.keys import keys_dir, run_key_pair
from tests.testbed.cloudbox import live_instances, run_processes, run_resources
from tests.testbed.hosts import Testbed, TestHost, remove_lost_disks
from tests.testbed.moto import MotoServer
from tests.testbed.moto_faults import CAPACITY_CODE, FaultyEndpoint, faulty_endpoint

pytestmark = pytest.mark.e2e

SUBNET_CIDR = "10.200.7.0/24"
# A killed host's SSH connection closes at once, so the loss is seen at once; what the grace
# (`nodes.lost_after`, a minute by default) still bounds is how long reconnecting to the dead
# node goes on, up to 15 s when its container is stopped.
LOST_AFTER = 5.0
# The AWS provider's `max_retries` for an emulator endpoint (taskstack/stacks/tfjson.py). The
# provider gives it to the SDK as its most attempts per call: measured here, a RunInstances
# refused with a 500 is sent 3 times in all, then the apply fails.
PROVIDER_MAX_RETRIES = 3

_TALLY: dict[str, Counter[str]] = {
    "faults injected": Counter(),
    "runs completed after a retry": Counter(),
    "resources left behind": Counter(),
}
_WALL: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def fault_tally() -> Iterator[None]:
    """Print the module's tally when its last scenario is done (the issue note quotes it)."""
    yield
    print("\n\nfault tally (tests/e2e/test_faults_cloud.py)")
    for name, counts in _TALLY.items():
        detail = ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items())) or "-"
        print(f"  {name}: {sum(counts.values())} ({detail})")
    print("  run wall times: " + ", ".join(f"{name} {s:.0f} s" for name, s in _WALL.items()))


@dataclass
class _Box:
    """One scenario's cloud: moto (asked directly, never through a fault proxy), the test
    hosts' factory, and the task's folder."""

    moto: MotoServer
    testbed: Testbed
    job: Path


@pytest.fixture
def box(
    aws_in_moto: MotoServer,
    terraform_cli: Path,
    testbed: Testbed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> _Box:
    monkeypatch.setenv("TASKSTACK_AWS_SUBNET_CIDR", SUBNET_CIDR)
    monkeypatch.setenv("TASKSTACK_NODE_LOST_AFTER", str(LOST_AFTER))
    job = tmp_path / "job"
    job.mkdir()
    return _Box(moto=aws_in_moto, testbed=testbed, job=job)


def _plan(box: _Box, name: str, body: str) -> apply.RunPlan:
    # At least 2 CPUs and 8 GB: both t3.large and t3.xlarge of the CPU catalog fit.
    head = (
        f"type: task\nname: {name}\nimage: localhost/busybox:latest\n"
        "resources: {cpu: 2.., memory: 8GB..}\n"
    )
    (box.job / ".dstack.yml").write_text(head + textwrap.dedent(body))
    return apply.plan_run(box.job / ".dstack.yml", cwd=box.job, environ={})


class _Observer:
    """Subscribes to a run's events: stands a test host at each node's address when the
    nodes are up, kills node 0's host after the line `kill_after` (first time only), and
    keeps what the assertions read."""

    def __init__(self, box: _Box, run: str, *, kill_after: str | None = None) -> None:
        self.box = box
        self.run = run
        self.kill_after = kill_after
        self.events: list[object] = []
        self.hosts: list[TestHost] = []
        """Every host made for the run, dead or alive; all removed at the end."""
        self.nodes_up: list[tuple[Node, ...]] = []
        self.killed: list[TestHost] = []
        self.killed_pids: list[int] = []
        self.containers_at_teardown: dict[str, list[str]] = {}
        self.left_between_attempts: list[tuple[str, list[str]]] = []
        self.user_data: list[tuple[str, str]] = []
        """Per node up: the first-boot script the instance got, and the run's own."""
        self.timeline: list[str] = []
        self._started = time.monotonic()

    def __call__(self, event: object) -> None:
        self.events.append(event)
        self._mark(event)
        if isinstance(event, NodesUp):
            self._stand_hosts(event.nodes)
        elif isinstance(event, LogLine) and event.text == self.kill_after and not self.killed:
            self._kill(self.host_at(self.nodes_up[-1][0].address))
        elif isinstance(event, AttemptStarted) and event.event != "error":
            # The attempt before was destroyed just now: nothing of it may be left in moto.
            self.left_between_attempts.append(
                (event.event, run_resources(self.box.moto, self.run))
            )
        elif isinstance(event, StepStarted) and event.step == "teardown" and not event.detail:
            # The run's final teardown: the job must have stopped its containers by now.
            self.containers_at_teardown = {h.address: h.containers() for h in self.live_hosts}

    @property
    def live_hosts(self) -> list[TestHost]:
        return [host for host in self.hosts if host not in self.killed]

    def host_at(self, address: str) -> TestHost:
        return next(host for host in self.live_hosts if host.address == address)

    def lines(self) -> list[str]:
        # A killed host's docker client may print its own error into the stream.
        texts = [e.text for e in self.events if isinstance(e, LogLine)]
        return [text for text in texts if not text.startswith("time=")]

    def attempts(self) -> list[tuple[int, str]]:
        return [(e.number, e.event) for e in self.events if isinstance(e, AttemptStarted)]

    def steps(self, step: str) -> int:
        return sum(1 for e in self.events if isinstance(e, StepStarted) and e.step == step)

    def _mark(self, event: object) -> None:
        """Keep when each phase began, for the wall times the scenario prints."""
        if isinstance(event, StepStarted):
            label = event.step
        elif isinstance(event, NodesUp):
            label = f"NodesUp({' '.join(node.address for node in event.nodes)})"
        elif isinstance(event, (AttemptStarted, JobStopping)):
            label = type(event).__name__
        else:
            return
        self.timeline.append(f"{label} {time.monotonic() - self._started:.0f}")

    def _stand_hosts(self, nodes: tuple[Node, ...]) -> None:
        self.nodes_up.append(nodes)
        self.user_data += [self._user_data(node) for node in nodes]
        key = run_key_pair(self.run).public_key  # a new attempt's preview made a new key
        for node in nodes:
            dead = [host for host in self.killed if host.address == node.address]
            for host in dead:
                # moto numbers a new subnet's addresses from its start again: the new
                # instance may stand where the dead one stood.
                self.box.testbed.remove_host(host)
            self.hosts.append(
                self.box.testbed.create_host(address=node.address, authorized_key=key)
            )

    def _user_data(self, node: Node) -> tuple[str, str]:
        """What moto's instance was given as user data, and what `stacks.cloudinit` writes
        for the plan the run froze at its preview."""
        answer = self.box.moto.client("ec2").describe_instance_attribute(
            InstanceId=node.instance_id, Attribute="userData"
        )
        given = base64.b64decode(answer["UserData"]["Value"]).decode()
        frozen = taskstack_home() / "terraform" / "runs" / self.run / "plan.json"
        return given, user_data(ClusterPlan.model_validate_json(frozen.read_text()))

    def _kill(self, host: TestHost) -> None:
        ids = host.docker("ps", "-q").split()
        if ids:
            pids = host.docker("inspect", "-f", "{{.State.Pid}}", *ids).split()
            self.killed_pids += [int(pid) for pid in pids if int(pid) > 0]
        self.box.testbed.kill(host)
        self.killed.append(host)
        _TALLY["faults injected"]["test host killed mid-run"] += 1


@dataclass
class _Scenario:
    """What a scenario leaves behind, gathered after its run; filled by `_scenario`."""

    leftovers: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _scenario(
    name: str, box: _Box, observer: _Observer, provisioner: CloudProvisioner
) -> Iterator[_Scenario]:
    """Time the run, then gather everything of it still alive and remove every host."""
    scenario = _Scenario()
    started = time.monotonic()
    try:
        yield scenario
        _WALL[name] = time.monotonic() - started
        print(f"\n{name}: {_WALL[name]:.0f} s; {', '.join(observer.timeline)}")
        scenario.leftovers += _left_in_cloud(box, observer.run, provisioner)
        scenario.leftovers += _left_on_hosts(observer)
    finally:
        hosts = list(observer.hosts)
        for host in hosts:
            if host in box.testbed.hosts:
                box.testbed.remove_host(host)
        if observer.killed:
            remove_lost_disks(observer.run)
    scenario.leftovers += [item for host in hosts for item in box.testbed.leftovers(host)]
    _TALLY["resources left behind"][name] += len(scenario.leftovers)


def _left_in_cloud(box: _Box, run: str, provisioner: CloudProvisioner) -> list[str]:
    found = [f"live instance {i}" for i in live_instances(box.moto)]
    found += run_resources(box.moto, run)
    found += [f"stack {stack}" for stack in provisioner.engine.list_stacks()]
    if (keys_dir() / run).exists():
        found.append(f"key of run {run}")
    if (records.run_dir(run) / "known_hosts").exists():
        found.append(f"pinned host keys of run {run}")
    return found


def _left_on_hosts(observer: _Observer) -> list[str]:
    found = []
    for host in observer.live_hosts:
        found += [f"container {name} on {host.address}" for name in host.containers()]
        found += [f"{line} on {host.address}" for line in run_processes(host, observer.run)]
    for host in observer.killed:
        found += [f"process {pid} on killed {host.address}" for pid in host.pids()]
    found += [f"killed container process {pid}" for pid in observer.killed_pids if _alive(pid)]
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie: PID 1 here does not reap orphans (TESTBED.md)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _count_retried(name: str, result: apply.RunResult) -> None:
    if result.status == "done" and result.attempts > 1:
        _TALLY["runs completed after a retry"][name] += 1


# Long enough that the kill lands while the first attempt runs, even on a loaded machine.
_SLEEPER = "commands: [echo started, sleep 6, echo finished]\n"


def test_a_killed_node_is_provisioned_again_and_the_run_completes(box: _Box) -> None:
    run = "fault-lost"
    plan = _plan(box, run, "retry: {on_events: [interruption], duration: 10m}\n" + _SLEEPER)
    provisioner = apply.provisioner_for(plan)
    observer = _Observer(box, run, kill_after="started")

    with _scenario("node killed, retried", box, observer, provisioner) as scenario:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)
    _count_retried("node killed", result)

    assert (result.status, result.exit_status, result.attempts) == ("done", 0, 2), result.reason
    assert observer.attempts() == [(2, "interruption")]
    assert observer.left_between_attempts == [("interruption", [])]
    assert (observer.steps("provision"), observer.steps("preview")) == (2, 2)
    first, second = observer.nodes_up
    assert observer.killed[0].address == first[0].address
    # A new instance; moto gives it the same address (its new subnet numbers from the start
    # again), where a new host key answers: the run forgot the old pin with the old stack.
    assert first[0].instance_id != second[0].instance_id
    assert observer.lines() == ["started", "started", "finished"]
    record = records.load_record(run)
    assert (record.status, record.attempt) == ("done", 2)
    assert [(n.address, n.instance_id) for n in record.nodes] == [
        (second[0].address, second[0].instance_id)
    ]
    assert observer.containers_at_teardown == {second[0].address: []}
    assert scenario.leftovers == []


def test_a_killed_node_without_retry_ends_interrupted_and_destroyed(box: _Box) -> None:
    run = "fault-lost-once"
    plan = _plan(box, run, _SLEEPER)
    provisioner = apply.provisioner_for(plan)
    observer = _Observer(box, run, kill_after="started")

    with _scenario("node killed, no retry", box, observer, provisioner) as scenario:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)

    assert (result.status, result.exit_status, result.attempts) == ("interrupted", 1, 1)
    assert f"node 0 ({observer.killed[0].address}) was lost" in result.reason
    assert observer.attempts() == []
    assert (observer.steps("provision"), len(observer.nodes_up)) == (1, 1)
    assert observer.lines() == ["started"]
    record = records.load_record(run)
    assert (record.status, record.exit_status, record.attempt) == ("interrupted", 1, 1)
    assert scenario.leftovers == []


@pytest.fixture
def capacity_refused(box: _Box, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyEndpoint]:
    """The run's AWS endpoint is a proxy that has no capacity for t3.large."""
    with faulty_endpoint(box.moto) as endpoint:
        endpoint.refuse_capacity("t3.large")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
        yield endpoint


def test_no_capacity_for_the_first_offer_moves_to_the_next(
    box: _Box, capacity_refused: FaultyEndpoint
) -> None:
    run = "fault-capacity"
    plan = _plan(box, run, "retry: {on_events: [no-capacity]}\ncommands: [echo on t3]\n")
    provisioner = apply.provisioner_for(plan)
    observer = _Observer(box, run)

    with _scenario("no capacity", box, observer, provisioner) as scenario:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)
    _TALLY["faults injected"]["RunInstances refused for capacity"] += sum(
        capacity_refused.refused.values()
    )
    _count_retried("no capacity", result)

    assert [offer.instance_type for offer in plan.offers] == ["t3.large", "t3.xlarge"]
    assert (result.status, result.exit_status, result.attempts) == ("done", 0, 2), result.reason
    assert capacity_refused.refused == {"t3.large": PROVIDER_MAX_RETRIES}
    assert capacity_refused.forwarded["RunInstances:t3.xlarge"] == 1
    assert capacity_refused.forwarded["RunInstances:t3.large"] == 0
    [(number, event, reason)] = [
        (e.number, e.event, e.reason) for e in observer.events if isinstance(e, AttemptStarted)
    ]
    assert (number, event) == (2, "no-capacity") and CAPACITY_CODE in reason
    # The failed apply had created the network, the security group and the key pair.
    assert observer.left_between_attempts == [("no-capacity", [])]
    previews = [e.preview.summary for e in observer.events if isinstance(e, Previewed)]
    assert [summary.split(" x ")[0] for summary in previews] == ["t3.large", "t3.xlarge"]
    [nodes] = observer.nodes_up
    described = box.moto.client("ec2").describe_instances(InstanceIds=[nodes[0].instance_id])
    assert described["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.xlarge"
    assert observer.lines() == ["on t3"]
    record = records.load_record(run)
    assert (record.status, record.attempt) == ("done", 2)
    assert scenario.leftovers == []


def test_max_duration_stops_the_containers_and_destroys_the_stack(box: _Box) -> None:
    run = "fault-timeout"
    # The shell exits on SIGTERM (`docker stop`) instead of waiting out the stop grace. One
    # command: the task's commands are joined by `&&`, which would take the trap along into
    # the background with `sleep`.
    body = """\
        max_duration: 5s
        commands:
          - echo started
          - trap 'echo stopping; exit 143' TERM; sleep 120 & wait
        """
    plan = _plan(box, run, body)
    provisioner = apply.provisioner_for(plan)
    observer = _Observer(box, run)

    with _scenario("max_duration", box, observer, provisioner) as scenario:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)
    _TALLY["faults injected"]["max_duration passed"] += 1

    assert (result.status, result.exit_status) == ("terminated", 1)
    assert result.reason == "max_duration of 5s passed"
    assert result.exit_codes == {0: 143}
    assert [e.kind for e in observer.events if isinstance(e, JobStopping)] == ["max_duration"]
    assert observer.lines() == ["started", "stopping"]
    [nodes] = observer.nodes_up
    assert observer.containers_at_teardown == {nodes[0].address: []}
    # The first-boot script (its watchdog armed by max_duration) holds shell `${...}`, which
    # Terraform reads as its own templates unless escaped: the instance must get it verbatim.
    [(given, written)] = observer.user_data
    assert given == written
    record = records.load_record(run)
    assert (record.status, record.exit_status) == ("terminated", 1)
    assert scenario.leftovers == []


def test_an_error_is_rerun_until_retry_duration_passes_then_failed(box: _Box) -> None:
    run = "fault-error"
    # `retry.duration` counts from the run's start, so `terraform apply` (20-40 s here) uses
    # part of it; 45 s leaves room for reruns (after 1, 2, 4 s...) even on a busy machine.
    body = "retry: {on_events: [error], duration: 45s}\ncommands: [echo attempt, exit 1]\n"
    plan = _plan(box, run, body)
    provisioner = apply.provisioner_for(plan)
    observer = _Observer(box, run)

    with _scenario("error, retried", box, observer, provisioner) as scenario:
        result = apply.execute_run(plan, on_event=observer, provisioner=provisioner)
    _TALLY["faults injected"]["task exited 1"] += result.attempts

    assert (result.status, result.exit_status) == ("failed", 1)
    assert result.reason == "node 0 exited with 1; retry.duration of 45s passed"
    attempts = result.attempts
    assert attempts >= 2
    assert observer.attempts() == [(number, "error") for number in range(2, attempts + 1)]
    assert observer.lines() == ["attempt"] * attempts
    # Reruns use the same nodes: one stack, applied once.
    assert (observer.steps("provision"), len(observer.nodes_up)) == (1, 1)
    record = records.load_record(run)
    assert (record.status, record.attempt, record.exit_status) == ("failed", attempts, 1)
    assert scenario.leftovers == []
