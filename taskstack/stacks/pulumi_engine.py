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
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from pulumi import automation as auto

log = logging.getLogger(__name__)

PROJECT = "taskstack"
PLAN_KEY = "taskstack:plan"
NODES_OUTPUT = "nodes"

ProgramFor = Callable[[ClusterPlan], Callable[[], None]]

_INSTALL_HINT = (
    "the Pulumi CLI is not installed: install it (curl -fsSL https://get.pulumi.com | sh) "
    "or use `--engine terraform`"
)
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
        from pulumi import automation as auto

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
        from pulumi import automation as auto

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
        from pulumi import automation as auto

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
        from pulumi import automation as auto

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
        from pulumi import automation as auto

        try:
            self._command = auto.PulumiCommand()
        except FileNotFoundError as exc:
            raise EngineMissingError(_INSTALL_HINT) from exc
        except auto.InvalidVersionError as exc:
            raise EngineMissingError(f"the Pulumi CLI does not fit this SDK: {exc}") from exc
        return self._command

    def _check_previewed(self, stack: auto.Stack, plan: ClusterPlan) -> None:
        from pulumi import automation as auto

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


class _StackGone(Exception):
    """The stack to destroy does not exist (already destroyed, or never created)."""


def _stack_config(plan: ClusterPlan, settings: Settings) -> dict[str, Any]:
    """The provider config of the plan's cloud, as Automation API config values."""
    from pulumi import automation as auto

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
    from pulumi import automation as auto

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
