"""SSH to the nodes of a run: one reused connection per node, with pinned host keys.

`SSHPool.connect(node)` waits for the node's sshd with backoff until a deadline, pins the
node's host key on first contact (trust on first use, recorded for the run) and refuses a
changed key for the rest of the run. A `NodeConnection` runs commands, streams their output
line by line, and uploads a tar archive as one stream into `tar -x` on the node.

asyncssh and OS errors are converted to `SSHError` here, once; callers never see them.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from taskstack.errors import SSHError
from taskstack.home import runs_dir
from taskstack.runtime.spec import Node

log = logging.getLogger(__name__)

CONNECT_DEADLINE_SECONDS = 600.0
"""How long `connect` waits for a node's sshd: a fresh cloud VM needs one to three minutes."""

_ATTEMPT_TIMEOUT = 15.0
_FIRST_DELAY, _MAX_DELAY = 0.1, 5.0
# A silent node is declared lost after about 30 s (10 s between probes, 3 unanswered).
_KEEPALIVE_INTERVAL, _KEEPALIVE_COUNT_MAX = 10, 3
_CHUNK = 256 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while an upload runs."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished remote command returned; output decoded as UTF-8 (invalid bytes
    replaced)."""

    exit_status: int
    stdout: str
    stderr: str


class HostKeys:
    """The host key of every node of one run, pinned on first contact.

    Kept in `known_hosts` format in `path` (usually `runs/NAME/known_hosts` under the state
    folder, see `for_run`) so a later command of the same run trusts the same keys, or only
    in memory when `path` is None.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._keys: dict[str, str] = {}
        if path is not None and path.exists():
            self._keys = _parse_known_hosts(path.read_text())

    @classmethod
    def for_run(cls, run_name: str) -> HostKeys:
        """The pinned keys of run `run_name`, stored under the state folder."""
        return cls(runs_dir() / run_name / "known_hosts")

    def pinned(self, address: str, port: int) -> str | None:
        """The pinned key of a node as `TYPE BASE64`, or None before first contact."""
        return self._keys.get(_host_pattern(address, port))

    def pin(self, address: str, port: int, key: str) -> None:
        """Record `key` (`TYPE BASE64`) as the only key the node may present from now on."""
        self._keys[_host_pattern(address, port)] = key
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{pattern} {value}\n" for pattern, value in sorted(self._keys.items())]
            self.path.write_text("".join(lines))

    def known_hosts(self, address: str, port: int) -> asyncssh.SSHKnownHosts | None:
        """What asyncssh validates the node's key against; None means first contact."""
        key = self.pinned(address, port)
        if key is None:
            return None
        return asyncssh.import_known_hosts(f"{_host_pattern(address, port)} {key}\n")


