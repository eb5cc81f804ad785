"""The system variables every node of a run sees (`DSTACK_*`), and the MPI hostfile.

The names and meanings are dstack's: a task written for dstack reads the same variables
here. Ranks come from the nodes as the engine (or the local backend) numbered them; the
runtime never re-orders nodes by address.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskstack.errors import RunError
from taskstack.runtime.spec import JobSpec, Node


def system_variables(
    spec: JobSpec, nodes: Sequence[Node], *, rank: int, hostfile_path: str
) -> dict[str, str]:
    """The `DSTACK_*` variables of the node with `rank`.

    `hostfile_path` is where the job itself finds the MPI hostfile (a path on the node or
    in its container), written there by the transport from `mpi_hostfile()`.
    """
    ordered = ranked(nodes)
    gpus_per_node = spec.gpus_per_node

    return {
        "DSTACK_RUN_NAME": spec.run_name,
        "DSTACK_REPO_ID": spec.repo_id,
        "DSTACK_NODES_NUM": str(len(ordered)),
        "DSTACK_NODE_RANK": str(rank),
        "DSTACK_GPUS_PER_NODE": str(gpus_per_node),
        "DSTACK_GPUS_NUM": str(gpus_per_node * len(ordered)),
        "DSTACK_MASTER_NODE_IP": ordered[0].private_ip,
        "DSTACK_NODES_IPS": "\n".join(node.private_ip for node in ordered),
        "DSTACK_MPI_HOSTFILE": hostfile_path,
    }


def mpi_hostfile(nodes: Sequence[Node], *, gpus_per_node: int) -> str:
    """One `IP slots=N` line per node in rank order; N is the GPUs per node, 1 on CPU nodes."""
    slots = gpus_per_node if gpus_per_node > 0 else 1
    return "".join(f"{node.private_ip} slots={slots}\n" for node in ranked(nodes))


def ranked(nodes: Sequence[Node]) -> list[Node]:
    """The nodes in rank order; the ranks must be exactly 0..n-1.

    Raises:
        RunError: a rank is missing or repeated (an engine reported a broken cluster).
    """
    ordered = sorted(nodes, key=lambda node: node.rank)
    ranks = [node.rank for node in ordered]
    if ranks != list(range(len(ordered))):
        raise RunError(f"the run's nodes have ranks {ranks}; expected 0..{len(ordered) - 1}")
    return ordered
