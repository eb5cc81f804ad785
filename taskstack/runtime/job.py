"""One job on every node of a run: the logic both transports (local, SSH) share.

A `Transport` reaches one node. `run_job` drives one transport per node: it puts the
working directory and the MPI hostfile on every node, starts the job with the task's env
and the system variables, streams every log line as an event, forwards the ports of
node 0, waits for the exit codes, and stops every node when one fails, when
`max_duration` passes, or when the caller cancels. Stopping always happens (in `finally`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from taskstack.errors import RunError
from taskstack.runtime.spec import JobSpec, Node, PortMapping
from taskstack.runtime.sysvars import mpi_hostfile, ranked, system_variables

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0
"""How long a node gets between SIGTERM and SIGKILL when the run stops."""

DRAIN_SECONDS = 5.0
"""After a stop from outside: how long the output of the stopped nodes is still read.
Bounded, because a node that was lost may never close its stream."""


class Transport(Protocol):
    """How the runtime reaches one node. The local backend and SSH each implement it.

    The runtime calls, in order: `prepare`, `start`, then `lines` and `wait` together,
    `forward_ports` on node 0, and `stop` always at the end (also after a normal exit,
    so nothing the job left running survives). `stop` must be safe to call at any point,
    more than once, and must leave no process of the job behind.
    """

    node: Node

    async def prepare(self, *, snapshot: Path | None, hostfile: str) -> str:
        """Put the working-directory snapshot and the MPI hostfile on the node.

        Returns the hostfile's path as the job sees it (`DSTACK_MPI_HOSTFILE`).
        """
        ...

    async def start(self, spec: JobSpec, *, env: Mapping[str, str]) -> int | None:
        """Start the job with `env` (task env and system variables); returns its pid if known."""
        ...

    def lines(self) -> AsyncIterator[str]:
        """The job's output (stdout and stderr merged), one line at a time, until it ends."""
        ...

    async def wait(self) -> int:
        """The job's exit code, once it has exited (negative: killed by that signal)."""
        ...

    async def forward_ports(self, ports: Sequence[PortMapping]) -> None:
        """Make each `container_port` of the job reachable at 127.0.0.1:`local_port`."""
        ...

    async def stop(self, *, grace: float) -> None:
        """Stop everything the job started: SIGTERM, then SIGKILL after `grace` seconds."""
        ...


# Events: what a run reports while it runs. Library code never prints; the CLI renders.


@dataclass(frozen=True)
class NodePrepared:
    """The node holds the working directory and the hostfile."""

    rank: int


@dataclass(frozen=True)
class NodeStarted:
    """The job runs on the node; `pid` is its process (group) id where the transport knows it."""

    rank: int
    pid: int | None


@dataclass(frozen=True)
class LogLine:
    """One line of a node's output, without its line break."""

    rank: int
    text: str


@dataclass(frozen=True)
class PortsForwarded:
    """The task's ports are reachable at these URLs."""

    urls: tuple[str, ...]


@dataclass(frozen=True)
class NodeExited:
    """The job on a node ended with `exit_code`."""

    rank: int
    exit_code: int


StopKind = Literal["failure", "max_duration"]


@dataclass(frozen=True)
class JobStopping:
    """Every node is being stopped, and why: a node failed, or `max_duration` passed."""

    reason: str
    kind: StopKind


JobEvent = NodePrepared | NodeStarted | LogLine | PortsForwarded | NodeExited | JobStopping

JobStatus = Literal["done", "failed", "terminated"]


@dataclass(frozen=True)
class JobResult:
    """How the job ended: `done` only when every node exited 0."""

    status: JobStatus
    exit_codes: dict[int, int] = field(default_factory=dict)
    reason: str = ""
    failed_rank: int | None = None
    """The node whose exit failed the job; the others were stopped because of it."""

    @property
    def exit_status(self) -> int:
        """The status a command exits with: 0, the failing node's code, or 1 when stopped."""
        if self.status == "done":
            return 0
        # Only a failed job has a failing node.
        code = self.exit_codes.get(self.failed_rank, 0) if self.failed_rank is not None else 0
        if code != 0:
            # A signal death is reported the way shells do: 128 + the signal number.
            return code if code > 0 else 128 - code
        return 1


