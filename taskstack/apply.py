"""The run lifecycle of `dstack apply`, as named steps that report through events.

`plan_run` does everything that can fail without side effects: load the task, resolve its
env (every missing variable in one error), find offers, name the run, check its ports and
the backend's prerequisites. The caller shows the plan and asks. `execute_run` then writes
the run record, provisions the nodes, runs the job on them and tears everything down in
`finally`, whatever happened: success, failure, `max_duration`, `dstack stop` or Ctrl+C.

Provisioning is behind the `Provisioner` protocol: the local backend's nodes are process
groups on this machine (`LocalProvisioner`); on a cloud, `provision.CloudProvisioner`
previews, brings up and destroys a stack and returns its `Node`s, and the rest of the
lifecycle stays the same. The preview comes before the caller's `confirm`, so what the
person approves is what the engine then creates; declining removes what the preview left.

`retry.on_events` starts over within `retry.duration` (see `_Run`), each attempt announced
by `AttemptStarted` and counted in the result and the record. The first Ctrl+C in any
phase stops the nodes and destroys the stack (exit 130); a second one only reports what is
still alive (`StillAlive`) and the command that removes it, and the teardown goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, cast

from taskstack import records
from taskstack.errors import (
    ConfigError,
    EngineMissingError,
    NoCapacityError,
    NodeLostError,
    OffersError,
    RunError,
    Stopped,
)
from taskstack.home import ensure_home
from taskstack.records import RunRecord, RunStatus
from taskstack.runtime import job
from taskstack.runtime.job import JobEvent, JobResult, LogLine, NodeStarted, Transport
from taskstack.runtime.ports import check_ports_free
from taskstack.runtime.spec import JobSpec, Node, PortMapping, RegistryAuth
from taskstack.stacks.engine import EngineEvent

if TYPE_CHECKING:
    from taskstack.stacks.engine import StackPreview

log = logging.getLogger(__name__)

LOCAL_ADDRESS = "127.0.0.1"
SNAPSHOT_FILE = "snapshot.tar"


# Events of the lifecycle; the job's own events (`runtime.job`) pass through as they are.


@dataclass(frozen=True)
class StepStarted:
    """A lifecycle step began: `record`, `provision`, `run`, `stop` (a signal), `teardown`."""

    step: str
    detail: str = ""


@dataclass(frozen=True)
class Preview:
    """What provisioning will create: one line, and on clouds the engine's resource list."""

    summary: str
    stack: StackPreview | None = None


@dataclass(frozen=True)
class Previewed:
    """The provisioner previewed the run; nothing billable exists yet."""

    preview: Preview


@dataclass(frozen=True)
class NodesUp:
    """The nodes exist and have addresses; nothing has connected to them yet."""

    nodes: tuple[Node, ...]


@dataclass(frozen=True)
class UploadProgress:
    """`sent` of `total` bytes of the working directory have reached node `rank`."""

    rank: int
    sent: int
    total: int


OnUpload = Callable[[int, int, int], None]


@dataclass(frozen=True)
class AttemptStarted:
    """`retry` starts attempt `number` (2, 3, ...) after `event` (`no-capacity`,
    `interruption` or `error`); `reason` says what happened to the previous attempt."""

    number: int
    event: RetryEvent
    reason: str


@dataclass(frozen=True)
class StillAlive:
    """A second Ctrl+C while the run is being torn down: what still exists, and the command
    that removes it if this process is killed before it is done."""

    alive: str
    command: str


@dataclass(frozen=True)
class RunFinished:
    """The run ended and its record says so."""

    result: RunResult


ApplyEvent = (
    StepStarted
    | Previewed
    | NodesUp
    | UploadProgress
    | AttemptStarted
    | StillAlive
    | RunFinished
    | JobEvent
    | EngineEvent
)
RetryEvent = Literal["no-capacity", "interruption", "error"]
OnApplyEvent = Callable[[ApplyEvent], None]


@dataclass(frozen=True)
class RunPlan:
    """What `dstack apply` is about to do; nothing has started yet."""

    name: str
    task: Any
    """The `TaskConfig`, with env resolved."""
    config_path: Path
    repo_root: Path
    spec: JobSpec
    nodes_num: int
    offers: tuple[Any, ...]
    """Every matching offer, cheapest first; the first one is used."""
    run_id: str
    """Unique to this apply; marks everything the run starts."""
    backend: str = "local"
    engine: str | None = None
    """The engine asked for with `--engine`; None takes the settings' (clouds only)."""

    @property
    def offer(self) -> Any:
        return self.offers[0]


@dataclass(frozen=True)
class RunResult:
    """How a run ended. `exit_status` is what `dstack apply` exits with; `declined`: the
    person said no to the preview, and nothing of the run is left (not even its record)."""

    name: str
    status: RunStatus | Literal["declined"]
    exit_status: int
    reason: str = ""
    exit_codes: dict[int, int] = field(default_factory=dict)
    attempts: int = 1
    """How many times the run was provisioned or rerun (`retry`); 1 without a retry."""


OnEngineEvent = Callable[[EngineEvent], None]


