"""The SSH transport: a node of a run is a Docker container on a machine reached over SSH.

Implements `taskstack.runtime.job.Transport`. For each node, in the order `run_job` calls:

- `prepare`: a fresh folder on the node (`REMOTE_ROOT/RUN/RANK`), the MPI hostfile written
  through stdin, the working-directory snapshot streamed into `tar -x`;
- `start`: `docker login` (password on stdin) when the task names registry credentials,
  then `docker create`, fed to `sh -s` on stdin so env values never appear on a command
  line, then `docker start --attach` left running on the node (detached from the SSH
  session) writing the container's output to the node's `log` file;
- `lines`: `tail -f` of that file until the attached client ends; `wait`: `docker wait`;
- `stop`: `docker stop` (SIGTERM, SIGKILL after the grace), `docker rm -f`, and the folder
  removed. Closing the SSH channel would not stop anything (no pty), so this is explicit.

Why attach instead of `docker logs --follow`: on Docker 20.10 the follow can end early
when the container exits while it is behind (measured on the testbed: 7 to 9 of 17 MB
lost), and it is slower. An attached client gets every byte, in order, as `docker run` in
a terminal would; the file also keeps the log on the node if the connection drops.

A node whose SSH connection dies while its job runs is reported as `NodeLostError`.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from taskstack.errors import NodeLostError, RunError, SSHError
from taskstack.runtime.docker import (
    HOSTFILE_PATH,
    DockerRun,
    Placement,
    docker_error,
    docker_login,
    docker_run,
)
from taskstack.runtime.spec import JobSpec, Node, PortMapping
from taskstack.runtime.ssh import NodeConnection, SSHPool
from taskstack.runtime.tunnel import Tunnel

log = logging.getLogger(__name__)

REMOTE_ROOT = "/tmp/taskstack"
"""Parent of each node's run folder on the node; removed again by `stop`."""

# Once the job runs, a dropped connection gets a short window to come back before the
# node counts as lost; a stopping node gets a shorter one, so a dead node does not hold up
# the others.
LOST_AFTER_SECONDS = 60.0
STOP_CONNECT_SECONDS = 15.0
# Between `docker start` and a running container: image layers are already unpacked.
_START_SECONDS = 60.0

UploadProgress = Callable[[int, int, int], None]
"""Called with (rank, bytes sent, total bytes) while a snapshot uploads."""