async def run_job(
    spec: JobSpec,
    nodes: Sequence[Node],
    transports: Sequence[Transport],
    on_event: Callable[[JobEvent], None],
    *,
    snapshot: Path | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> JobResult:
    """Run `spec` on every node at once and return how it ended.

    `transports[i]` reaches `nodes[i]`. The job fails as soon as one node exits non-zero
    (the others are stopped: a rank waiting for a dead peer would hang), and is terminated
    after `spec.max_duration` seconds. Cancelling the calling task stops every node, then
    re-raises `CancelledError`.

    Raises:
        RunError: a node could not be prepared or started (every node is stopped first).
    """
    by_rank = _pair(nodes, transports)
    try:
        hostfiles = await _prepare_all(spec, nodes, by_rank, on_event, snapshot=snapshot)
        await _start_all(spec, nodes, by_rank, on_event, hostfiles=hostfiles)
        return await _supervise(spec, by_rank, on_event, grace=grace)
    finally:
        await _stop_all(by_rank, grace=grace)


def _pair(nodes: Sequence[Node], transports: Sequence[Transport]) -> dict[int, Transport]:
    if len(nodes) != len(transports):
        raise RunError(f"{len(nodes)} nodes but {len(transports)} transports")
    ranked(nodes)  # the ranks must be 0..n-1 before anything starts
    return {node.rank: transport for node, transport in zip(nodes, transports, strict=True)}


async def _prepare_all(
    spec: JobSpec,
    nodes: Sequence[Node],
    by_rank: dict[int, Transport],
    on_event: Callable[[JobEvent], None],
    *,
    snapshot: Path | None,
) -> dict[int, str]:
    """Prepare every node at once; returns each node's hostfile path."""
    hostfile = mpi_hostfile(nodes, gpus_per_node=spec.gpus_per_node)

    async def prepare(rank: int) -> tuple[int, str]:
        path = await by_rank[rank].prepare(snapshot=snapshot, hostfile=hostfile)
        on_event(NodePrepared(rank=rank))
        return rank, path

    return dict(await asyncio.gather(*(prepare(rank) for rank in by_rank)))


async def _start_all(
    spec: JobSpec,
    nodes: Sequence[Node],
    by_rank: dict[int, Transport],
    on_event: Callable[[JobEvent], None],
    *,
    hostfiles: dict[int, str],
) -> None:
    async def start(rank: int) -> None:
        # System variables win over the task's env: a task cannot fake its own rank.
        sysvars = system_variables(spec, nodes, rank=rank, hostfile_path=hostfiles[rank])
        pid = await by_rank[rank].start(spec, env={**spec.env, **sysvars})
        on_event(NodeStarted(rank=rank, pid=pid))

    await asyncio.gather(*(start(rank) for rank in by_rank))


async def _supervise(
    spec: JobSpec,
    by_rank: dict[int, Transport],
    on_event: Callable[[JobEvent], None],
    *,
    grace: float,
) -> JobResult:
    """Follow every node until all exit 0, one fails, or `max_duration` passes."""
    followers = {
        asyncio.create_task(_follow(rank, transport, on_event)): rank
        for rank, transport in by_rank.items()
    }
    try:
        await _forward_ports(spec, by_rank, on_event)

        status, reason, failed_rank = await _first_outcome(
            followers, max_duration=spec.max_duration
        )
        if status != "done":
            kind: StopKind = "failure" if status == "failed" else "max_duration"
            on_event(JobStopping(reason=reason, kind=kind))
            await _stop_all(by_rank, grace=grace)

        # Once stopped, every follower ends: its output drains and its exit code arrives.
        exit_codes = dict(zip(followers.values(), await asyncio.gather(*followers), strict=True))
        return JobResult(
            status=status, exit_codes=exit_codes, reason=reason, failed_rank=failed_rank
        )
    except asyncio.CancelledError:
        # Stopped from outside (Ctrl+C, `dstack stop`): the nodes get their grace, and what
        # they print meanwhile ("saving a checkpoint...") still reaches the log.
        await _stop_all(by_rank, grace=grace)
        await asyncio.wait(followers, timeout=DRAIN_SECONDS)
        raise
    finally:
        for task in followers:
            task.cancel()


async def _follow(rank: int, transport: Transport, on_event: Callable[[JobEvent], None]) -> int:
    async for line in transport.lines():
        on_event(LogLine(rank=rank, text=line))
    exit_code = await transport.wait()
    on_event(NodeExited(rank=rank, exit_code=exit_code))
    return exit_code


async def _forward_ports(
    spec: JobSpec, by_rank: dict[int, Transport], on_event: Callable[[JobEvent], None]
) -> None:
    if not spec.ports:
        return
    # Ports are published by node 0, as in dstack.
    await by_rank[0].forward_ports(spec.ports)
    urls = tuple(f"http://127.0.0.1:{mapping.local_port}" for mapping in spec.ports)
    on_event(PortsForwarded(urls=urls))


async def _first_outcome(
    followers: dict[asyncio.Task[int], int], *, max_duration: float | None
) -> tuple[JobStatus, str, int | None]:
    """Wait for the moment the job's fate is known: all exited 0, a failure (and the failing
    node's rank), or time out."""
    loop = asyncio.get_running_loop()
    deadline = None if max_duration is None else loop.time() + max_duration
    pending = set(followers)

    while pending:
        timeout = None if deadline is None else max(deadline - loop.time(), 0)
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            return "terminated", f"max_duration of {max_duration:g}s passed", None

        # Of nodes that ended in the same instant, the lowest rank is named, every time.
        for task in sorted(done, key=followers.__getitem__):
            exit_code = task.result()  # a transport error propagates from here
            if exit_code != 0:
                rank = followers[task]
                return "failed", f"node {rank} exited with {exit_code}", rank

    return "done", "", None


async def _stop_all(by_rank: dict[int, Transport], *, grace: float) -> None:
    """Stop every node at once; a node that fails to stop does not keep the others running."""
    results = await asyncio.gather(
        *(transport.stop(grace=grace) for transport in by_rank.values()), return_exceptions=True
    )
    for rank, result in zip(by_rank, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("node %d did not stop cleanly: %s", rank, result)
