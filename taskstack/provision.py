"""The cloud provisioner: a run's nodes as an IaC stack, and the stacks left behind.

`CloudProvisioner` implements `apply.Provisioner` for the clouds. `preview` freezes the run
into a `ClusterPlan` (the run's SSH key, the backend's network settings) and asks the engine
what it would create; `up` creates exactly that and returns the nodes with the run's key;
`transports` waits until every node answers SSH and Docker, and reaches each one through one
pool that pins the nodes' host keys for the run; `destroy` closes the connections and
removes the stack, its key and pinned keys.

Engines are synchronous (terraform runs as a child process, Pulumi through its CLI); their
calls run in a worker thread so the run's signal handling stays responsive.

`find_stacks` and `destroy_run` serve `dstack ps` and `dstack destroy`: a stack is found in
the engines' state backends and destroyed from the run's record alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskstack import records
from taskstack.errors import EngineMissingError, RunError, StackError
from taskstack.records import RunRecord
from taskstack.runtime.spec import Node

if TYPE_CHECKING:
    from taskstack.apply import OnUpload, Preview, RunPlan
    from taskstack.compiler.plan import ClusterPlan
    from taskstack.runtime.job import Transport
    from taskstack.runtime.ssh import SSHPool
    from taskstack.settings import Settings
    from taskstack.stacks.engine import Engine, EngineEvent, StackPreview

log = logging.getLogger(__name__)

OnEngineEvent = Callable[["EngineEvent"], None]


@dataclass(frozen=True)
class MachineImage:
    """A machine image to boot instead of the looked-up one, and the user it logs in as.

    Custom images name their own login user (Ubuntu `ubuntu`, Debian `admin`, Amazon Linux
    `ec2-user`, some `root`): the runtime must connect as that user.
    """

    image_id: str
    ssh_user: str


def machine_image(settings: Settings, backend: str) -> MachineImage | None:
    """The image the settings name for `backend` (`aws.image`, `aws.ssh_user`), if any."""
    aws = settings.backends.aws
    if backend != "aws" or aws is None or aws.image is None:
        return None
    return MachineImage(image_id=aws.image, ssh_user=aws.ssh_user or "ubuntu")


class CloudProvisioner:
    """Creates a run's nodes as a stack through an engine (implements `apply.Provisioner`).

    Args:
        settings: the loaded settings (credentials, network, state backend).
        engine: the engine itself; by default `engine_for(settings, engine_name)`.
        engine_name: `pulumi` or `terraform`; None takes the settings' engine.
        image: boot this image (and log in as its user) instead of the looked-up one.
        lost_after_seconds: how long a running node may stay unreachable over SSH before
            it counts as lost (`NodeLostError`, the `interruption` of `retry`); by default
            the settings' `nodes.lost_after`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backend: str,
        engine: Engine | None = None,
        engine_name: str | None = None,
        image: MachineImage | None = None,
        lost_after_seconds: float | None = None,
    ) -> None:
        from taskstack.runtime import heartbeat
        from taskstack.stacks import engine as engines

        self.backend = backend
        self.settings = settings
        self.engine = engine or engines.engine_for(settings, engine_name)
        self.image = image
        self.lost_after_seconds = lost_after_seconds or settings.nodes.lost_after
        self._cluster: ClusterPlan | None = None
        self._pool: SSHPool | None = None
        self._engine_busy: asyncio.Future[Any] | None = None
        self.heartbeat_file = heartbeat.HEARTBEAT_FILE
        self.heartbeat_seconds = heartbeat.HEARTBEAT_SECONDS
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def engine_name(self) -> str:
        return self.engine.name

    def check(self, plan: RunPlan) -> None:
        """See `check_cloud_run`."""
        check_cloud_run(plan)

    def preview(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> Preview:
        """Freeze the run's cluster plan and ask the engine what it would create.

        The engine may leave state behind (a Terraform workspace): `destroy` removes it.
        """
        from taskstack.apply import Preview

        self._cluster = self.cluster_plan(plan)
        try:
            stack = self.engine.preview(self._cluster)
        except EngineMissingError:
            # Nothing was created, so no destroy follows: the new key goes now.
            forget_run_keys(plan.name)
            raise
        where = (
            f"{self._cluster.instance_type} x {self._cluster.node_count} in {self._cluster.region}"
        )
        return Preview(summary=f"{where} via {self.engine.name}: {describe(stack)}", stack=stack)

    def cluster_plan(self, plan: RunPlan) -> ClusterPlan:
        """The run as the engine-neutral plan: its offer, key, network and image."""
        from taskstack.compiler.plan import build_plan
        from taskstack.stacks.keys import run_key_pair

        key = run_key_pair(plan.name)
        cluster = build_plan(
            plan.task,
            plan.offer,
            run_name=plan.name,
            ssh_public_key=key.public_key,
            network=self.settings.network_plan(self.backend),
            image=self.image.image_id if self.image else None,
            project=self._gcp_project(),
            heartbeat_grace=self.settings.nodes.heartbeat_grace,
        )
        if self.image is not None:
            cluster = cluster.model_copy(update={"ssh_user": self.image.ssh_user})
        return cluster

    async def up(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> list[Node]:
        """Create the previewed stack; the nodes carry the run's private key."""
        from taskstack.stacks.keys import run_key_pair

        if self._cluster is None:
            raise StackError(f"run {plan.name} was not previewed; preview it before `up`")
        cluster = self._cluster
        nodes = await self._engine_call(self.engine.up, cluster, on_event)
        key_path = run_key_pair(plan.name).private_key_path
        return [node.model_copy(update={"key_path": key_path}) for node in nodes]

    async def transports(
        self, plan: RunPlan, nodes: Sequence[Node], *, on_upload: OnUpload | None = None
    ) -> list[Transport]:
        """One SSH transport per node, once every node answers SSH and Docker.

        The transports share one pool, which pins each node's host key for the run and
        waits for sshd with backoff; `wait_for_docker` then waits for the engine.
        """
        from taskstack.runtime.heartbeat import keep_alive
        from taskstack.runtime.remote import STOP_CONNECT_SECONDS, RemoteTransport
        from taskstack.runtime.ssh import HostKeys, SSHPool

        # A rerun on the same nodes (`retry: error`) keeps the pool and its connections.
        pool = self._pool or SSHPool(host_keys=HostKeys.for_run(plan.name))
        self._pool = pool
        await asyncio.gather(*(wait_for_docker(pool, node) for node in nodes))
        if self._heartbeat is None:
            # The nodes' dead man's switch (`stacks.cloudinit`) waits for these beats.
            self._heartbeat = asyncio.create_task(
                keep_alive(pool, nodes, path=self.heartbeat_file, interval=self.heartbeat_seconds)
            )
        return [
            RemoteTransport(
                node,
                pool=pool,
                run_name=plan.name,
                nodes=len(nodes),
                lost_after_seconds=self.lost_after_seconds,
                on_upload=on_upload,
                # A lost node must not hold the others' stop for longer than it took to lose.
                stop_connect_seconds=min(STOP_CONNECT_SECONDS, self.lost_after_seconds),
            )
            for node in nodes
        ]

    async def destroy(self, plan: RunPlan, on_event: OnEngineEvent | None = None) -> None:
        """Stop the heartbeat, close the SSH connections, destroy the stack, forget the keys."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._engine_busy is not None and not self._engine_busy.done():
            # An `up` cut short by Ctrl+C still runs: destroying beside it would race it.
            with contextlib.suppress(Exception):
                await self._engine_busy
        await self._engine_call(self.engine.destroy, plan.name, on_event)
        forget_run_keys(plan.name)

    async def _engine_call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run an engine call in a worker thread that a cancellation does not abandon.

        The engine's process runs in its own session, so Ctrl+C does not kill it half-way;
        the call goes on to its end, and `destroy` waits for it before it starts.
        """
        loop = asyncio.get_running_loop()
        self._engine_busy = loop.run_in_executor(None, function, *args)
        return await asyncio.shield(self._engine_busy)

    def _gcp_project(self) -> str | None:
        gcp = self.settings.backends.gcp
        return gcp.project if self.backend == "gcp" and gcp is not None else None


DOCKER_DEADLINE_SECONDS = 900.0
"""How long a node may take to answer `docker`: first boot installs it (a few minutes)."""
_DOCKER_FIRST_DELAY, _DOCKER_MAX_DELAY = 0.5, 10.0


async def wait_for_docker(
    pool: SSHPool, node: Node, *, deadline_seconds: float = DOCKER_DEADLINE_SECONDS
) -> None:
    """Wait until the node's Docker engine answers its SSH user.

    A fresh VM runs its first-boot script (`stacks.cloudinit`) while sshd already accepts
    logins: Docker may not be installed yet, and the user joins the `docker` group only
    for sessions opened after that. So each failed probe drops the node's connection and
    the next one logs in again.

    Raises:
        SSHError: the node did not answer SSH in time (from the pool).
        RunError: Docker did not answer within `deadline_seconds`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    delay = _DOCKER_FIRST_DELAY
    while True:
        connection = await pool.connect(node)
        probe = await connection.run("docker version --format '{{.Server.Version}}'", check=False)
        if probe.exit_status == 0:
            return
        if loop.time() + delay > deadline:
            raise RunError(
                f"Docker did not answer on node {node.rank} ({node.address}) within "
                f"{deadline_seconds:g} s: {probe.stderr.strip() or probe.stdout.strip()}"
            )
        log.debug("node %d: Docker not ready (%s)", node.rank, probe.stderr.strip())
        await connection.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, _DOCKER_MAX_DELAY)


def check_cloud_run(plan: RunPlan) -> None:
    """What can fail before a cloud run touches anything: the forwarded ports must be free on
    this machine's loopback, and the run must make a valid cluster plan (its name becomes
    resource names; a TPU slice fixes the node count).

    Raises:
        ConfigError: names the port or the field, and the fix.
    """
    from taskstack.compiler.plan import build_plan
    from taskstack.runtime.ports import check_ports_free

    check_ports_free(plan.spec.ports, host_network=False)
    # The run's key does not exist yet and is not needed to validate the rest.
    build_plan(plan.task, plan.offer, run_name=plan.name, ssh_public_key="ssh-ed25519 AAAA")


def forget_run_keys(run_name: str) -> None:
    """Remove the run's SSH key pair and the host keys pinned for it: its nodes are gone,
    and a later run of the same name may meet other hosts at the same addresses."""
    from taskstack.stacks.keys import delete_run_key

    delete_run_key(run_name)
    (records.run_dir(run_name) / "known_hosts").unlink(missing_ok=True)


# --- stacks left behind ----------------------------------------------------------------------


@dataclass(frozen=True)
class FoundStack:
    """A stack in an engine's state backend, and the record of its run if there is one."""

    name: str
    engine: str
    record: RunRecord | None

    @property
    def leftover(self) -> bool:
        """No apply is looking after it: its run crashed, ended badly, or is unknown here."""
        return self.record is None or not self.record.active


@dataclass(frozen=True)
class StackListing:
    """What `find_stacks` found, and the engines it could not ask (with the reason)."""

    stacks: tuple[FoundStack, ...]
    unreachable: tuple[str, ...] = ()


def find_stacks(settings: Settings | None = None) -> StackListing:
    """The stacks of every engine in use: the settings' engine and those runs recorded.

    With no cloud configured and no cloud run recorded, no engine is asked (nothing to find,
    and `dstack ps` stays instant).
    """
    from taskstack.settings import load_settings

    settings = settings or load_settings()
    known = records.list_records(include_finished=True)
    names = {record.engine for record in known if record.engine}
    if settings.backends_in_use() != ["local"]:
        names.add(settings.engine)

    by_name = {record.name: record for record in known}
    found: list[FoundStack] = []
    unreachable: list[str] = []
    for engine_name in sorted(names):
        try:
            stacks = _engine(settings, engine_name).list_stacks()
        except StackError as exc:
            unreachable.append(f"{engine_name}: {exc}")
            continue
        found += [FoundStack(name, engine_name, by_name.get(name)) for name in stacks]
    return StackListing(stacks=tuple(found), unreachable=tuple(unreachable))


def destroy_run(
    name: str, *, on_event: OnEngineEvent | None = None, settings: Settings | None = None
) -> RunRecord | None:
    """Destroy run `name`'s stack from its record alone; a stack already gone is success.

    A stack with no record here (made on another machine, or its record removed) is found
    by name in the engines' state backends; None is returned for it.

    Raises:
        RunError: no such run, it is a local run, or its apply is still running it
            (`dstack stop` ends that one, and its apply destroys the stack itself).
    """
    from taskstack.settings import load_settings

    settings = settings or load_settings()
    try:
        record = records.load_record(name)
    except RunError:
        _destroy_unrecorded(name, settings=settings, on_event=on_event)
        return None
    if record.backend == "local" or not record.engine:
        raise RunError(f"run {name} ran on the local backend: it has no stack to destroy")
    if record.active:
        raise RunError(f"run {name} is still {record.status}; stop it with `dstack stop {name}`")

    _engine(settings, record.engine).destroy(record.stack or name, on_event)
    forget_run_keys(name)

    reason = record.reason if record.status != "aborted" else "apply crashed; stack destroyed"
    return records.finish(
        record.model_copy(update={"stack": None}),
        status=record.status,
        reason=reason,
        exit_status=record.exit_status if record.exit_status is not None else 1,
    )


def _destroy_unrecorded(name: str, *, settings: Settings, on_event: OnEngineEvent | None) -> None:
    listing = find_stacks(settings)
    found = next((stack for stack in listing.stacks if stack.name == name), None)
    if found is None:
        raise RunError(f"no run or stack named {name}; `dstack ps -a` lists them")
    _engine(settings, found.engine).destroy(name, on_event)
    forget_run_keys(name)


def _engine(settings: Settings, name: str) -> Engine:
    from taskstack.stacks import engine as engines

    return engines.engine_for(settings, name)


def describe(preview: StackPreview) -> str:
    """`5 resources: 2 aws_instance, 1 aws_vpc, ...` for a one-line summary."""
    counts = ", ".join(f"{count} {kind}" for kind, count in preview.counts.items())
    return f"{len(preview.resources)} resources: {counts}" if preview.resources else "nothing"
