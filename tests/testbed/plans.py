"""Cluster plans for engine tests, built the way `compiler.plan.build_plan` builds them."""

from __future__ import annotations

from typing import Any

from taskstack.compiler.plan import RUN_TAG, ClusterPlan, GpuPlan, NetworkPlan, NodePlan

# A syntactically valid ed25519 public key; no private key exists for it.
TEST_SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGHwJlm8k3GkTT2yC0bS6zBGRXbSgCNhPJDqHfXyThj0"
    " test@taskstack"
)

# The test subnet of TESTBED.md: away from the machine's own routes and resolver.
TEST_NETWORK = NetworkPlan(vpc_cidr="10.200.0.0/16", subnet_cidr="10.200.0.0/24")


def aws_plan(
    run_name: str = "train",
    *,
    nodes: int = 2,
    instance_type: str = "t3.micro",
    **overrides: Any,
) -> ClusterPlan:
    """A plan on AWS us-east-1 with `nodes` nodes; keyword arguments override any field."""
    fields: dict[str, Any] = {
        "run_name": run_name,
        "cloud": "aws",
        "region": "us-east-1",
        "zone": "us-east-1a",
        "instance_type": instance_type,
        "price": 0.0104,
        "disk_gb": 20,
        "nodes": tuple(NodePlan(rank=r, name=f"{run_name}-{r}") for r in range(nodes)),
        "placement_group": False,
        "ssh_public_key": TEST_SSH_KEY,
        "network": TEST_NETWORK,
        "tags": {RUN_TAG: run_name},
    }
    fields.update(overrides)
    return ClusterPlan(**fields)


def p5_plan(run_name: str = "big", *, nodes: int = 2, **overrides: Any) -> ClusterPlan:
    """Two p5.48xlarge spot nodes: 8 H100 each, 32 EFA interfaces, a cluster placement group."""
    gpu = GpuPlan(vendor="nvidia", name="H100", count=8, memory_gb=80)
    fields: dict[str, Any] = {
        "instance_type": "p5.48xlarge",
        "price": 31.46,
        "spot": True,
        "max_price": 40.0,
        "disk_gb": 500,
        "placement_group": True,
        "efa_interfaces": 32,
        "gpu": gpu,
    }
    fields.update(overrides)
    return aws_plan(run_name, nodes=nodes, **fields)