class Provisioner(Protocol):
    """Makes a run's nodes and removes them. Local: process groups; clouds: a stack."""

    backend: str

    @property
    def engine_name(self) -> str | None:
        """The IaC engine behind the nodes; None on the local backend."""
        ...

    def check(self, plan: RunPlan) -> None:
        """Raise when a prerequisite on this machine is missing (cheap; no side effects)."""
        ...

    def preview(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> Preview:
        """Say what `up` will create; may leave engine state that `destroy` removes."""
        ...

    async def up(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> list[Node]:
        """Create the previewed nodes and return them with their ranks."""
        ...

    async def transports(
        self, plan: RunPlan, nodes: Sequence[Node], *, on_upload: OnUpload | None = None
    ) -> list[Transport]:
        """One transport per node, in the order of `nodes`, once the nodes can take a job.

        `on_upload(rank, sent, total)` hears how far each node's snapshot upload is.
        """
        ...

    async def destroy(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> None:
        """Remove everything `preview` and `up` left; what is already gone is not an error."""
        ...


def plan_run(
    config_path: Path,
    *,
    cli_env: Sequence[str] = (),
    ports: Sequence[str] = (),
    name: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    engine: str | None = None,
    provisioner: Provisioner | None = None,
) -> RunPlan:
    """Everything `dstack apply` decides before it starts anything.

    Raises:
        ConfigError: the task is invalid, a required env var is missing, a port is taken.
        OffersError: no offer fits the task.
        RunError: a run with this name is still active, or the backend cannot run the task.
    """
    from taskstack.compiler.config import (
        load_task,
        refuse_what_is_not_carried_out,
        resolve_env,
        validate_run_name,
    )
    from taskstack.runtime.workdir import repo_id, repo_root

    if name is not None:
        # `--name` becomes a folder and cloud resource names: check it before anything else.
        validate_run_name(name)
    ensure_home("runs")
    task = load_task(config_path)
    refuse_what_is_not_carried_out(task, config_path)
    env = resolve_env(task, cli_env=list(cli_env), environ=dict(environ or os.environ))
    task = task.model_copy(update={"env": env})
    task = _with_ports(task, ports)
    offers = _find_offers(task)
    backend = offers[0].backend
    run_name = name or task.name or generate_name()
    _refuse_active(run_name)

    root = repo_root(cwd or Path.cwd())
    spec = job_spec(task, run_name=run_name, repo_id=repo_id(root), offer=offers[0])
    if backend != "local" and spec.image is None:
        from taskstack.runtime.docker import default_image

        # On a cloud every task runs in a container: dstack's base image for `python:`,
        # whose commands run in bash unless the task says otherwise, as in dstack.
        spec = spec.model_copy(
            update={
                "image": default_image(nvcc=bool(getattr(task, "nvcc", False))),
                "shell": spec.shell or "bash",
            }
        )
    plan = RunPlan(
        name=run_name,
        task=task,
        config_path=config_path.resolve(),
        repo_root=root,
        spec=spec,
        nodes_num=_nodes_num(task, offers[0]),
        offers=tuple(offers),
        run_id=uuid.uuid4().hex[:12],
        backend=backend,
        engine=engine,
    )
    if engine is not None and engine not in ("pulumi", "terraform"):
        raise ConfigError(
            f"unknown engine `{engine}`; use `--engine pulumi` or `--engine terraform`"
        )
    _check(plan, provisioner)
    return plan


def _nodes_num(task: Any, offer: Any) -> int:
    """The task's `nodes`, or the hosts of the multi-host TPU slice it named (each host of a
    slice is a node; the offers of such a task are all slices of that size)."""
    from taskstack.compiler.offers import tpu_hosts

    return max(int(task.nodes), tpu_hosts(offer))


def provisioner_for(plan: RunPlan) -> Provisioner:
    """The provisioner of the plan's backend: this machine, or a stack on a cloud."""
    if plan.backend == "local":
        return LocalProvisioner()
    from taskstack.provision import CloudProvisioner, machine_image
    from taskstack.settings import load_settings

    settings = load_settings()
    return CloudProvisioner(
        settings,
        backend=plan.backend,
        engine_name=plan.engine,
        image=machine_image(settings, plan.backend),
    )


def execute_run(
    plan: RunPlan,
    *,
    on_event: OnApplyEvent,
    provisioner: Provisioner | None = None,
    confirm: Callable[[Preview], bool] | None = None,
) -> RunResult:
    """Preview, ask `confirm`, run the plan to its end; the record tells how it ended.

    The record is written before the preview, so whatever the engine leaves behind from
    then on can be found (`dstack ps`) and removed (`dstack destroy`). When `confirm` says
    no, what the preview created is removed with the record, and the result is `declined`.
    Ctrl+C (SIGINT), SIGTERM (what `dstack stop` sends) and SIGHUP stop every node and
    end the run as `interrupted` or `terminated`; nothing the run started survives.
    """
    provisioner = provisioner or provisioner_for(plan)
    provisioner.check(plan)  # again: a port may have been taken while the user read the plan

    record = records.create_record(
        records.new_record(
            name=plan.name,
            run_id=plan.run_id,
            backend=plan.backend,
            config_path=str(plan.config_path),
            nodes_num=plan.nodes_num,
            engine=provisioner.engine_name,
            stack=plan.name if provisioner.engine_name else None,
        )
    )
    on_event(StepStarted(step="record", detail=str(records.run_dir(plan.name))))

    try:
        with _stops_unwind():
            preview = _preview(plan, provisioner, on_event)
            accepted = confirm is None or confirm(preview)
    except BaseException as exc:
        # Ctrl+C, SIGTERM or SIGHUP while the engine previews or at the prompt lands here.
        _discard(plan, record, provisioner, on_event, reason=exc)
        raise
    if not accepted:
        _discard(plan, record, provisioner, on_event, reason=None)
        return RunResult(name=plan.name, status="declined", exit_status=1, reason="declined")
    return asyncio.run(_Run(plan, record, provisioner, on_event, preview).execute())


CLOUD_TEARDOWN_SECONDS = 1800.0
"""How long `dstack stop` waits for a cloud run's apply to stop the nodes and destroy."""


def stop_run(
    name: str,
    *,
    grace: float = job.STOP_GRACE_SECONDS,
    teardown: float = CLOUD_TEARDOWN_SECONDS,
) -> RunRecord:
    """Stop run `name`: ask its apply process to stop it, and kill what is left.

    The apply process gets SIGTERM and tears the run down itself (its record then says
    `terminated`). If it is gone, or a local apply does not finish in time, the run's
    processes are stopped here, found by the marker each carries, and the record is
    closed. A cloud run's apply is waited for up to `teardown` seconds while it destroys
    its stack; no second destroy runs beside it.

    Raises:
        RunError: there is no such run, or it has ended, or a cloud run's apply is still
            destroying after `teardown` seconds.
    """
    from taskstack.runtime.local import node_marker, stop_marked

    record = records.load_record(name)
    # An aborted run's apply died; what it started may still run and is stopped here.
    if not record.active and record.status != "aborted":
        raise RunError(f"run {name} is not running; it is {record.status}")

    if records.apply_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.apply_pid, signal.SIGTERM)
        # A cloud run's apply destroys its stack before it exits, which takes minutes; a
        # second destroy beside it would race it for the same state.
        timeout = grace + 5 if record.engine is None else teardown
        _wait_until(lambda: not records.apply_alive(record), timeout=timeout)
        if record.engine is not None and records.apply_alive(record):
            raise RunError(
                f"the apply of {name} (pid {record.apply_pid}) is still destroying its "
                f"stack after {timeout:.0f}s; let it finish, or end it and run "
                f"`dstack destroy {name}`"
            )

    for rank in range(record.nodes_num):
        stop_marked(node_marker(name, record.run_id, rank), grace=grace)

    record = records.load_record(name)
    if record.active or record.status == "aborted":
        # The apply process could not close the record itself, nor clean up after the run.
        if record.backend == "local":
            remove_local_leftovers(name)
        record = records.finish(record, status="terminated", reason="stopped", exit_status=1)
        if record.engine:
            from taskstack.provision import destroy_run

            # The apply that would have destroyed the stack is gone: do it here.
            record = destroy_run(name) or record
    return record


def remove_local_leftovers(name: str) -> None:
    """Remove a local run's node copies, virtualenv and snapshot; its record and log stay."""
    folder = records.run_dir(name)
    for part in ("nodes", "venv"):
        shutil.rmtree(folder / part, ignore_errors=True)
    (folder / SNAPSHOT_FILE).unlink(missing_ok=True)


def job_spec(task: Any, *, run_name: str, repo_id: str, offer: Any) -> JobSpec:
    """The job every node runs, from the task (env already resolved) and the chosen offer."""
    gpus = int(getattr(offer, "gpu_count", 0) or 0)
    return JobSpec(
        run_name=run_name,
        image=task.image,
        commands=tuple(task.commands or ()),
        entrypoint=getattr(task, "entrypoint", None),
        user=getattr(task, "user", None),
        working_dir=task.working_dir,
        env=_env_values(task.env),
        gpus_per_node=gpus,
        gpu_vendor=getattr(offer, "gpu_vendor", None) if gpus else None,
        privileged=bool(getattr(task, "privileged", False)),
        ports=_port_mappings(task.ports or ()),
        registry_auth=_registry_auth(getattr(task, "registry_auth", None)),
        shell=getattr(task, "shell", None),
        repo_id=repo_id,
        max_duration=task.max_duration,
    )


def _registry_auth(auth: Any) -> RegistryAuth | None:
    if auth is None:
        return None
    return RegistryAuth(username=auth.username, password=auth.password)


def _port_mappings(ports: Sequence[Any]) -> tuple[PortMapping, ...]:
    """The task's ports as forwards from this machine; the same mapping twice is one.

    Raises:
        ConfigError: two container ports would be forwarded from one local port.
    """
    mappings: dict[int, PortMapping] = {}
    for port in ports:
        # `*:C` (no local port) takes the container's own number on this machine.
        mapping = PortMapping(
            local_port=port.local_port or port.container_port, container_port=port.container_port
        )
        taken = mappings.setdefault(mapping.local_port, mapping)
        if taken != mapping:
            raise ConfigError(
                f"`ports`: local port {mapping.local_port} is given to container ports "
                f"{taken.container_port} and {mapping.container_port}; give each its own "
                f"local port (e.g. '{mapping.local_port + 1}:{mapping.container_port}')"
            )
    return tuple(mappings.values())


def generate_name() -> str:
    """A fresh run name like `brave-otter-1`, not used by any recorded run."""
    base = f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"
    taken = {path.name for path in records.runs_dir().glob(f"{base}-*")}
    number = 1
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


LOCAL_NODES_PER_CPU = 4


def local_max_nodes() -> int:
    """The most nodes the local backend starts: a few per CPU, never fewer than 8."""
    return max(8, LOCAL_NODES_PER_CPU * (os.cpu_count() or 1))


class LocalProvisioner:
    """The local backend: every node is a process group on this machine (no engine)."""

    backend = "local"
    engine_name: str | None = None

    def check(self, plan: RunPlan) -> None:
        """Check the local backend's prerequisites: a node count this machine can hold, free
        ports, and Docker for `image:`."""
        most = local_max_nodes()
        if plan.nodes_num > most:
            raise ConfigError(
                f"`nodes: {plan.nodes_num}` is more than the local backend runs here (at most "
                f"{most}, {LOCAL_NODES_PER_CPU} per CPU: each node is a copy of the working "
                f"directory and its processes); lower `nodes` or configure a cloud"
            )
        # Containers publish a port under its own number too: this machine's port either way.
        check_ports_free(plan.spec.ports, host_network=True)
        if plan.spec.image is not None:
            _require_docker(plan.spec.image)
        else:
            _require_host_can_honour(plan.spec)

    def preview(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> Preview:
        """What `up` makes: process groups or containers on this machine."""
        if plan.spec.image is not None:
            kind = "container" if plan.nodes_num == 1 else "containers"
        else:
            kind = "process group" if plan.nodes_num == 1 else "process groups"
        return Preview(summary=f"{plan.nodes_num} {kind} on this machine{_python_note(plan)}")

    async def up(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> list[Node]:
        """Create the run's virtualenv (not for containers); the nodes are this machine."""
        from taskstack.runtime.local import create_run_venv

        if plan.spec.image is None:
            await asyncio.to_thread(create_run_venv, self._venv_dir(plan))
        return [
            Node(rank=rank, address=LOCAL_ADDRESS, private_ip=LOCAL_ADDRESS, user=_user())
            for rank in range(plan.nodes_num)
        ]

    async def transports(
        self, plan: RunPlan, nodes: Sequence[Node], *, on_upload: OnUpload | None = None
    ) -> list[Transport]:
        # Local nodes extract the snapshot from this machine's disk: there is no upload.
        from taskstack.runtime.local import LocalTransport, node_marker
        from taskstack.runtime.localdocker import LocalDockerTransport

        node_root = records.run_dir(plan.name) / "nodes"
        if plan.spec.image is not None:
            return [
                LocalDockerTransport(
                    node,
                    node_dir=node_root / str(node.rank),
                    nodes=plan.nodes_num,
                    marker=node_marker(plan.name, plan.run_id, node.rank),
                )
                for node in nodes
            ]
        return [
            LocalTransport(
                node,
                node_dir=node_root / str(node.rank),
                venv_dir=self._venv_dir(plan),
                marker=node_marker(plan.name, plan.run_id, node.rank),
            )
            for node in nodes
        ]

    async def destroy(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> None:
        """Kill any process still marked with the run, then remove node copies and the venv."""
        from taskstack.runtime.local import kill_marked, node_marker

        for rank in range(plan.nodes_num):
            await asyncio.to_thread(kill_marked, node_marker(plan.name, plan.run_id, rank))
        if plan.spec.image is not None:
            from taskstack.runtime.localdocker import remove_run_containers

            await asyncio.to_thread(remove_run_containers, plan.name)
        await asyncio.to_thread(remove_local_leftovers, plan.name)

    @staticmethod
    def _venv_dir(plan: RunPlan) -> Path:
        return records.run_dir(plan.name) / "venv"


def _check(plan: RunPlan, provisioner: Provisioner | None) -> None:
    if provisioner is not None:
        provisioner.check(plan)
    elif plan.backend == "local":
        LocalProvisioner().check(plan)
    else:
        from taskstack.provision import check_cloud_run

        check_cloud_run(plan)


def _preview(plan: RunPlan, provisioner: Provisioner, on_event: OnApplyEvent) -> Preview:
    on_event(StepStarted(step="preview", detail=provisioner.engine_name or plan.backend))
    preview = provisioner.preview(plan, on_event)
    on_event(Previewed(preview=preview))
    return preview


def _discard(
    plan: RunPlan,
    record: RunRecord,
    provisioner: Provisioner,
    on_event: OnApplyEvent,
    *,
    reason: BaseException | None,
) -> None:
    """Remove what the preview left; a declined run leaves no record either.

    When the removal fails too, the record stays and says how to finish it. A run stopped
    by a signal (`reason` a KeyboardInterrupt) ends with `RunFinished`, as a started run
    does; an error is the caller's to report.
    """
    on_event(StepStarted(step="teardown"))
    try:
        # Without its engine the preview created nothing, and destroy could not run either.
        if not isinstance(reason, EngineMissingError):
            with _interrupts_say_what_is_alive(plan, record, on_event):
                asyncio.run(provisioner.destroy(plan, on_event))
    except Exception as exc:
        log.warning("run %s: removing its preview failed: %s", plan.name, exc)
        status: RunStatus = "failed"
        said = f"{exc}; remove it with `dstack destroy {plan.name}`"
    else:
        if reason is None:
            records.remove_run(plan.name)
            return
        status, said = "failed", str(reason)
        if isinstance(reason, Stopped):
            status, said = cast(RunStatus, reason.status), reason.reason
        elif isinstance(reason, KeyboardInterrupt):
            status, said = "interrupted", "Ctrl+C"
    records.finish(
        record, status=status, reason=said, exit_status=130 if status == "interrupted" else 1
    )
    if isinstance(reason, KeyboardInterrupt):
        on_event(RunFinished(result=_result(plan.name, status=status, reason=said, job=None)))


_STOPS: dict[signal.Signals, tuple[RunStatus, str]] = {
    signal.SIGTERM: ("terminated", "stopped"),
    signal.SIGHUP: ("interrupted", "the terminal closed"),
}
"""The signals that stop a run besides Ctrl+C, with the status and reason they record."""


@contextlib.contextmanager
def _stops_unwind() -> Iterator[None]:
    """Until the run starts, SIGTERM and SIGHUP unwind like Ctrl+C: the engine is asked to
    stop, and what the preview made is removed instead of being left to a killed process."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def raise_stopped(signum: int, _frame: object) -> None:
        raise Stopped(*_STOPS[signal.Signals(signum)])

    previous = {signum: signal.signal(signum, raise_stopped) for signum in _STOPS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _interrupts_say_what_is_alive(
    plan: RunPlan, record: RunRecord, on_event: OnApplyEvent
) -> Iterator[None]:
    """While the preview is removed, Ctrl+C, SIGTERM and SIGHUP say what is still alive
    instead of cutting the removal short (which would leave the stack behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; nothing to catch here
        return
    previous = {
        signum: signal.signal(signum, lambda *_: on_event(still_alive(plan, record)))
        for signum in (signal.SIGINT, *_STOPS)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Run:
    """One execution of a plan: provision, run, retry, tear down; the record stays current.

    `retry.on_events` decides what starts over, within `retry.duration` of the start:
    `no-capacity` (an `up` the cloud refused) destroys what `up` left and provisions the
    next offer; `interruption` (a node lost mid-run) destroys the stack and provisions it
    again; `error` (a node exited non-zero) reruns the job on the same nodes, after a
    backoff. On the local backend no node can be lost: a node killed from outside exits
    with its signal and counts as an `error`.
    """

    def __init__(
        self,
        plan: RunPlan,
        record: RunRecord,
        provisioner: Provisioner,
        on_event: OnApplyEvent,
        preview: Preview,
    ) -> None:
        self.plan = plan
        self.record = record
        self.provisioner = provisioner
        self.on_event = on_event
        self.preview = preview
        self.retry = _RetryPolicy.of(plan.task)
        self.attempt = 1
        self.stop_reason: tuple[RunStatus, str] | None = None
        self._tearing_down = False
        self._log: IO[str] | None = None
        self._job_deadline: float | None = None
        self._offers_tried = 1

    async def execute(self) -> RunResult:
        # Our handlers stay until the teardown is over: a Ctrl+C then must not cut it short.
        self._install_signal_handlers()
        self._log = open(records.log_path(self.plan.name), "a", buffering=1)  # noqa: SIM115
        failure: Exception | None = None
        try:
            try:
                result = await self._provision_and_run()
            except asyncio.CancelledError:
                # Handled: the teardown's own awaits must not see a pending cancellation.
                _uncancel()
                status, reason = self.stop_reason or ("interrupted", "interrupted")
                result = self._result(status=status, reason=reason, job=None)
            except Exception as exc:
                failure = exc
                result = self._result(status="failed", reason=str(exc), job=None)

            self._tearing_down = True
            try:
                await self._teardown()
            except Exception as exc:
                # Something of the stack outlives the run: the record says how to remove it.
                failure = failure or exc
                result = self._result(
                    status="failed",
                    reason=f"{exc}; remove what is left with `dstack destroy {self.plan.name}`",
                    job=None,
                )
            self._finish(result)
        finally:
            self._restore_signal_handlers()

        if failure is not None:
            raise failure
        self.on_event(RunFinished(result=result))
        return result

    async def _provision_and_run(self) -> RunResult:
        """Provision and run until an outcome `retry` does not start over."""
        while True:
            try:
                return await self._run_on_new_nodes()
            except (NoCapacityError, NodeLostError) as exc:
                event: RetryEvent = (
                    "no-capacity" if isinstance(exc, NoCapacityError) else "interruption"
                )
                if not self.retry.allows(event):
                    if event == "interruption":
                        return self._result(
                            status="interrupted", reason=self._why(exc, event), job=None
                        )
                    if event in self.retry.on_events:
                        raise type(exc)(self._why(exc, event)) from exc
                    raise
                await self._start_over(event, exc)

    async def _run_on_new_nodes(self) -> RunResult:
        self._set_status("provisioning")
        self.on_event(StepStarted(step="provision", detail=self.preview.summary))
        nodes = await self.provisioner.up(self.plan, self.on_event)
        self._record_addresses(nodes)
        # Subscribers see the nodes before anything connects to them.
        self.on_event(NodesUp(nodes=tuple(nodes)))
        transports = await self.provisioner.transports(self.plan, nodes, on_upload=self._on_upload)
        snapshot = await asyncio.to_thread(self._snapshot)

        while True:
            self.on_event(StepStarted(step="run", detail=self.plan.name))
            outcome = await job.run_job(
                self._spec(), nodes, transports, self._on_job_event, snapshot=snapshot
            )
            backoff = _rerun_backoff(self.attempt)
            if outcome.status != "failed" or not self._may_rerun(backoff):
                reason = outcome.reason
                if outcome.status == "failed":
                    reason = self._why(RunError(reason), "error")
                return self._result(status=outcome.status, reason=reason, job=outcome)

            await asyncio.sleep(backoff)
            self._next_attempt("error", outcome.reason)
            transports = await self.provisioner.transports(
                self.plan, nodes, on_upload=self._on_upload
            )

    def _on_upload(self, rank: int, sent: int, total: int) -> None:
        self.on_event(UploadProgress(rank=rank, sent=sent, total=total))

    async def _start_over(self, event: RetryEvent, exc: Exception) -> None:
        """Destroy what the attempt left, pick the offer, preview again for the next one."""
        log.info("run %s: %s (%s); starting over", self.plan.name, event, exc)
        self.on_event(StepStarted(step="teardown", detail=f"{event}: {exc}"))
        await self.provisioner.destroy(self.plan, self.on_event)
        if event == "no-capacity":
            await self._next_offer()
        self._next_attempt(event, str(exc))
        self.preview = await asyncio.to_thread(
            _preview, self.plan, self.provisioner, self.on_event
        )

    async def _next_offer(self) -> None:
        """Move to the next offer; after the last one, wait and go round again."""
        offers = self.plan.offers
        rotated = (*offers[1:], offers[0])
        self.plan = dataclasses.replace(
            self.plan, offers=rotated, spec=_spec_for(self.plan, rotated[0])
        )
        if self._offers_tried % len(offers) == 0:
            # Every offer refused: capacity comes back with time, not with asking again now.
            await asyncio.sleep(min(_CAPACITY_WAIT_SECONDS, self.retry.remaining()))
        self._offers_tried += 1

    def _next_attempt(self, event: RetryEvent, reason: str) -> None:
        self.attempt += 1
        self.record = self.record.model_copy(update={"attempt": self.attempt})
        records.save_record(self.record)
        self.on_event(AttemptStarted(number=self.attempt, event=event, reason=reason))

    def _may_rerun(self, backoff: float) -> bool:
        """`error` reruns only while both `retry.duration` and `max_duration` leave time."""
        if self._job_deadline is not None and time.monotonic() + backoff >= self._job_deadline:
            return False
        return self.retry.allows("error", delay=backoff)

    def _spec(self) -> JobSpec:
        """The job to run now: `max_duration` counts from the first start, not each rerun."""
        spec = self.plan.spec
        if spec.max_duration is None:
            return spec
        if self._job_deadline is None:
            self._job_deadline = time.monotonic() + spec.max_duration
            return spec
        remaining = max(self._job_deadline - time.monotonic(), 0.0)
        return spec.model_copy(update={"max_duration": remaining})

    def _why(self, exc: Exception, event: RetryEvent) -> str:
        """The outcome's reason, and why `retry` did not go on where it could have."""
        reason = str(exc)
        if event in self.retry.on_events:
            reason += f"; retry.duration of {self.retry.duration:g}s passed"
        return reason

    def _result(self, *, status: RunStatus, reason: str, job: JobResult | None) -> RunResult:
        result = _result(self.plan.name, status=status, reason=reason, job=job)
        if status == "interrupted" and self.stop_reason is None:
            # A lost node, not a Ctrl+C: an ordinary failure's exit status.
            result = dataclasses.replace(result, exit_status=1)
        return dataclasses.replace(result, attempts=self.attempt)

    def _snapshot(self) -> Path:
        from taskstack.runtime.workdir import write_snapshot

        # In the run's folder, not /tmp: whatever ends the run, teardown finds it there.
        write_snapshot(self.plan.repo_root, self._snapshot_path)
        return self._snapshot_path

    @property
    def _snapshot_path(self) -> Path:
        return records.run_dir(self.plan.name) / SNAPSHOT_FILE

    def _on_job_event(self, event: JobEvent) -> None:
        if isinstance(event, LogLine) and self._log is not None:
            prefix = f"[{event.rank}] " if self.plan.nodes_num > 1 else ""
            self._log.write(f"{prefix}{event.text}\n")
        elif isinstance(event, NodeStarted):
            self._record_node(event)
        self.on_event(event)

    def _record_addresses(self, nodes: Sequence[Node]) -> None:
        recorded = [
            records.NodeRecord(rank=node.rank, address=node.address, instance_id=node.instance_id)
            for node in sorted(nodes, key=lambda node: node.rank)
        ]
        self.record = self.record.model_copy(update={"nodes": recorded})
        records.save_record(self.record)

    def _record_node(self, event: NodeStarted) -> None:
        nodes = {node.rank: node for node in self.record.nodes}
        known = nodes.get(event.rank)
        address = known.address if known else LOCAL_ADDRESS
        nodes[event.rank] = records.NodeRecord(
            rank=event.rank,
            address=address,
            pgid=event.pid,
            instance_id=known.instance_id if known else None,
        )
        ordered = [nodes[rank] for rank in sorted(nodes)]
        self.record = self.record.model_copy(update={"nodes": ordered, "status": "running"})
        records.save_record(self.record)

    async def _teardown(self) -> None:
        self.on_event(StepStarted(step="teardown"))
        # Not cancellable: the signal handlers ignore a second Ctrl+C until this is done.
        await self.provisioner.destroy(self.plan, self.on_event)
        self._snapshot_path.unlink(missing_ok=True)

    def _set_status(self, status: RunStatus) -> None:
        self.record = self.record.model_copy(update={"status": status})
        records.save_record(self.record)

    def _finish(self, result: RunResult) -> None:
        if self._log is not None:
            self._log.close()
        nodes = [
            node.model_copy(update={"exit_code": result.exit_codes.get(node.rank)})
            for node in self.record.nodes
        ]
        status = result.status
        assert status != "declined"  # a declined run never starts
        self.record = records.finish(
            self.record.model_copy(update={"nodes": nodes}),
            status=status,
            reason=result.reason,
            exit_status=result.exit_status,
        )

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None

        def stop(status: RunStatus, reason: str) -> None:
            # Once stopping or tearing down, a further signal only says what is still alive:
            # cutting the teardown short is what would leave resources behind.
            if self.stop_reason is None and not self._tearing_down:
                self.stop_reason = (status, reason)
                self.on_event(StepStarted(step="stop", detail=reason))
                main.cancel()
            else:
                self.on_event(still_alive(self.plan, self.record))

        loop.add_signal_handler(signal.SIGINT, stop, "interrupted", "Ctrl+C")
        loop.add_signal_handler(signal.SIGHUP, stop, "interrupted", "the terminal closed")
        loop.add_signal_handler(signal.SIGTERM, stop, "terminated", "stopped")

    def _restore_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            loop.remove_signal_handler(signum)


@dataclass(frozen=True)
class _RetryPolicy:
    """The task's `retry`: which events start over, and until when (monotonic seconds)."""

    on_events: frozenset[str]
    duration: float
    deadline: float

    @classmethod
    def of(cls, task: Any) -> _RetryPolicy:
        retry = getattr(task, "retry", None)
        if retry is None:
            return cls(on_events=frozenset(), duration=0.0, deadline=0.0)
        duration = float(retry.duration)
        return cls(
            on_events=frozenset(retry.on_events),
            duration=duration,
            deadline=time.monotonic() + duration,
        )

    def allows(self, event: RetryEvent, *, delay: float = 0.0) -> bool:
        """Whether `event` starts over now (after `delay` seconds) within `retry.duration`."""
        return event in self.on_events and time.monotonic() + delay < self.deadline

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


_CAPACITY_WAIT_SECONDS = 60.0
"""After every offer refused for capacity: the wait before asking the first one again."""
_RERUN_FIRST_DELAY, _RERUN_MAX_DELAY = 1.0, 60.0


def _rerun_backoff(attempt: int) -> float:
    """Seconds before an `error` rerun: 1, 2, 4, ... up to a minute."""
    return min(_RERUN_FIRST_DELAY * 2 ** (attempt - 1), _RERUN_MAX_DELAY)


def _spec_for(plan: RunPlan, offer: Any) -> JobSpec:
    """The plan's job on another offer: only the GPUs per node depend on the offer."""
    gpus = int(getattr(offer, "gpu_count", 0) or 0)
    return plan.spec.model_copy(
        update={
            "gpus_per_node": gpus,
            "gpu_vendor": getattr(offer, "gpu_vendor", None) if gpus else None,
        }
    )


def still_alive(plan: RunPlan, record: RunRecord) -> StillAlive:
    """What of run `plan` may still exist while it is torn down, and what removes it."""
    nodes = (
        ", ".join(f"{node.rank}: {node.instance_id or node.address}" for node in record.nodes)
        or "none up yet"
    )
    if record.engine:
        return StillAlive(
            alive=f"stack {plan.name} ({record.engine}; nodes {nodes}) is being destroyed",
            command=f"dstack destroy {plan.name}",
        )
    return StillAlive(
        alive=f"the processes of run {plan.name} (nodes {nodes}) are being stopped",
        command=f"dstack stop {plan.name}",
    )


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _result(name: str, *, status: RunStatus, reason: str, job: JobResult | None) -> RunResult:
    exit_status = {"done": 0, "interrupted": 130}.get(status, 1)
    if job is not None:
        exit_status = job.exit_status
    return RunResult(
        name=name,
        status=status,
        exit_status=exit_status,
        reason=reason,
        exit_codes=dict(job.exit_codes) if job else {},
    )


def _wait_until(condition: Callable[[], bool], *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _find_offers(task: Any) -> list[Any]:
    """The offers of the backends in use, cheapest first, within each cloud's `regions`.

    With no cloud configured that is this machine's offer alone, and no instance catalog is
    loaded (that saves a few hundred milliseconds on every local apply).
    """
    from taskstack.compiler.offers import find_offers
    from taskstack.settings import load_settings

    settings = load_settings()
    backends = settings.backends_in_use()
    if backends == ["local"]:
        try:
            offers = list(find_offers(task, backends=backends, catalog=_no_catalog()).offers)
        except OffersError:
            # Said again with the clouds' offers too: which cloud would fit (configure it),
            # or which requirement no offer anywhere meets.
            find_offers(task, backends=backends)
            raise
        if not offers:
            raise OffersError(
                "this machine does not fit the task's `resources`; no offer to run it"
            )
        return offers

    offers = list(find_offers(task, backends=backends).offers)
    allowed = _regions_by_backend(settings)
    in_regions = [
        o for o in offers if not allowed.get(o.backend) or o.region in allowed[o.backend]
    ]
    if offers and not in_regions:
        configured = "; ".join(
            f"{name}: {', '.join(regions)}" for name, regions in allowed.items()
        )
        raise OffersError(
            f"no offer for the task in the configured regions ({configured}); "
            "add a region in the settings or `dstack offer -f FILE` to see where it fits"
        )
    return in_regions


def _no_catalog() -> Any:
    from datetime import UTC, datetime

    from taskstack.compiler.catalog import Catalog, CatalogSource

    return Catalog(
        offers=(),
        source=CatalogSource(kind="directory", location="none", created_at=datetime.now(UTC)),
    )


def _regions_by_backend(settings: Any) -> dict[str, list[str]]:
    """Each configured cloud's `regions` setting (empty: every region)."""
    found = {}
    for name in ("aws", "gcp", "azure"):
        backend = getattr(settings.backends, name)
        if backend is not None and backend.regions:
            found[name] = list(backend.regions)
    return found


def _with_ports(task: Any, overrides: Sequence[str]) -> Any:
    """The task with `-p LOCAL:CONTAINER` overrides applied to its ports of the same container."""
    if not overrides:
        return task
    ports = {port.container_port: port for port in task.ports or ()}
    for text in overrides:
        local, container = _parse_port_override(text)
        if container not in ports:
            raise ConfigError(f"`-p {text}`: the task has no port {container} in `ports`")
        ports[container] = ports[container].model_copy(update={"local_port": local})
    return task.model_copy(update={"ports": list(ports.values())})


def _parse_port_override(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if match is None or not all(0 < int(part) < 65536 for part in match.groups()):
        raise ConfigError(f"`-p {text}` must be LOCAL_PORT:CONTAINER_PORT, e.g. `-p 8502:8501`")
    return int(match.group(1)), int(match.group(2))


def _env_values(env: Mapping[str, str | None]) -> dict[str, str]:
    """The resolved env; a value still missing here is a bug upstream, said plainly."""
    missing = [key for key, value in env.items() if value is None]
    if missing:
        raise ConfigError(f"`env`: no value for {', '.join(missing)}; pass `-e {missing[0]}=...`")
    return {key: str(value) for key, value in env.items()}


def _refuse_active(name: str) -> None:
    with contextlib.suppress(RunError):
        record = records.load_record(name)
        if record.active:
            raise ConfigError(
                f"run {name} is still {record.status}; stop it with `dstack stop {name}` "
                f"or pick another `--name`"
            )
        if record.backend == "local" and leftover_processes(record):
            # An apply killed with SIGKILL leaves its nodes running; a new record of the
            # same name would lose track of them.
            raise ConfigError(
                f"run {name} was {record.status} but its processes still run; end them with "
                f"`dstack stop {name}` or pick another `--name`"
            )


def leftover_processes(record: RunRecord) -> list[int]:
    """Processes of a local run's nodes still alive (its apply was killed); [] elsewhere."""
    if record.backend != "local":
        return []
    from taskstack.runtime.local import marked_processes, node_marker

    return [
        pid
        for rank in range(record.nodes_num)
        for pid in marked_processes(node_marker(record.name, record.run_id, rank))
    ]


def _require_docker(image: str) -> None:
    """`image:` on the local backend needs a Docker engine that answers."""
    docker = shutil.which("docker")
    if docker is None:
        raise RunError(
            f"`image: {image}` needs a Docker engine on the local backend, and `docker` is "
            f"not installed; install Docker or remove `image` to run the commands directly"
        )
    answer = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if answer.returncode != 0:
        reason = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
        raise RunError(
            f"`image: {image}` needs a Docker engine on the local backend, and none answers "
            f"({reason}); start Docker or remove `image` to run the commands directly"
        )


def _require_host_can_honour(spec: JobSpec) -> None:
    """Without `image:` the commands run on this machine as the current user: refuse the
    container settings that would otherwise be silently ignored."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid())
    if spec.user is not None:
        name, _, group = spec.user.partition(":")
        groups = {str(os.getegid()), grp.getgrgid(os.getegid()).gr_name}
        if name not in (me.pw_name, str(me.pw_uid)) or (group and group not in groups):
            raise ConfigError(
                f"`user: {spec.user}`: without `image:` the local backend runs the commands "
                f"on this machine as {me.pw_name}; add `image:` to run them as {spec.user} in "
                "a container, or remove `user`"
            )
    if spec.privileged and os.geteuid() != 0:
        raise ConfigError(
            f"`privileged: true`: without `image:` the local backend runs the commands on "
            f"this machine as {me.pw_name}, with no extra privileges; add `image:` to run a "
            "privileged container, or remove `privileged`"
        )


def _python_note(plan: RunPlan) -> str:
    """Without `image:` a task runs on this machine's Python; say so when it asked for another."""
    asked = getattr(plan.task, "python", None)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if plan.spec.image is not None or asked is None or str(asked) == here:
        return ""
    return f" (with Python {here}; `python: {asked}` picks the image on clouds)"


def _user() -> str:
    import getpass

    return getpass.getuser()


_ADJECTIVES = (
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively",
    "mighty", "nimble", "proud", "quick", "shiny", "silly", "swift", "tidy", "wise", "zesty",
)  # fmt: skip
_ANIMALS = (
    "badger", "beaver", "cat", "crab", "crow", "deer", "eagle", "fox", "goat", "heron",
    "koala", "lemur", "lynx", "moose", "otter", "owl", "panda", "seal", "tiger", "yak",
)  # fmt: skip
