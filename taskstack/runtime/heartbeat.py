"""The heartbeat of a run's nodes: proof, refreshed over SSH, that `dstack apply` still runs.

Every cloud node runs a watchdog from its first-boot script (`stacks.cloudinit`) that powers
the node off once `HEARTBEAT_FILE` is older than the plan's `heartbeat_grace`. While the
apply looks after its nodes, `keep_alive` touches that file on each of them; when the apply
dies (`kill -9`, a laptop closed, the network gone), the beats stop and the nodes end
themselves, and with them the billing.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence

from taskstack.errors import SSHError
from taskstack.runtime.spec import Node
from taskstack.runtime.ssh import SSHPool

log = logging.getLogger(__name__)

HEARTBEAT_FILE = "/var/lib/taskstack/heartbeat"
HEARTBEAT_SECONDS = 30.0
"""Between two beats; far below any sensible grace, so a few missed beats do no harm."""
_BEAT_CONNECT_SECONDS = 10.0


async def keep_alive(
    pool: SSHPool,
    nodes: Sequence[Node],
    *,
    path: str = HEARTBEAT_FILE,
    interval: float = HEARTBEAT_SECONDS,
) -> None:
    """Touch `path` on every node every `interval` seconds, until cancelled.

    A node that misses a beat is logged and tried again at the next one: losing a node is
    the runtime's to report (`NodeLostError`), not the heartbeat's.
    """
    command = f"touch {shlex.quote(path)}"
    while True:
        beats = await asyncio.gather(
            *(_beat(pool, node, command) for node in nodes), return_exceptions=True
        )
        for node, beat in zip(nodes, beats, strict=True):
            if isinstance(beat, Exception):
                log.warning("node %d missed a heartbeat: %s", node.rank, beat)
        await asyncio.sleep(interval)


async def _beat(pool: SSHPool, node: Node, command: str) -> None:
    connection = await pool.connect(node, deadline_seconds=_BEAT_CONNECT_SECONDS)
    result = await connection.run(command, check=False)
    if result.exit_status != 0:
        raise SSHError(f"`{command}` exited with {result.exit_status}: {result.stderr.strip()}")
