"""The cloud lifecycle of `execute_run` with an engine that needs no IaC tool.

`FakeEngine` (tests/testbed/fake_engine.py) keeps stacks as files and launches its nodes on
the session's test hosts, so everything after `up` is the real runtime over SSH. The tests
pin the order of preview, up and destroy on success, failure, decline and Ctrl+C, and that
nothing is left: no stack, no key, no container.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taskstack import apply, records
from taskstack.apply import NodesUp, Previewed
from taskstack.errors import ConfigError, NoCapacityError, RunError
from taskstack.provision import CloudProvisioner, MachineImage, wait_for_docker
from taskstack.runtime.job import LogLine
from taskstack.runtime.ssh import SSHPool
from taskstack.settings import load_settings
from taskstack.stacks.keys import keys_dir
from tests.testbed.fake_engine import FakeEngine
from tests.testbed.hosts import Testbed, TestHost


@dataclass
class _Machine:
    """A machine of the fake cloud that nothing connects to (the run stops before)."""

    address: str = "127.0.0.1"
    keys: list[str] = field(default_factory=list)

    def authorize(self, public_key: str) -> None:
        self.keys.append(public_key)


def _plan(job: Path, commands: list[str], *, nodes: int = 2) -> apply.RunPlan:
    text = textwrap.dedent(
        f"""\
        type: task
        name: lifecycle
        nodes: {nodes}
        image: localhost/busybox:latest
        resources: {{cpu: 2, memory: 8GB}}
        commands: {commands!r}
        """
    )
    (job / ".dstack.yml").write_text(text)
    return apply.plan_run(job / ".dstack.yml", cwd=job, environ={})


def _provisioner(engine: FakeEngine) -> CloudProvisioner:
    return CloudProvisioner(
        load_settings(),
        backend="aws",
        engine=engine,
        image=MachineImage(image_id="ami-0fake", ssh_user="root"),
    )


def _nothing_left(engine: FakeEngine) -> None:
    assert engine.list_stacks() == []
    assert not (keys_dir() / "lifecycle").exists()
    assert not (records.run_dir("lifecycle") / "known_hosts").exists()


def test_plan_takes_the_cloud_offer_in_the_configured_region(aws: Path) -> None:
    plan = _plan(aws, ["true"])

    assert (plan.backend, plan.offer.region, plan.offer.instance_type) == (
        "aws",
        "eu-west-1",
        "t3.large",
    )


def test_python_tasks_get_the_base_image_on_clouds(aws: Path) -> None:
    (aws / ".dstack.yml").write_text("type: task\npython: '3.11'\nnvcc: true\ncommands: [nvcc]\n")

    plan = apply.plan_run(aws / ".dstack.yml", cwd=aws, environ={})

    assert plan.spec.image == "dstackai/base:0.14-devel-ubuntu24.04"
    assert plan.spec.shell == "bash"  # dstack runs the base image's commands in bash


def test_a_task_image_keeps_the_shell_it_names(aws: Path) -> None:
    (aws / ".dstack.yml").write_text("type: task\nimage: alpine:3\ncommands: ['true']\n")
    plain = apply.plan_run(aws / ".dstack.yml", cwd=aws, environ={})
    (aws / ".dstack.yml").write_text(
        "type: task\nimage: alpine:3\nshell: bash\ncommands: ['true']\n"
    )
    named = apply.plan_run(aws / ".dstack.yml", cwd=aws, environ={})

    assert (plain.spec.shell, named.spec.shell) == (None, "bash")  # None: the image's sh


def test_success_previews_ups_runs_and_destroys(aws: Path, test_hosts: list[TestHost]) -> None:
    engine = FakeEngine(hosts=test_hosts)
    plan = _plan(aws, ['echo "rank $DSTACK_NODE_RANK"'])
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append, provisioner=_provisioner(engine))

    assert engine.calls == ["preview", "up", "destroy"]
    assert (result.status, result.exit_status) == ("done", 0)
    lines = {(e.rank, e.text.strip()) for e in events if isinstance(e, LogLine)}
    assert lines == {(0, "rank 0"), (1, "rank 1")}
    kinds = [type(e).__name__ for e in events if isinstance(e, Previewed | NodesUp)]
    assert kinds == ["Previewed", "NodesUp"]
    record = records.load_record("lifecycle")
    assert (record.status, record.engine, record.stack) == ("done", "terraform", "lifecycle")
    assert [node.instance_id for node in record.nodes] == ["i-fake0", "i-fake1"]
    assert [host.containers() for host in test_hosts] == [[], []]
    _nothing_left(engine)


def test_a_failing_task_still_destroys_the_stack(aws: Path, test_hosts: list[TestHost]) -> None:
    engine = FakeEngine(hosts=test_hosts)
    plan = _plan(aws, ["exit 3"], nodes=1)

    result = apply.execute_run(plan, on_event=lambda event: None, provisioner=_provisioner(engine))

    assert engine.calls == ["preview", "up", "destroy"]
    assert (result.status, result.exit_status) == ("failed", 3)
    assert records.load_record("lifecycle").status == "failed"
    _nothing_left(engine)


def test_a_failing_up_destroys_what_it_created_and_raises(aws: Path) -> None:
    engine = FakeEngine(hosts=[_Machine(), _Machine()], fail_up=NoCapacityError("no t3.large"))
    plan = _plan(aws, ["true"])

    with pytest.raises(NoCapacityError, match="no t3.large"):
        apply.execute_run(plan, on_event=lambda event: None, provisioner=_provisioner(engine))

    assert engine.calls == ["preview", "up", "destroy"]
    record = records.load_record("lifecycle")
    assert (record.status, record.reason) == ("failed", "no t3.large")
    _nothing_left(engine)


def test_declining_the_preview_removes_it_and_the_record(aws: Path) -> None:
    engine = FakeEngine()
    plan = _plan(aws, ["true"])
    shown: list[apply.Preview] = []

    def decline(preview: apply.Preview) -> bool:
        shown.append(preview)
        assert engine.list_stacks() == ["lifecycle"]  # the preview's workspace exists now
        return False

    result = apply.execute_run(
        plan, on_event=lambda event: None, provisioner=_provisioner(engine), confirm=decline
    )

    assert engine.calls == ["preview", "destroy"]
    assert (result.status, result.exit_status) == ("declined", 1)
    assert shown[0].stack is not None and shown[0].stack.counts == {
        "fake_network": 1,
        "fake_instance": 2,
    }
    assert "t3.large x 2 in eu-west-1 via terraform" in shown[0].summary
    assert not records.run_dir("lifecycle").exists()
    _nothing_left(engine)


def test_ctrl_c_at_the_prompt_removes_the_preview(aws: Path) -> None:
    engine = FakeEngine()
    plan = _plan(aws, ["true"])

    events: list[object] = []

    def interrupted(preview: apply.Preview) -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        apply.execute_run(
            plan, on_event=events.append, provisioner=_provisioner(engine), confirm=interrupted
        )

    assert engine.calls == ["preview", "destroy"]
    assert records.load_record("lifecycle").status == "interrupted"
    ended = events[-1]
    assert isinstance(ended, apply.RunFinished)
    assert (ended.result.status, ended.result.exit_status) == ("interrupted", 130)
    _nothing_left(engine)


def test_ctrl_c_during_up_destroys_the_stack_and_exits_130(aws: Path) -> None:
    machines = [_Machine(), _Machine()]
    engine = FakeEngine(hosts=machines, interrupt_up=True)
    plan = _plan(aws, ["true"])

    result = apply.execute_run(plan, on_event=lambda event: None, provisioner=_provisioner(engine))

    assert engine.calls == ["preview", "up", "destroy"]
    assert (result.status, result.exit_status) == ("interrupted", 130)
    assert all(len(machine.keys) == 1 for machine in machines)  # up did reach the machines
    assert records.load_record("lifecycle").status == "interrupted"
    _nothing_left(engine)


def test_a_run_name_clouds_cannot_use_is_refused_before_anything_starts(aws: Path) -> None:
    (aws / ".dstack.yml").write_text("type: task\nname: My_Run\nimage: busybox\ncommands: [ls]\n")

    # Refused where the config loads, or where the cloud plan names its resources.
    with pytest.raises(ConfigError, match=r"My_Run\W* is not (usable|a run name)"):
        apply.plan_run(aws / ".dstack.yml", cwd=aws, environ={})

    assert not records.runs_dir().exists() or not any(records.runs_dir().iterdir())
    assert not keys_dir().exists()


def test_a_node_whose_docker_never_answers_is_a_clear_error(testbed: Testbed) -> None:
    host = testbed.create_host(busybox=False)
    try:
        # A node still in its first boot: sshd answers, Docker does not (yet).
        dockerd = host.processes.pop("dockerd")
        dockerd.terminate()
        dockerd.wait(timeout=30)

        async def wait() -> None:
            async with SSHPool() as pool:
                await wait_for_docker(pool, host.node(), deadline_seconds=2)

        started = time.monotonic()
        with pytest.raises(RunError, match=rf"Docker did not answer on node 0 \({host.address}\)"):
            asyncio.run(wait())
        waited = time.monotonic() - started
    finally:
        testbed.remove_host(host)

    assert 1 < waited < 15  # it retried until the deadline, then gave up


def test_a_large_working_directory_reports_its_upload_to_every_node(
    aws: Path, test_hosts: list[TestHost]
) -> None:
    # Random bytes: the SSH upload compresses on the wire, and this must stay large there.
    (aws / "weights.bin").write_bytes(os.urandom(9 << 20))
    engine = FakeEngine(hosts=test_hosts)
    plan = _plan(aws, ["wc -c < weights.bin"])
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append, provisioner=_provisioner(engine))

    assert (result.status, result.exit_status) == ("done", 0)
    uploads = [e for e in events if isinstance(e, apply.UploadProgress)]
    assert {e.rank for e in uploads} == {0, 1}
    for rank in (0, 1):
        last = [e for e in uploads if e.rank == rank][-1]
        assert last.sent == last.total > 9 << 20
    lines = {e.text.strip() for e in events if isinstance(e, LogLine)}
    assert lines == {str(9 << 20)}
    _nothing_left(engine)


def test_the_nodes_settings_reach_the_provisioner_and_the_stack(
    aws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_NODE_LOST_AFTER", "7")
    monkeypatch.setenv("TASKSTACK_HEARTBEAT_GRACE", "900")
    engine = FakeEngine()
    provisioner = _provisioner(engine)

    provisioner.preview(_plan(aws, ["true"], nodes=1))

    assert provisioner.lost_after_seconds == 7
    assert engine._load("lifecycle")["plan"]["heartbeat_grace"] == 900
    engine.destroy("lifecycle")
