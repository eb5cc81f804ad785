"""The Pulumi engine: the plan's inline program run through the Automation API.

One stack per run, named after the run, in project `taskstack`, on the backend the settings
name (a `file://` folder under the state folder by default) with the passphrase secrets
provider. Each run has its own LocalWorkspace folder (`pulumi/runs/<run>/`) holding the
project and stack settings; the stack config holds the cloud settings (`aws:region`, ...)
and the frozen plan (`taskstack:plan`), which `up` compares with the plan it is given, so it
never creates something other than what was previewed. Credentials and the passphrase reach
the CLI through its environment, never its arguments or the stack config.

The Pulumi CLI is found once, before any workspace exists: the SDK builds its `PulumiCommand`
inside `LocalWorkspace`, after making a temporary work dir that a missing CLI would leave
behind. Errors are mapped where they enter: a missing CLI becomes `EngineMissingError`,
another update in progress `ConcurrentUpdateError`, a cloud out of capacity
`NoCapacityError`, anything else `StackError`.

The CLI runs in its own session (`SessionPulumiCommand`), like terraform in the Terraform
engine: the terminal's Ctrl+C reaches taskstack's process group only, so it cannot kill
Pulumi halfway through an update and leave resources its state does not record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from pulumi import automation as auto
from pulumi.automation.errors import create_command_error

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import (
    ConcurrentUpdateError,
    EngineMissingError,
    NoCapacityError,
    StackError,
)
from taskstack.home import taskstack_home
from taskstack.runtime.spec import Node
from taskstack.settings import Settings
from taskstack.stacks.engine import (
    EngineEvent,
    OnEvent,
    PlannedResource,
    StackPreview,
    capacity_error_in,
    first_error_line,
    nodes_from_outputs,
)

log = logging.getLogger(__name__)

PROJECT = "taskstack"
PLAN_KEY = "taskstack:plan"
NODES_OUTPUT = "nodes"

ProgramFor = Callable[[ClusterPlan], Callable[[], None]]

_INSTALL_HINT = (
    "the Pulumi CLI is not installed: install it (curl -fsSL https://get.pulumi.com | sh) "
    "or use `--engine terraform`"
)
# Each Azure VM gets a role on itself so that it can deallocate itself when the heartbeat
# stops (programs/azure.py); granting it takes a right Contributor lacks.
_ROLE_ASSIGNMENT_DENIED = "Microsoft.Authorization/roleAssignments/write"
_ROLE_ASSIGNMENT_HINT = (
    "the Azure principal may not create role assignments, which every VM needs to deallocate "
    "itself when the apply is gone; give it `Role Based Access Control Administrator` (or "
    "`User Access Administrator`) on the subscription"
)
# GCP permissions the run's own service account and its grants need, and the role that has
# each (a node deletes itself as that account when the apply is gone).
_GCP_GRANTS_DENIED = {
    "iam.serviceAccounts.create": "`Service Account Admin`",
    "iam.serviceAccounts.actAs": "`Service Account User`",
    "compute.instances.setIamPolicy": "`Compute Admin`",
    "compute.disks.setIamPolicy": "`Compute Admin`",
    "resourcemanager.projects.setIamPolicy": "`Project IAM Admin`",
}
# Types in the event stream that are Pulumi's own bookkeeping, not cloud resources.
_INTERNAL_TYPES = ("pulumi:pulumi:Stack", "pulumi:providers:")


class PulumiEngine:
    """Creates a run's nodes with the Automation API; see the module docstring."""

    name = "pulumi"

    def __init__(
        self,
        settings: Settings,
        *,
        pulumi_command: auto.PulumiCommand | None = None,
        program_for: ProgramFor | None = None,
    ) -> None:
        self._settings = settings
        self._command = pulumi_command
        self._program_for = program_for or _default_program_for

    def preview(self, plan: ClusterPlan) -> StackPreview:
        """Create (or select) the run's stack, store the plan and cloud config, preview it."""
        resources: dict[str, PlannedResource] = {}

        def collect(event: Any) -> None:
            planned = _planned_resource(event)
            if planned is not None:
                resources[planned.name] = planned

        with self._stack(plan.run_name, plan=plan, create=True) as stack:
            with _mapped_errors(plan.run_name, "preview"):
                stack.set_all_config(_stack_config(plan, self._settings))
                stack.set_config(PLAN_KEY, auto.ConfigValue(value=plan.model_dump_json()))
                stack.preview(on_event=collect)
        return StackPreview(
            run_name=plan.run_name, engine=self.name, resources=tuple(resources.values())
        )

    def up(self, plan: ClusterPlan, on_event: OnEvent | None = None) -> list[Node]:
        """Bring the previewed stack up and return its nodes in rank order.

        Raises:
            StackError: the run was not previewed, or `plan` differs from the previewed one.
        """
        with self._stack(plan.run_name, plan=plan, create=False) as stack:
            with _mapped_errors(plan.run_name, "up"):
                self._check_previewed(stack, plan)
                result = stack.up(on_event=_translator(on_event))
        nodes = result.outputs.get(NODES_OUTPUT)
        if nodes is None:
            raise StackError(f"stack of run {plan.run_name} has no `{NODES_OUTPUT}` output")
        return nodes_from_outputs(plan, nodes.value)

    def destroy(self, run_name: str, on_event: OnEvent | None = None) -> None:
        """Destroy the run's resources and remove its stack; a missing stack is success."""
        try:
            with self._stack(run_name, plan=None, create=False) as stack:
                with _mapped_errors(run_name, "destroy"):
                    stack.destroy(on_event=_translator(on_event), remove=True)
        except _StackGone:
            log.info("stack of run %s is already gone", run_name)
        except auto.StackNotFoundError:
            log.info("stack of run %s is already gone", run_name)
        shutil.rmtree(self._workdir(run_name), ignore_errors=True)

    def list_stacks(self) -> list[str]:
        """The stacks of project `taskstack` in the backend, one per run."""
        workspace = self._workspace(self._listing_dir(), program=None)
        with _mapped_errors("", "stack ls"):
            return sorted(summary.name for summary in workspace.list_stacks())

    # --- steps ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stack(
        self, run_name: str, *, plan: ClusterPlan | None, create: bool
    ) -> Iterator[auto.Stack]:
        """The run's stack in its own workspace folder; the folder goes if creation fails."""
        workdir = self._workdir(run_name)
        existed = workdir.exists()
        program = self._program_for(plan) if plan is not None else _no_program
        workspace = self._workspace(workdir, program=program)
        try:
            with _mapped_errors(run_name, "stack select"):
                if create:
                    stack = auto.Stack.create_or_select(run_name, workspace)
                else:
                    stack = auto.Stack.select(run_name, workspace)
        except auto.StackNotFoundError:
            if not existed:
                shutil.rmtree(workdir, ignore_errors=True)
            if plan is None:
                raise _StackGone() from None
            raise StackError(f"run {run_name} was not previewed; preview it before `up`") from None
        except BaseException:
            if not existed:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        yield stack

    def _workspace(
        self, workdir: Path, *, program: Callable[[], None] | None
    ) -> auto.LocalWorkspace:
        command = self._pulumi_command()
        workdir.mkdir(parents=True, exist_ok=True)
        project = auto.ProjectSettings(
            name=PROJECT,
            runtime="python",
            main=str(workdir),
            backend=auto.ProjectBackend(url=self._settings.pulumi_backend_url()),
        )
        return auto.LocalWorkspace(
            work_dir=str(workdir),
            program=program,
            env_vars=self._environment(),
            secrets_provider="passphrase",
            project_settings=project,
            pulumi_command=command,
        )

    def _pulumi_command(self) -> auto.PulumiCommand:
        """The CLI, found once; its absence is one line saying what to do."""
        if self._command is not None:
            return self._command
        try:
            self._command = SessionPulumiCommand()
        except FileNotFoundError as exc:
            raise EngineMissingError(_INSTALL_HINT) from exc
        except auto.InvalidVersionError as exc:
            raise EngineMissingError(f"the Pulumi CLI does not fit this SDK: {exc}") from exc
        return self._command

    def _check_previewed(self, stack: auto.Stack, plan: ClusterPlan) -> None:
        try:
            stored = stack.get_config(PLAN_KEY).value
        except auto.CommandError:
            stored = None
        if stored is None:
            raise StackError(f"run {plan.run_name} was not previewed; preview it before `up`")
        if stored != plan.model_dump_json():
            raise StackError(
                f"the plan of run {plan.run_name} changed since its preview; preview it again"
            )

    def _environment(self) -> dict[str, str]:
        """The passphrase and cloud credentials, for the CLI's environment only."""
        passphrase = self._settings.pulumi_passphrase().get_secret_value()
        environment = self._settings.cloud_environment()
        # The stack config carries `aws:profile`; a profile variable would override it.
        environment.pop("AWS_PROFILE", None)
        return {"PULUMI_CONFIG_PASSPHRASE": passphrase, **environment}

    def _workdir(self, run_name: str) -> Path:
        return taskstack_home() / "pulumi" / "runs" / run_name

    def _listing_dir(self) -> Path:
        return taskstack_home() / "pulumi" / "listing"


