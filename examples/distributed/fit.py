"""Fit y = a*x + b across the nodes of a run with an all-reduce over TCP (standard library).

Every node builds its own shard of the data, computes the sums least squares needs, and
sends them to the master (rank 0), which adds them up and sends the totals back. Each node
then solves the same normal equations, so all print the same model; it must be the one the
data was made from.
"""

from __future__ import annotations

import json
import os
import socket
import time

TRUE_SLOPE, TRUE_INTERCEPT = 3.0, 2.0
CONNECT_SECONDS = 60


def main() -> None:
    rank = int(os.environ["DSTACK_NODE_RANK"])
    nodes = int(os.environ["DSTACK_NODES_NUM"])
    master = os.environ["DSTACK_MASTER_NODE_IP"]
    port = int(os.environ.get("MASTER_PORT", "29517"))

    local = shard_sums(rank)
    total = serve(local, nodes, port) if rank == 0 else join(local, master, port)

    slope, intercept = solve(total)
    ok = abs(slope - TRUE_SLOPE) < 1e-9 and abs(intercept - TRUE_INTERCEPT) < 1e-9
    print(
        f"rank {rank}/{nodes}: {int(total['n'])} points from {nodes} shards, "
        f"fitted y = {slope:.6f}x + {intercept:.6f}: {'checked' if ok else 'WRONG'}",
        flush=True,
    )
    raise SystemExit(0 if ok else 1)


def shard_sums(rank: int) -> dict[str, float]:
    """This node's shard: 100 points of y = 3x + 2 on its own stretch of x."""
    xs = [rank * 10 + i / 10 for i in range(100)]
    ys = [TRUE_SLOPE * x + TRUE_INTERCEPT for x in xs]
    return {
        "n": float(len(xs)),
        "x": sum(xs),
        "y": sum(ys),
        "xx": sum(x * x for x in xs),
        "xy": sum(x * y for x, y in zip(xs, ys, strict=True)),
    }


def serve(local: dict[str, float], nodes: int, port: int) -> dict[str, float]:
    """Rank 0: take every other rank's sums, add them, send the totals back to each."""
    with socket.create_server(("0.0.0.0", port), reuse_port=False) as server:
        peers = [server.accept()[0] for _ in range(nodes - 1)]
        total = dict(local)
        for peer in peers:
            for key, value in receive(peer).items():
                total[key] += value
        for peer in peers:
            send(peer, total)
            peer.close()
    print(f"rank 0: summed the statistics of {nodes} nodes", flush=True)
    return total


def join(local: dict[str, float], master: str, port: int) -> dict[str, float]:
    """Other ranks: send the sums to the master (it may still be starting), get the totals."""
    deadline = time.monotonic() + CONNECT_SECONDS
    while True:
        try:
            peer = socket.create_connection((master, port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with peer:
        peer.settimeout(CONNECT_SECONDS)
        send(peer, local)
        return receive(peer)


def solve(total: dict[str, float]) -> tuple[float, float]:
    """The least-squares line from the summed statistics (the normal equations)."""
    n, sx, sy, sxx, sxy = (total[key] for key in ("n", "x", "y", "xx", "xy"))
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return slope, (sy - slope * sx) / n


def send(peer: socket.socket, message: dict[str, float]) -> None:
    peer.sendall(json.dumps(message).encode() + b"\n")


def receive(peer: socket.socket) -> dict[str, float]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = peer.recv(65536)
        if not chunk:
            raise ConnectionError("the peer closed the connection mid-message")
        data += chunk
    return json.loads(data)


if __name__ == "__main__":
    main()
