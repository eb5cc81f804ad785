"""Port forwards from this machine to a task's ports on node 0, through its SSH connection.

Each forward listens on 127.0.0.1 only (never on other interfaces of this machine) and
reaches the port on the node's loopback, where the container publishes it (or listens
itself with host networking). Nothing is opened in the cloud firewall.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import asyncssh

from taskstack.errors import SSHError
from taskstack.runtime.spec import PortMapping
from taskstack.runtime.ssh import NodeConnection

log = logging.getLogger(__name__)

NODE_HOST = "127.0.0.1"
"""Where the forwarded connections go on the node: its loopback."""


class Tunnel:
    """The open forwards of one run; `close()` stops them all (safe to call twice)."""

    def __init__(self) -> None:
        self._listeners: list[asyncssh.SSHListener] = []

    @property
    def urls(self) -> tuple[str, ...]:
        """`http://127.0.0.1:PORT` for each open forward."""
        return tuple(f"http://127.0.0.1:{listener.get_port()}" for listener in self._listeners)

    async def open(self, connection: NodeConnection, ports: Sequence[PortMapping]) -> None:
        """Forward each mapping's `local_port` to its `container_port` on the node.

        Raises:
            SSHError: a forward could not be set up (those already open are closed).
        """
        try:
            for mapping in ports:
                listener = await connection.forward_local_port(
                    local_port=mapping.local_port,
                    remote_host=NODE_HOST,
                    remote_port=mapping.container_port,
                )
                self._listeners.append(listener)
                log.info(
                    "forwarding 127.0.0.1:%d to port %d on node %d",
                    mapping.local_port,
                    mapping.container_port,
                    connection.node.rank,
                )
        except SSHError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and end every forwarded connection."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
            with contextlib.suppress(Exception):
                await listener.wait_closed()


@contextlib.asynccontextmanager
async def forwarded(
    connection: NodeConnection, ports: Sequence[PortMapping]
) -> AsyncIterator[Tunnel]:
    """Forward `ports` while the block runs; closed in `finally`, also on errors."""
    tunnel = Tunnel()
    try:
        await tunnel.open(connection, ports)
        yield tunnel
    finally:
        await tunnel.close()
