"""The task's ports on this machine: checked before a run starts, forwarded while it runs.

A port a task publishes is reached at `127.0.0.1:local_port`. Checking that the port is
free before anything starts turns "address already in use" deep inside a node's log into
one clear line. On the local backend without `image:` the task listens on the machine's
own `container_port`, so that port must be free too, and a different `local_port` is
served by a small TCP forwarder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

from taskstack.errors import ConfigError
from taskstack.runtime.spec import PortMapping

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def check_ports_free(ports: Sequence[PortMapping], *, host_network: bool) -> None:
    """Raise if a port the run needs on this machine is already taken.

    `host_network` is True when the task runs as plain processes here (the local backend
    without `image:`): then the task binds `container_port` itself.

    Raises:
        ConfigError: names the first taken port and a free one to use instead.
    """
    for mapping in ports:
        needed = [mapping.local_port]
        if host_network and mapping.container_port != mapping.local_port:
            needed.append(mapping.container_port)

        for port in needed:
            if not port_is_free(port):
                raise ConfigError(_taken_message(mapping, port, host_network=host_network))


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a listening socket could bind `host:port` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like most servers, ignore connections lingering in TIME_WAIT: they do not block.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def port_urls(ports: Sequence[PortMapping]) -> list[str]:
    """The URLs where the user reaches the task's ports."""
    return [f"http://{HOST}:{mapping.local_port}" for mapping in ports]


class Remaps:
    """Forwarders for the ports published on this machine under another number.

    A task's port `container_port` is this machine's own port on the local backend; a
    `local_port` that differs is served by a forwarder until `close()`.
    """

    def __init__(self) -> None:
        self._servers: list[asyncio.AbstractServer] = []

    async def open(self, ports: Sequence[PortMapping]) -> None:
        """Start a forwarder for each remapped port."""
        for mapping in ports:
            if mapping.local_port != mapping.container_port:
                server = await forward_port(mapping.local_port, mapping.container_port)
                self._servers.append(server)

    def close(self) -> None:
        """Stop every forwarder; safe to call more than once."""
        for server in self._servers:
            server.close()
        self._servers.clear()


async def forward_port(local_port: int, target_port: int) -> asyncio.AbstractServer:
    """Serve `127.0.0.1:local_port` by piping each connection to `127.0.0.1:target_port`.

    The caller closes the returned server (and so every piped connection) when the run ends.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, target_port)
        except OSError:
            log.debug("port %d: nothing listens on %d yet", local_port, target_port)
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )

    return await asyncio.start_server(handle, HOST, local_port, reuse_address=True)


def _taken_message(mapping: PortMapping, port: int, *, host_network: bool) -> str:
    free = _next_free(port)
    if host_network:
        # Without a container the task itself binds the port: only freeing it helps.
        return (
            f"port {port} on {HOST} is taken; the local backend runs the task on this "
            f"machine's own ports, so stop what listens on {port} or change `ports` "
            f"(port {free} is free)"
        )
    return (
        f"port {port} on {HOST} is taken; pick another with `-p {free}:{mapping.container_port}`"
    )


def _next_free(port: int) -> int:
    for candidate in range(port + 1, min(port + 200, 65536)):
        if port_is_free(candidate):
            return candidate
    return 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()