class SessionPulumiCommand(auto.PulumiCommand):
    """The Pulumi CLI, started in a session of its own for every call.

    The SDK's `PulumiCommand` starts the CLI in taskstack's process group, where the
    terminal's Ctrl+C reaches it mid-update (and the interrupted SDK stops reading the pipes
    the CLI writes to). Here an interrupt of the calling thread is passed on as one SIGINT,
    which Pulumi answers by cancelling gracefully (the operations in flight finish and the
    state is saved); once the CLI has exited the interrupt goes on up. A call in a worker
    thread (`dstack apply` runs the engine in one) never sees the interrupt, so the CLI runs
    to its end. Otherwise a call behaves as the SDK's: `--non-interactive` ahead of the
    subcommand, the workspace's variables over ours, each output line handed to `on_output`
    / `on_error` as it comes, a non-zero exit raised as the SDK's `CommandError`.

    Unlike terraform's, the CLI's output stays a pipe: the inline program runs inside
    taskstack, so an update cannot outlive a taskstack that is killed anyway.
    """

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: auto.OnOutput | None = None,
        on_error: auto.OnOutput | None = None,
    ) -> auto.CommandResult:
        """Run `pulumi ARGS` in `cwd`; its output, or the SDK's `CommandError`."""
        _insert_non_interactive(args)
        process = subprocess.Popen(
            [self.command, *args],
            cwd=cwd,
            env=self._environment(additional_env),
            # The CLI runs --non-interactive and reads nothing; outside the terminal's
            # process group it must not take the user's keystrokes either.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )

        stdout: list[str] = []
        stderr: list[str] = []
        readers = [
            _read_lines(process.stdout, on_line=on_output, into=stdout),
            _read_lines(process.stderr, on_line=on_error, into=stderr),
        ]
        code = _wait_passing_interrupts(process, readers)

        result = auto.CommandResult(stdout="\n".join(stdout), stderr="\n".join(stderr), code=code)
        if code != 0:
            raise create_command_error(result)
        return result

    def _environment(self, additional_env: Mapping[str, str]) -> dict[str, str]:
        env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
        if os.path.isabs(self.command):
            # Plugins installed next to the CLI come first, as the SDK arranges.
            folder = os.path.dirname(self.command)
            env["PATH"] = os.pathsep.join(filter(None, [folder, env.get("PATH")]))
        return env


def _insert_non_interactive(args: list[str]) -> None:
    """`--non-interactive` before the subcommand: after a `--` it would be a value."""
    end = args.index("--") if "--" in args else len(args)
    if "--non-interactive" not in args[:end]:
        args.insert(0, "--non-interactive")


def _read_lines(
    stream: IO[str] | None, *, on_line: auto.OnOutput | None, into: list[str]
) -> threading.Thread:
    """A thread that collects the stream's lines, handing each to `on_line` as it comes."""
    assert stream is not None

    def read() -> None:
        with stream:
            for raw in stream:
                line = raw.rstrip()
                if on_line is not None:
                    on_line(line)
                into.append(line)

    # Not a daemon: should taskstack be on its way out, it keeps draining the pipe until the
    # CLI is done, rather than closing it and have the CLI die writing to it.
    reader = threading.Thread(target=read, name="pulumi-output")
    reader.start()
    return reader


def _wait_passing_interrupts(process: subprocess.Popen, readers: list[threading.Thread]) -> int:
    """The CLI's exit code once it has exited and its output is read.

    Ctrl+C in this thread goes to the CLI's session as one SIGINT; we then wait for the
    CLI to finish cancelling before the interrupt continues up to the caller.
    """
    try:
        return _finish(process, readers)
    except KeyboardInterrupt:
        log.warning(
            "interrupt: asking pulumi (pid %s) to cancel after its current step", process.pid
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        _finish(process, readers)
        raise


def _finish(process: subprocess.Popen, readers: list[threading.Thread]) -> int:
    # The readers end when the CLI closes its output, which it does when it exits.
    for reader in readers:
        reader.join()
    return process.wait()


class _StackGone(Exception):
    """The stack to destroy does not exist (already destroyed, or never created)."""


def _stack_config(plan: ClusterPlan, settings: Settings) -> dict[str, Any]:
    """The provider config of the plan's cloud, as Automation API config values."""
    values = _cloud_config(plan, settings)
    return {key: auto.ConfigValue(value=value) for key, value in values.items()}


def _cloud_config(plan: ClusterPlan, settings: Settings) -> dict[str, str]:
    if plan.cloud == "aws":
        return _aws_config(plan, settings)
    if plan.cloud == "gcp":
        gcp = settings.backends.gcp
        project = plan.project or (gcp.project if gcp else None)
        config = {"gcp:region": plan.region}
        if plan.zone:
            config["gcp:zone"] = plan.zone
        if project:
            config["gcp:project"] = project
        return config
    azure = settings.backends.azure
    config = {"azure-native:location": plan.region}
    if azure and azure.subscription_id:
        config["azure-native:subscriptionId"] = azure.subscription_id
    return config


def _aws_config(plan: ClusterPlan, settings: Settings) -> dict[str, str]:
    aws = settings.backends.aws
    config = {"aws:region": plan.region}
    if aws is None:
        return config
    if aws.profile:
        config["aws:profile"] = aws.profile
    if aws.endpoint_url:
        # An emulator (moto) answers every API at one URL and has no account to look up;
        # few retries keep an API it lacks from being retried for minutes (TESTBED.md).
        endpoints = [{service: aws.endpoint_url for service in ("ec2", "sts", "iam", "s3")}]
        config.update(
            {
                "aws:endpoints": json.dumps(endpoints),
                "aws:skipCredentialsValidation": "true",
                "aws:skipRequestingAccountId": "true",
                "aws:skipRegionValidation": "true",
                "aws:skipMetadataApiCheck": "true",
                "aws:s3UsePathStyle": "true",
                "aws:maxRetries": "3",
            }
        )
    return config


@contextlib.contextmanager
def _mapped_errors(run_name: str, operation: str) -> Iterator[None]:
    """Pulumi's errors as ours, once, where they enter."""
    try:
        yield
    except auto.ConcurrentUpdateError as exc:
        raise ConcurrentUpdateError(f"run {run_name} is being changed by another apply") from exc
    except auto.StackNotFoundError:
        raise
    except auto.CommandError as exc:
        text = str(exc)
        capacity = capacity_error_in(text)
        if capacity:
            raise NoCapacityError(
                f"run {run_name}: the cloud has no capacity ({capacity})"
            ) from exc
        if _ROLE_ASSIGNMENT_DENIED in text:
            raise StackError(f"run {run_name}: {_ROLE_ASSIGNMENT_HINT}") from exc
        for permission, role in _GCP_GRANTS_DENIED.items():
            if permission in text:
                raise StackError(
                    f"run {run_name}: the GCP principal lacks `{permission}`, which the run's "
                    f"service account (each node deletes itself with it) needs; give it {role} "
                    "on the project"
                ) from exc
        reason = first_error_line(text, marker="error:")
        raise StackError(f"pulumi {operation} failed for run {run_name}: {reason}") from exc
    except FileNotFoundError as exc:
        raise EngineMissingError(_INSTALL_HINT) from exc


def _translator(on_event: OnEvent | None) -> Callable[[Any], None] | None:
    """An SDK event callback that hands our `EngineEvent`s to `on_event`."""
    if on_event is None:
        return None

    def translate(event: Any) -> None:
        ours = _engine_event(event)
        if ours is not None:
            on_event(ours)

    return translate


def _engine_event(event: Any) -> EngineEvent | None:
    steps = (
        (event.resource_pre_event, "started"),
        (event.res_outputs_event, "done"),
        (event.res_op_failed_event, "failed"),
    )
    for step, status in steps:
        if step is None or step.metadata.type.startswith(_INTERNAL_TYPES):
            continue
        op = str(step.metadata.op.value)
        name = _urn_name(step.metadata.urn)
        return EngineEvent(
            kind="resource",
            message=f"{op} {step.metadata.type} {name}",
            resource_type=step.metadata.type,
            resource_name=name,
            action=op,
            status=status,  # type: ignore[arg-type]
        )
    if event.diagnostic_event is not None and event.diagnostic_event.severity in (
        "error",
        "warning",
    ):
        return EngineEvent(kind="diagnostic", message=event.diagnostic_event.message.strip())
    if event.summary_event is not None:
        changes = event.summary_event.resource_changes or {}
        text = ", ".join(f"{count} {op}" for op, count in sorted(changes.items()))
        return EngineEvent(kind="summary", message=text or "no changes")
    return None


def _planned_resource(event: Any) -> PlannedResource | None:
    step = event.resource_pre_event
    if step is None or step.metadata.type.startswith(_INTERNAL_TYPES):
        return None
    op = str(step.metadata.op.value)
    if op == "same":
        return None
    return PlannedResource(type=step.metadata.type, name=_urn_name(step.metadata.urn), action=op)


def _urn_name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def _default_program_for(plan: ClusterPlan) -> Callable[[], None]:
    from taskstack.stacks.programs import program_for

    return program_for(plan)


def _no_program() -> None:
    """Destroy and listing run no program; the stack's state says what exists."""
