"""The local backend with `image:`: each node is a container of this machine's Docker engine.

The container is the one the SSH transport starts on a cloud node (`runtime.docker` builds
both command lines), run by the local `docker` client instead of over SSH: the working
directory copy and the MPI hostfile are bind-mounted from the node's folder, env values
reach `docker run` through the stdin of `sh -s`, never on a command line. Logs come from
`docker logs --follow`, the exit code from `docker wait`; stopping is `docker stop` (SIGTERM,
SIGKILL after the grace) and `docker rm -f`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from taskstack.errors import RunError
from taskstack.runtime.docker import (
    HOSTFILE_PATH,
    RUN_LABEL,
    Placement,
    docker_error,
    docker_login,
    docker_run,
)
from taskstack.runtime.local import MARKER_VAR, read_lines, stop_group
from taskstack.runtime.ports import Remaps
from taskstack.runtime.spec import JobSpec, Node, PortMapping
from taskstack.runtime.workdir import extract_snapshot

log = logging.getLogger(__name__)


def remove_run_containers(run_name: str) -> int:
    """`docker rm -f` every container labelled with the run; returns how many there were.

    The transports remove their own containers; this catches those of an apply that died.
    """
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={RUN_LABEL}={run_name}"],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = listed.stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
    return len(ids)


class LocalDockerTransport:
    """Runs one node's job as a container on this machine (implements `Transport`)."""

    def __init__(self, node: Node, *, node_dir: Path, nodes: int, marker: str) -> None:
        self.node = node
        self.node_dir = node_dir
        self.nodes = nodes
        self.workdir = node_dir / "workdir"
        self.hostfile = node_dir / "mpi_hostfile"
        self._marker = marker
        self._container: str | None = None
        self._follower: asyncio.subprocess.Process | None = None
        self._exit_code: int | None = None
        self._remaps = Remaps()

    async def prepare(self, *, snapshot: Path | None, hostfile: str) -> str:
        """Extract the snapshot and write the hostfile in the node's folder, to be mounted."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if snapshot is not None:
            await asyncio.to_thread(extract_snapshot, snapshot, self.workdir)
        self.hostfile.write_text(hostfile)
        return HOSTFILE_PATH

    async def start(self, spec: JobSpec, *, env: Mapping[str, str]) -> int | None:
        """Log in to the registry if the task says so, then `docker run --detach`."""
        if spec.registry_auth is not None and spec.image is not None:
            command, password = docker_login(spec.image, spec.registry_auth)
            await self._shell(command, stdin=password, what="docker login")

        placement = Placement(
            rank=self.node.rank,
            nodes=self.nodes,
            workdir=str(self.workdir),
            hostfile=str(self.hostfile),
        )
        run = docker_run(spec, placement, env)
        # A container left by an earlier apply of the same name would block the name.
        script = f"docker rm -f {run.name} >/dev/null 2>&1\n{run.script()}"
        await self._shell("sh -s", stdin=script.encode(), what=f"docker run of {spec.image}")
        self._container = run.name

        self._follower = await asyncio.create_subprocess_exec(
            "docker",
            "logs",
            "--follow",
            run.name,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, MARKER_VAR: self._marker},
        )
        log.info("node %d: container %s started", self.node.rank, run.name)
        return self._follower.pid

    async def lines(self) -> AsyncIterator[str]:
        """The container's output (a terminal merges stdout and stderr in order)."""
        if self._follower is None:
            raise RunError(f"node {self.node.rank} was not started")
        async for line in read_lines(self._follower):
            yield line

    async def wait(self) -> int:
        """The container's exit code, from `docker wait` (or from `stop`, once stopped)."""
        if self._exit_code is None and self._container is not None:
            output = await self._shell(f"docker wait {self._container}", what="docker wait")
            if output.strip().lstrip("-").isdigit():
                self._exit_code = int(output.strip())
        if self._exit_code is None:
            raise RunError(f"the container of node {self.node.rank} reported no exit code")
        return self._exit_code

    async def forward_ports(self, ports: Sequence[PortMapping]) -> None:
        """Single-node containers publish each port on 127.0.0.1 under its own number
        (multi-node ones use the host network); a different `local_port` is forwarded."""
        await self._remaps.open(ports)

    async def stop(self, *, grace: float) -> None:
        """Stop and remove the container and its log follower; safe to call more than once."""
        self._remaps.close()

        if self._container is not None:
            name = self._container
            script = (
                f"docker stop -t {math.ceil(grace)} {name} >/dev/null 2>&1; "
                f"docker inspect -f '{{{{.State.ExitCode}}}}' {name} 2>/dev/null; "
                f"docker rm -f {name} >/dev/null 2>&1"
            )
            code = (await self._shell(script, check=False, what="docker stop")).strip()
            if self._exit_code is None and code.lstrip("-").isdigit():
                self._exit_code = int(code)

        if self._follower is not None:
            # `docker rm -f` ends `docker logs --follow`; the group kill is for a wedged client.
            await asyncio.to_thread(stop_group, self._follower.pid, marker=self._marker, grace=2)
            with contextlib.suppress(ProcessLookupError):
                await self._follower.wait()

    async def _shell(
        self, command: str, *, stdin: bytes | None = None, check: bool = True, what: str
    ) -> str:
        process = await asyncio.create_subprocess_shell(
            command,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await process.communicate(stdin)
        if check and process.returncode != 0:
            detail = docker_error(err.decode(errors="replace"), out.decode(errors="replace"))
            raise RunError(f"{what} failed on node {self.node.rank}: {detail}")
        return out.decode(errors="replace")