class RemoteTransport:
    """Runs one node's job in a Docker container over SSH (implements `Transport`)."""

    def __init__(
        self,
        node: Node,
        *,
        pool: SSHPool,
        run_name: str,
        nodes: int,
        remote_root: str = REMOTE_ROOT,
        on_upload: UploadProgress | None = None,
        stop_connect_seconds: float = STOP_CONNECT_SECONDS,
        lost_after_seconds: float = LOST_AFTER_SECONDS,
    ) -> None:
        self.node = node
        self.pool = pool
        self.nodes = nodes
        self.remote_root = remote_root
        self.folder = f"{remote_root}/{run_name}/{node.rank}"
        self.on_upload = on_upload
        self.stop_connect_seconds = stop_connect_seconds
        self.lost_after_seconds = lost_after_seconds
        self._tunnel = Tunnel()
        self._container: str | None = None
        self._exit_code: int | None = None
        self._efa = False
        self._attach_pid = 0

    async def prepare(self, *, snapshot: Path | None, hostfile: str) -> str:
        """Create the node's folder, write the hostfile, upload the snapshot; returns the
        hostfile's path inside the container."""
        connection = await self._connect()
        folder = shlex.quote(self.folder)
        probe = await connection.run(
            f"rm -rf {folder} && mkdir -p {folder}/workdir && cat > {folder}/hostfile"
            " && if [ -e /dev/infiniband ]; then echo efa; fi",
            input=hostfile.encode(),
        )
        self._efa = probe.stdout.strip() == "efa"

        if snapshot is not None:
            await connection.upload_tar(
                snapshot, f"{self.folder}/workdir", on_progress=self._progress
            )
        return HOSTFILE_PATH

    async def start(self, spec: JobSpec, *, env: Mapping[str, str]) -> int | None:
        """Log in to the registry if needed and start the container detached."""
        connection = await self._connect()
        if spec.registry_auth is not None and spec.image is not None:
            await self._login(connection, spec)

        placement = Placement(
            rank=self.node.rank,
            nodes=self.nodes,
            workdir=f"{self.folder}/workdir",
            hostfile=f"{self.folder}/hostfile",
            efa=self._efa,
        )
        run = docker_run(spec, placement, env)
        log.debug("node %d: %s", self.node.rank, shlex.join(run.create_argv))  # names only
        self._container = run.name
        # One round trip: create, attach, and wait until the container left `created`.
        result = await connection.run("sh -s", input=self._start_script(run).encode(), check=False)
        if result.exit_status != 0:
            raise RunError(
                f"`docker create` of {spec.image} on node {self.node.rank} failed: "
                f"{docker_error(result.stderr, result.stdout)}; check `image` (and "
                "`registry_auth` for a private registry)"
            )

        pid, _, state = result.stdout.strip().partition("\n")
        self._attach_pid = int(pid)
        status, _, error = state.partition(" ")
        if error or status == "created":
            raise RunError(
                f"{spec.image} did not start on node {self.node.rank}: "
                f"{error or f'still not running after {_START_SECONDS:g} s'}"
            )
        log.info("started container %s on node %d", run.name, self.node.rank)
        return None

    async def lines(self) -> AsyncIterator[str]:
        """The container's output (stdout and stderr merged, in order) until it exits."""
        self._started()
        log_file = shlex.quote(f"{self.folder}/log")
        # GNU tail: follows the file and exits after a last read once the attached client
        # (and so the container) has ended.
        command = (
            f"[ -e {log_file} ] && exec tail -c +1 -s 0.2 -f --pid={self._attach_pid} {log_file}"
        )
        try:
            connection = await self._connect(deadline_seconds=self.lost_after_seconds)
            process = await connection.start(command)
        except SSHError as exc:
            raise self._lost(exc) from exc
        try:
            async for line in process.lines():
                yield line
        except SSHError as exc:
            raise self._lost(exc) from exc
        finally:
            process.close()

        if process.connection_closed:
            raise self._lost(SSHError("the SSH connection closed while following the logs"))

    async def wait(self) -> int:
        """The container's exit code (`docker wait`); once stopped, the code it stopped with."""
        if self._exit_code is not None:
            return self._exit_code
        container = self._started()
        try:
            connection = await self._connect(deadline_seconds=self.lost_after_seconds)
            result = await connection.run(f"docker wait {shlex.quote(container)}", check=False)
        except SSHError as exc:
            raise self._lost(exc) from exc

        if result.exit_status == 0 and result.stdout.strip().lstrip("-").isdigit():
            self._exit_code = int(result.stdout.strip())
        elif self._exit_code is None:
            # The container vanished without `stop` recording its code: someone removed it.
            raise NodeLostError(
                f"the container of node {self.node.rank} disappeared: {result.stderr.strip()}"
            )
        return self._exit_code

    async def forward_ports(self, ports: Sequence[PortMapping]) -> None:
        """Forward 127.0.0.1:`local_port` here to each `container_port` on this node."""
        await self._tunnel.open(await self._connect(), ports)

    async def stop(self, *, grace: float) -> None:
        """Close the forwards, stop and remove the container, remove the node's folder.

        Safe to call at any point and more than once; records the exit code the container
        stopped with, so a `wait` still pending returns it.
        """
        await self._tunnel.close()
        connection = await self._connect(deadline_seconds=self.stop_connect_seconds)
        # The run's and the root's folders go too once empty (the last node removes them).
        parents = f"{shlex.quote(self.folder.rsplit('/', 1)[0])} {shlex.quote(self.remote_root)}"
        steps = [f"rm -rf {shlex.quote(self.folder)}", f"rmdir {parents} 2>/dev/null"]
        if self._attach_pid:
            # Only a pid that was read back: `kill 0` would end this very shell's group,
            # and with it the removal of the node's folder below.
            steps.insert(0, f"kill {self._attach_pid} 2>/dev/null")
        if self._container is not None:
            name = shlex.quote(self._container)
            steps = [
                f"docker stop -t {math.ceil(grace)} {name} >/dev/null 2>&1",
                f"docker inspect -f '{{{{.State.ExitCode}}}}' {name} 2>/dev/null",
                f"docker rm -f {name} >/dev/null 2>&1",
                *steps,
            ]
        result = await connection.run("; ".join(steps), check=False)

        code = result.stdout.strip()
        if self._exit_code is None and code.lstrip("-").isdigit():
            self._exit_code = int(code)
        if self._container is not None:
            log.info("removed container %s on node %d", self._container, self.node.rank)

    def _start_script(self, run: DockerRun) -> str:
        """Create the container, start it through an attached client that outlives the SSH
        session and writes the output to the node's `log` file, and wait until it left the
        `created` state. Prints the client's pid, then the container's status and error."""
        folder = shlex.quote(self.folder)
        name = shlex.quote(run.name)
        polls = int(_START_SECONDS / 0.1)
        state = f"docker inspect -f '{{{{.State.Status}}}} {{{{.State.Error}}}}' {name}"
        return (
            # A container left by an earlier attempt of the same run would block the name.
            f"docker rm -f {name} >/dev/null 2>&1\n"
            f"{run.exports()}"
            f"{shlex.join(run.create_argv)} >/dev/null || exit $?\n"
            f"cd {folder} && : > log || exit $?\n"
            # setsid and redirected stdio: the SSH channel closes at once, and no hangup
            # reaches the client when the connection drops.
            f"setsid docker start --attach {name} > log 2>&1 < /dev/null &\n"
            "echo $!\n"
            f"i=0; while [ \"$({state})\" = 'created ' ] && [ $i -lt {polls} ]; do\n"
            "  sleep 0.1; i=$((i + 1))\n"
            "done\n"
            f"{state}\n"
        )

    async def _connect(self, *, deadline_seconds: float | None = None) -> NodeConnection:
        return await self.pool.connect(self.node, deadline_seconds=deadline_seconds)

    async def _login(self, connection: NodeConnection, spec: JobSpec) -> None:
        assert spec.registry_auth is not None and spec.image is not None
        command, password = docker_login(spec.image, spec.registry_auth)
        result = await connection.run(command, input=password, check=False)
        if result.exit_status != 0:
            # docker's own message names the registry and the reason, never the password.
            raise RunError(
                f"`docker login` as {spec.registry_auth.username} on node {self.node.rank} "
                f"failed: {docker_error(result.stderr, result.stdout)}; check `registry_auth`"
            )

    def _progress(self, sent: int, total: int) -> None:
        if self.on_upload is not None:
            self.on_upload(self.node.rank, sent, total)

    def _started(self) -> str:
        if self._container is None:
            raise RunError(f"the job on node {self.node.rank} was not started")
        return self._container

    def _lost(self, exc: SSHError) -> NodeLostError:
        return NodeLostError(f"node {self.node.rank} ({self.node.address}) was lost: {exc}")
