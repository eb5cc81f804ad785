"""The cluster plan: what one run needs, frozen, engine-neutral.

A `ClusterPlan` is built once from a task, its chosen offer, the run name and the run's
SSH public key. The preview, `up` and the runtime all read the same plan, so what was
reviewed is what gets created. It serializes to JSON (`plan.model_dump_json()`), which is
how engines store it beside their state.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Cloud = Literal["aws", "gcp", "azure"]

RUN_TAG = "taskstack:run"
RANK_TAG = "taskstack:rank"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuPlan(_Frozen):
    """The accelerators of one node."""

    vendor: str
    name: str
    count: int
    memory_gb: float


class TpuPlan(_Frozen):
    """A TPU slice: one TPU VM whose hosts are the run's nodes."""

    name: str = Field(description="Accelerator type, e.g. `v5litepod-8`")
    generation: str = Field(description="`v2`, `v3`, `v4`, `v5e`, `v5p`, `v6e`")
    chips: int
    hosts: int


class NetworkPlan(_Frozen):
    """Where the nodes live and who may reach them."""

    vpc_id: str | None = Field(default=None, description="Existing VPC/network; None creates one")
    subnet_id: str | None = Field(default=None, description="Existing subnet; None creates one")
    vpc_cidr: str = "10.200.0.0/16"
    subnet_cidr: str = "10.200.0.0/24"
    ssh_cidr: str = "0.0.0.0/0"
    public_ips: bool = True


class NodePlan(_Frozen):
    """One node with its fixed rank."""

    rank: int
    name: str


class ClusterPlan(_Frozen):
    """Everything an engine needs to create a run's nodes, and nothing it must look up."""

    run_name: str
    cloud: Cloud
    region: str
    zone: str | None = None
    instance_type: str
    spot: bool = False
    price: float = Field(description="USD per hour per node, from the offer")
    max_price: float | None = Field(default=None, description="Spot bid cap, USD per hour")
    disk_gb: int
    nodes: tuple[NodePlan, ...]
    placement_group: bool = Field(description="A cluster placement group/policy (nodes > 1)")
    efa_interfaces: int = 0
    gpu: GpuPlan | None = None
    tpu: TpuPlan | None = None
    image: str | None = Field(default=None, description="Machine image; None means look it up")
    ssh_user: str = "ubuntu"
    ssh_public_key: str
    network: NetworkPlan = NetworkPlan()
    tags: dict[str, str]
    max_duration: int | None = Field(default=None, description="Seconds; armed on the nodes")
    heartbeat_grace: int = Field(default=600, description="Seconds without a heartbeat to halt")

    @property
    def node_count(self) -> int:
        return len(self.nodes)
