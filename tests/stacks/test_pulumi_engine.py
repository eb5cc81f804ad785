"""The Pulumi engine against a recording stand-in for the Pulumi CLI.

The Pulumi CLI cannot be installed on these machines, so the Automation API gets
`RecordingPulumi` through `LocalWorkspace(pulumi_command=...)`: the SDK's own code builds the
CLI calls, and the stand-in answers them as the CLI does, with the resources and outputs of
the real program run under the SDK's mocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import (
    ConcurrentUpdateError,
    EngineMissingError,
    NoCapacityError,
    StackError,
)
from taskstack.home import taskstack_home
from taskstack.settings import Settings, load_settings
from taskstack.stacks.engine import EngineEvent
from taskstack.stacks.pulumi_engine import PLAN_KEY, PulumiEngine
from tests.conftest import REPO_ROOT
from tests.stacks.interrupted_up import SIGINT_SEEN
from tests.testbed.plans import aws_plan
from tests.testbed.pulumi_cli import RecordingPulumi, read_processes, release, wait_until_held

SECRET_KEY = "s3cr3t-aws-key-never-in-args"
PASSPHRASE = "correct horse battery staple"


def _program_run(plan_json: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """What the CLI would see the inline program declare: the real program under mocks."""
    from taskstack.stacks.mocks import run_program
    from taskstack.stacks.programs import program_for

    plan = ClusterPlan.model_validate_json(plan_json)
    resources, outputs = run_program(program_for(plan), stack=plan.run_name)
    return [(resource.type, resource.name) for resource in resources], outputs


@pytest.fixture
def cli(tmp_path: Path) -> RecordingPulumi:
    return RecordingPulumi(
        resources=lambda plan_json: _program_run(plan_json)[0],
        outputs=lambda plan_json: _program_run(plan_json)[1],
        scratch=tmp_path / "pulumi-cli",
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    environ = {
        "TASKSTACK_BACKENDS": "aws",
        "AWS_ACCESS_KEY_ID": "AKIATEST",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "TASKSTACK_STATE_PASSPHRASE": PASSPHRASE,
    }
    return load_settings(path=tmp_path / "none.yml", environ=environ)


@pytest.fixture
def engine(settings: Settings, cli: RecordingPulumi) -> PulumiEngine:
    return PulumiEngine(settings, pulumi_command=cli)


def test_preview_creates_the_stack_stores_the_plan_and_lists_what_the_program_creates(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    plan = aws_plan("train", nodes=2)

    preview = engine.preview(plan)

    assert cli.verbs() == ["stack select", "stack init", "config set-all", "config set", "preview"]
    init = cli.calls[1].args
    assert init[init.index("--secrets-provider") + 1] == "passphrase"
    assert cli.stacks["train"].config["aws:region"] == "us-east-1"
    assert cli.stacks["train"].config[PLAN_KEY] == plan.model_dump_json()
    preview_args = cli.calls[-1].args
    assert preview_args[preview_args.index("--exec-kind") + 1] == "auto.inline"
    assert preview.counts["aws:ec2/instance:Instance"] == 2
    assert preview.counts["aws:ec2/vpc:Vpc"] == 1
    assert {r.name for r in preview.resources} >= {"train-0", "train-1", "train-sg"}
    assert all(r.action == "create" for r in preview.resources)
    assert preview.to_json()["counts"] == preview.counts


def test_the_workspace_uses_the_state_backend_and_keeps_secrets_out_of_arguments(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.preview(aws_plan("train"))

    project = (taskstack_home() / "pulumi" / "runs" / "train" / "Pulumi.yaml").read_text()
    assert f"file://{taskstack_home() / 'pulumi'}" in project
    assert all(call.env["PULUMI_CONFIG_PASSPHRASE"] == PASSPHRASE for call in cli.calls)
    assert all(call.env["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY for call in cli.calls)
    every_argument = " ".join(arg for call in cli.calls for arg in call.args)
    assert SECRET_KEY not in every_argument
    assert PASSPHRASE not in every_argument
    assert SECRET_KEY not in str(cli.stacks["train"].config)


def test_apply_brings_the_previewed_stack_up_and_returns_nodes_in_rank_order(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    plan = aws_plan("train", nodes=2)
    engine.preview(plan)
    events: list[EngineEvent] = []
    first_up_call = len(cli.calls)

    nodes = engine.up(plan, on_event=events.append)

    assert cli.verbs()[first_up_call:] == [
        "stack select",
        "config get",
        "up",
        "stack output",
        "stack output",
        "stack history",
    ]
    up = cli.calls[first_up_call + 2].args
    assert {"--yes", "--skip-preview", "--event-log"} <= set(up)
    assert [node.rank for node in nodes] == [0, 1]
    assert [node.address for node in nodes] == _public_ips(cli)
    assert all(node.user == "ubuntu" and node.instance_id for node in nodes)
    done = [e.resource_name for e in events if e.kind == "resource" and e.status == "done"]
    assert {"train-0", "train-1", "train-vpc"} <= set(done)
    assert events[-1].kind == "summary"


def test_up_refuses_a_plan_other_than_the_previewed_one(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.preview(aws_plan("train", instance_type="t3.micro"))

    with pytest.raises(StackError, match="plan of run train changed since its preview"):
        engine.up(aws_plan("train", instance_type="t3.large"))

    assert "up" not in cli.verbs()


def test_up_without_a_preview_creates_nothing(engine: PulumiEngine, cli: RecordingPulumi) -> None:
    with pytest.raises(StackError, match="run train was not previewed"):
        engine.up(aws_plan("train"))

    assert cli.verbs() == ["stack select"]
    assert not (taskstack_home() / "pulumi" / "runs" / "train").exists()


def test_abort_after_preview_removes_the_stack_without_creating_anything(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.preview(aws_plan("train"))
    first_abort_call = len(cli.calls)

    engine.destroy("train")

    verbs = cli.verbs()[first_abort_call:]
    assert verbs == ["stack select", "destroy", "stack history", "stack rm"]
    assert "up" not in cli.verbs()
    assert "train" not in cli.stacks
    assert not (taskstack_home() / "pulumi" / "runs" / "train").exists()


def test_destroy_after_up_deletes_the_resources_and_the_stack(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    plan = aws_plan("train", nodes=2)
    engine.preview(plan)
    engine.up(plan)
    events: list[EngineEvent] = []

    engine.destroy("train", on_event=events.append)

    destroy = next(call.args for call in cli.calls if call.verb == "destroy")
    assert {"--skip-preview", "--yes"} <= set(destroy)
    assert destroy[destroy.index("--stack") + 1] == "train"
    deleted = {e.resource_name for e in events if e.action == "delete" and e.status == "done"}
    assert {"train-0", "train-1"} <= deleted
    assert engine.list_stacks() == []


def test_destroying_a_stack_that_is_already_gone_succeeds(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.destroy("never-made")

    assert cli.verbs() == ["stack select"]


def test_list_stacks_finds_every_run_in_the_backend(engine: PulumiEngine) -> None:
    engine.preview(aws_plan("beta", nodes=1))
    engine.preview(aws_plan("alpha", nodes=1))

    assert engine.list_stacks() == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("stderr", "error", "message"),
    [
        (
            "error: [409] Conflict: Another update is currently in progress.",
            ConcurrentUpdateError,
            "run train is being changed by another apply",
        ),
        (
            "error: the stack is currently locked by 1 lock(s).",
            ConcurrentUpdateError,
            "run train is being changed by another apply",
        ),
        (
            "error: creating EC2 Instance: InsufficientInstanceCapacity: We currently do not "
            "have sufficient p5.48xlarge capacity in the Availability Zone you requested",
            NoCapacityError,
            r"no capacity \(InsufficientInstanceCapacity\)",
        ),
        (
            "error: googleapi: Error 503: The zone 'projects/p/zones/us-central1-a' does not "
            "have enough resources available. ZONE_RESOURCE_POOL_EXHAUSTED",
            NoCapacityError,
            "ZONE_RESOURCE_POOL_EXHAUSTED",
        ),
        (
            'error: Code="AllocationFailed" Message="Allocation failed."',
            NoCapacityError,
            "AllocationFailed",
        ),
        (
            "error: creating EC2 Instance: UnauthorizedOperation: not allowed",
            StackError,
            "pulumi up failed for run train: error: creating EC2 Instance: Unauthorized",
        ),
        (
            'error: Status=403 Code="AuthorizationFailed" Message="The client \'c\' does not '
            "have authorization to perform action 'Microsoft.Authorization/roleAssignments/"
            "write' over scope '/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/"
            "virtualMachines/train-0/providers/Microsoft.Authorization/roleAssignments/r'\"",
            StackError,
            "run train: the Azure principal may not create role assignments.*give it "
            "`Role Based Access Control Administrator`",
        ),
        (
            "error: creating service account: googleapi: Error 403: Permission "
            "'iam.serviceAccounts.create' denied on resource (or it may not exist)., forbidden",
            StackError,
            "run train: the GCP principal lacks `iam.serviceAccounts.create`.*give it "
            "`Service Account Admin` on the project",
        ),
        (
            'error: Error setting IAM policy for project "p": googleapi: Error 403: Policy '
            "update access denied. Permission 'resourcemanager.projects.setIamPolicy' denied",
            StackError,
            "lacks `resourcemanager.projects.setIamPolicy`.*`Project IAM Admin`",
        ),
    ],
)
def test_up_errors_are_mapped_where_they_enter(
    engine: PulumiEngine, cli: RecordingPulumi, stderr: str, error: type, message: str
) -> None:
    plan = aws_plan("train")
    engine.preview(plan)
    cli.fail("up", stderr=stderr)

    with pytest.raises(error, match=message) as caught:
        engine.up(plan)

    assert type(caught.value) is error
    assert "\n" not in str(caught.value)


def test_a_concurrent_update_during_destroy_is_mapped_too(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.preview(aws_plan("train"))
    cli.fail("destroy", stderr="error: [409] Conflict: Another update is currently in progress.")

    with pytest.raises(ConcurrentUpdateError, match="run train is being changed"):
        engine.destroy("train")

    assert "train" in cli.stacks


def test_a_missing_pulumi_cli_is_one_line_and_leaves_nothing_behind(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    engine = PulumiEngine(settings)

    with pytest.raises(EngineMissingError, match="--engine terraform") as caught:
        engine.preview(aws_plan("train"))

    assert "\n" not in str(caught.value)
    assert list(scratch.iterdir()) == []
    assert not (taskstack_home() / "pulumi" / "runs" / "train").exists()


def test_an_endpoint_override_configures_the_aws_provider_for_an_emulator(
    tmp_path: Path, cli: RecordingPulumi
) -> None:
    environ = {"TASKSTACK_BACKENDS": "aws", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}
    settings = load_settings(path=tmp_path / "none.yml", environ=environ)

    PulumiEngine(settings, pulumi_command=cli).preview(aws_plan("train"))

    config = cli.stacks["train"].config
    assert '"ec2": "http://127.0.0.1:5000"' in config["aws:endpoints"]
    assert config["aws:skipCredentialsValidation"] == "true"
    assert config["aws:maxRetries"] == "3"


def _public_ips(cli: RecordingPulumi) -> list[str]:
    return [node["public_ip"] for node in cli.stacks["train"].outputs["nodes"]]


# --- the CLI in a session of its own -------------------------------------------------------


def test_every_cli_call_runs_in_a_session_and_process_group_of_its_own(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    plan = aws_plan("train")
    engine.preview(plan)
    engine.up(plan)

    engine.destroy("train")

    processes = cli.processes()
    assert [process.verb for process in processes] == cli.verbs()
    assert all(p.sid == p.pid and p.pgid == p.pid for p in processes)  # it leads both
    assert all(p.sid != os.getsid(0) and p.pgid != os.getpgid(0) for p in processes)


def test_cli_output_reaches_the_callbacks_line_by_line_and_failures_raise_the_sdks_error(
    engine: PulumiEngine, cli: RecordingPulumi, tmp_path: Path
) -> None:
    engine.preview(aws_plan("alpha"))
    engine.preview(aws_plan("beta"))
    listed: list[str] = []
    complaints: list[str] = []
    cli.fail("preview", stderr="error: first line\nerror: second line", stdout="Previewing")

    listing = cli.run(["stack", "ls", "--json"], str(tmp_path), {}, on_output=listed.append)
    with pytest.raises(auto.CommandError) as failed:
        cli.run(["preview", "--stack", "alpha"], str(tmp_path), {}, on_error=complaints.append)

    assert json.loads("\n".join(listed)) == json.loads(listing.stdout)
    assert [stack["name"] for stack in json.loads(listing.stdout)] == ["alpha", "beta"]
    assert complaints == ["error: first line", "error: second line"]
    assert "error: second line" in str(failed.value)
    assert "Previewing" in str(failed.value)


def test_non_interactive_goes_ahead_of_the_subcommand_and_of_a_double_dash(
    engine: PulumiEngine, cli: RecordingPulumi
) -> None:
    engine.preview(aws_plan("train"))

    argv = {process.verb: process.argv for process in cli.processes()}

    assert argv["preview"][0] == "--non-interactive"
    config_set = argv["config set"]
    assert config_set.index("--non-interactive") < config_set.index("--")
    assert config_set[config_set.index("--") + 1] == aws_plan("train").model_dump_json()


def test_ctrl_c_in_the_terminal_does_not_reach_the_cli_of_a_running_up(tmp_path: Path) -> None:
    taskstack = _start_interrupted_up("worker", tmp_path)
    try:
        held = wait_until_held(tmp_path / "cli", "up")
        os.killpg(taskstack.pid, signal.SIGINT)  # what the terminal does on Ctrl+C
        _wait_for(tmp_path / SIGINT_SEEN)
        release(tmp_path / "cli", "up")
        report = _report(taskstack)
    finally:
        _stop(taskstack)

    (up,) = [process for process in read_processes(tmp_path / "cli") if process.verb == "up"]
    assert up.pid == held
    assert report == {"outcome": "up finished", "nodes": 1, "sigints": 1}
    assert up.signals == []
    assert not up.cancelled
    assert up.pgid != taskstack.pid and up.sid != taskstack.pid


def test_an_interrupt_of_the_calling_thread_cancels_the_cli_once_and_waits_for_it(
    tmp_path: Path,
) -> None:
    taskstack = _start_interrupted_up("main", tmp_path)
    try:
        wait_until_held(tmp_path / "cli", "up")
        os.killpg(taskstack.pid, signal.SIGINT)
        report = _report(taskstack)
    finally:
        _stop(taskstack)

    (up,) = [process for process in read_processes(tmp_path / "cli") if process.verb == "up"]
    assert report["outcome"] == "interrupted"
    assert report["cli_done"][-1] == "up"  # the CLI had exited before the interrupt went on
    assert up.signals == ["SIGINT"]  # passed on once, by the engine
    assert up.cancelled


def _start_interrupted_up(mode: str, scratch: Path) -> subprocess.Popen[str]:
    """`tests/stacks/interrupted_up.py` leading a process group, as a shell's job does."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.stacks.interrupted_up", mode, str(scratch)],
        cwd=REPO_ROOT,
        env={**os.environ, "TASKSTACK_HOME": str(scratch / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout:g} s"
        time.sleep(0.02)
