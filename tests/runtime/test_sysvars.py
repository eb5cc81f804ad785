from __future__ import annotations

import pytest

from taskstack.errors import RunError
from taskstack.runtime.spec import JobSpec, Node
from taskstack.runtime.sysvars import mpi_hostfile, system_variables


def _node(rank: int, ip: str) -> Node:
    return Node(rank=rank, address=f"public-{rank}", private_ip=ip)


# Rank 0 has the "largest" address on purpose: ranks must never come from sorting addresses.
NODES = [_node(1, "10.0.0.2"), _node(2, "10.0.0.10"), _node(0, "10.0.0.9")]


def test_variables_follow_ranks_not_addresses() -> None:
    spec = JobSpec(
        run_name="fit-1", image=None, commands=("true",), gpus_per_node=4, repo_id="ab12"
    )

    env = system_variables(spec, NODES, rank=2, hostfile_path="/tmp/hosts")

    assert env == {
        "DSTACK_RUN_NAME": "fit-1",
        "DSTACK_REPO_ID": "ab12",
        "DSTACK_NODES_NUM": "3",
        "DSTACK_NODE_RANK": "2",
        "DSTACK_GPUS_PER_NODE": "4",
        "DSTACK_GPUS_NUM": "12",
        "DSTACK_MASTER_NODE_IP": "10.0.0.9",
        "DSTACK_NODES_IPS": "10.0.0.9\n10.0.0.2\n10.0.0.10",
        "DSTACK_MPI_HOSTFILE": "/tmp/hosts",
    }


@pytest.mark.parametrize(
    ("gpus", "slots"),
    [(0, 1), (1, 1), (8, 8)],
)
def test_hostfile_has_one_line_per_node_in_rank_order(gpus: int, slots: int) -> None:
    text = mpi_hostfile(NODES, gpus_per_node=gpus)

    assert text == (f"10.0.0.9 slots={slots}\n10.0.0.2 slots={slots}\n10.0.0.10 slots={slots}\n")


@pytest.mark.parametrize("ranks", [[0, 2], [1, 2], [0, 0]])
def test_broken_ranks_are_refused(ranks: list[int]) -> None:
    nodes = [_node(rank, f"10.0.0.{index}") for index, rank in enumerate(ranks)]
    spec = JobSpec(run_name="r", image=None, commands=("true",))

    with pytest.raises(RunError, match="ranks"):
        system_variables(spec, nodes, rank=0, hostfile_path="/h")