class SSHPool:
    """One SSH connection per node, opened on first use and reused; `close()` ends them all.

    Use as `async with SSHPool(host_keys=HostKeys.for_run(name)) as pool:`.
    """

    def __init__(
        self,
        *,
        host_keys: HostKeys | None = None,
        deadline_seconds: float = CONNECT_DEADLINE_SECONDS,
    ) -> None:
        self.host_keys = host_keys if host_keys is not None else HostKeys()
        self.deadline_seconds = deadline_seconds
        self._connections: dict[tuple[str, int, str], NodeConnection] = {}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}

    async def __aenter__(self) -> SSHPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(
        self, node: Node, *, deadline_seconds: float | None = None
    ) -> NodeConnection:
        """The node's connection: reused when open, else opened with backoff.

        `deadline_seconds` overrides the pool's wait (e.g. a short one when stopping).

        Raises:
            SSHError: the node did not answer within `deadline_seconds`, refused our key,
                or presented a host key other than the one pinned for this run.
        """
        key = (node.address, node.port, node.user)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._connections.get(key)
            if existing is not None and not existing.closed:
                return existing

            deadline = deadline_seconds if deadline_seconds is not None else self.deadline_seconds
            opened = await self._connect_with_backoff(node, deadline_seconds=deadline)
            connection = NodeConnection(node, opened)
            self._connections[key] = connection
            return connection

    async def close(self) -> None:
        """Close every connection (remote processes keep running: stop them first)."""
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.close()

    async def _connect_with_backoff(
        self, node: Node, *, deadline_seconds: float
    ) -> asyncssh.SSHClientConnection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_seconds
        delay = _FIRST_DELAY
        while True:
            try:
                return await self._connect_once(node)
            except _RETRYABLE as exc:
                if loop.time() + delay > deadline:
                    raise SSHError(
                        f"node {node.rank} ({_where(node)}) did not answer SSH within "
                        f"{deadline_seconds:g} s: {_describe(exc)}"
                    ) from exc
                log.debug("node %d not reachable yet (%s); retry in %.1fs", node.rank, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)

    async def _connect_once(self, node: Node) -> asyncssh.SSHClientConnection:
        known_hosts = self.host_keys.known_hosts(node.address, node.port)
        try:
            connection = await asyncio.wait_for(
                asyncssh.connect(
                    node.address,
                    port=node.port,
                    username=node.user,
                    client_keys=[str(node.key_path)] if node.key_path else (),
                    known_hosts=known_hosts,
                    agent_path=None,
                    config=None,
                    keepalive_interval=_KEEPALIVE_INTERVAL,
                    keepalive_count_max=_KEEPALIVE_COUNT_MAX,
                ),
                timeout=_ATTEMPT_TIMEOUT,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise SSHError(
                f"node {node.rank} ({_where(node)}) presented a host key that differs from the "
                "one pinned at first contact in this run; refusing to connect"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise SSHError(
                f"node {node.rank} ({_where(node)}) refused the key "
                f"{node.key_path or '(none given)'} for user {node.user}"
            ) from exc

        if known_hosts is None:
            self._pin(node, connection)
        log.info("connected to node %d (%s)", node.rank, _where(node))
        return connection

    def _pin(self, node: Node, connection: asyncssh.SSHClientConnection) -> None:
        server_key = connection.get_server_host_key()
        if server_key is None:
            connection.close()
            raise SSHError(f"node {node.rank} ({_where(node)}) presented no host key")
        exported = server_key.export_public_key("openssh").decode().split()
        self.host_keys.pin(node.address, node.port, " ".join(exported[:2]))


class NodeConnection:
    """An open SSH connection to one node: run commands, stream output, upload archives."""

    def __init__(self, node: Node, connection: asyncssh.SSHClientConnection) -> None:
        self.node = node
        self._connection = connection

    @property
    def closed(self) -> bool:
        return self._connection.is_closed()

    async def run(
        self, command: str, *, input: bytes | None = None, check: bool = True
    ) -> CommandResult:
        """Run `command` in the node's shell and collect its output.

        `input` is written to the command's stdin (then closed): the way to hand a secret
        to a command without putting it on a command line.

        Raises:
            SSHError: the connection failed, or `check` and the command exited non-zero.
        """
        try:
            process = await self._connection.create_process(command, encoding=None)
            # Always end stdin: a command reading it must not wait forever (asyncssh's own
            # `run` sends no end-of-file for empty input).
            if input:
                process.stdin.write(input)
            process.stdin.write_eof()
            completed = await process.wait()
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

        result = CommandResult(
            exit_status=completed.exit_status if completed.exit_status is not None else -1,
            stdout=_decode(completed.stdout),
            stderr=_decode(completed.stderr),
        )
        if check and result.exit_status != 0:
            program = shlex.split(command)[0] if command.strip() else command
            raise SSHError(
                f"`{program}` on node {self.node.rank} exited with {result.exit_status}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    async def start(self, command: str, *, input: bytes | None = None) -> RemoteProcess:
        """Start `command` and return at once; read its lines (stderr merged into stdout)."""
        try:
            process = await self._connection.create_process(
                command, encoding=None, stderr=asyncssh.STDOUT
            )
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

        if input is not None:
            process.stdin.write(input)
        process.stdin.write_eof()
        return RemoteProcess(self, process)

    async def upload_tar(
        self, archive: Path, dest: str, *, on_progress: ProgressCallback | None = None
    ) -> None:
        """Extract the tar at `archive` into `dest` on the node, streamed as one stream.

        Raises:
            SSHError: the connection failed or `tar -x` on the node failed.
        """
        total = archive.stat().st_size
        command = f"mkdir -p {shlex.quote(dest)} && tar -x -f - -C {shlex.quote(dest)}"
        try:
            process = await self._connection.create_process(command, encoding=None)
            await _send_file(process, archive, total=total, on_progress=on_progress)
            completed = await process.wait()
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from exc

        if completed.exit_status != 0:
            raise SSHError(
                f"unpacking the working directory into {dest} on node {self.node.rank} failed: "
                f"{_decode(completed.stderr).strip()}"
            )
        log.info("uploaded %d bytes to node %d:%s", total, self.node.rank, dest)

    async def forward_local_port(
        self, *, local_port: int, remote_host: str, remote_port: int
    ) -> asyncssh.SSHListener:
        """Listen on 127.0.0.1:`local_port` and forward each connection to the node's
        `remote_host`:`remote_port`. Close the returned listener to stop forwarding."""
        try:
            return await self._connection.forward_local_port(
                "127.0.0.1", local_port, remote_host, remote_port
            )
        except (asyncssh.Error, OSError) as exc:
            raise SSHError(
                f"cannot forward 127.0.0.1:{local_port} to port {remote_port} on node "
                f"{self.node.rank}: {_describe(exc)}"
            ) from exc

    async def close(self) -> None:
        """Close the connection and wait until it is closed."""
        self._connection.close()
        await self._connection.wait_closed()

    def _lost(self, exc: BaseException) -> SSHError:
        return SSHError(f"SSH to node {self.node.rank} ({_where(self.node)}) failed: {exc}")


class RemoteProcess:
    """A command started on a node: iterate its output lines, then wait for its exit."""

    def __init__(
        self, connection: NodeConnection, process: asyncssh.SSHClientProcess[bytes]
    ) -> None:
        self._connection = connection
        self._process = process
        self.complete_bytes = 0
        """Bytes of output delivered as complete lines (with their line breaks) so far."""

    async def lines(self, *, final_partial: bool = True) -> AsyncIterator[str]:
        """Each output line without its line break, until the command's output ends.

        Output that ends without a line break is a last line, unless `final_partial` is
        False: then it is dropped, and `complete_bytes` says where to read it again.
        Reads in large chunks rather than line by line: log throughput depends on it.
        """
        pending = b""
        while True:
            try:
                chunk = await self._process.stdout.read(_CHUNK)
            except (asyncssh.Error, OSError) as exc:
                raise self._connection._lost(exc) from exc
            if not chunk:
                break
            # Splitting bytes is safe: no multi-byte UTF-8 sequence contains a 0x0A byte.
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                self.complete_bytes += len(line) + 1
                yield _decode(line.removesuffix(b"\r"))

        if pending and final_partial:
            yield _decode(pending)

    async def wait(self) -> int:
        """The command's exit status (-1 when the connection closed without one)."""
        try:
            completed = await self._process.wait()
        except (asyncssh.Error, OSError) as exc:
            raise self._connection._lost(exc) from exc
        return completed.exit_status if completed.exit_status is not None else -1

    @property
    def connection_closed(self) -> bool:
        """The SSH connection under this command has closed (the node may be lost)."""
        return self._connection.closed

    def close(self) -> None:
        """Close the channel; the remote command itself keeps running (no pty)."""
        self._process.close()


_RETRYABLE = (OSError, TimeoutError, asyncssh.ConnectionLost, asyncssh.DisconnectError)


async def _send_file(
    process: asyncssh.SSHClientProcess[bytes],
    path: Path,
    *,
    total: int,
    on_progress: ProgressCallback | None,
) -> None:
    sent = 0
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            process.stdin.write(chunk)
            await process.stdin.drain()
            sent += len(chunk)
            if on_progress is not None:
                on_progress(sent, total)
    process.stdin.write_eof()


def _parse_known_hosts(text: str) -> dict[str, str]:
    keys = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not parts[0].startswith("#"):
            keys[parts[0]] = f"{parts[1]} {parts[2]}"
    return keys


def _host_pattern(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def _where(node: Node) -> str:
    return node.address if node.port == 22 else f"{node.address}:{node.port}"


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")
