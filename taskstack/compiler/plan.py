"""The cluster plan: what one run needs, frozen, engine-neutral.

A `ClusterPlan` is built once from a task, its chosen offer, the run name and the run's
SSH public key (`build_plan`). The preview, `up` and the runtime all read the same plan, so
what was reviewed is what gets created. It serializes to JSON (`plan.model_dump_json()`),
which is how engines store it beside their state.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from taskstack.errors import ConfigError

Cloud = Literal["aws", "gcp", "azure"]
Arch = Literal["x86_64", "arm64"]

RUN_TAG = "taskstack:run"
RANK_TAG = "taskstack:rank"

DEFAULT_HEARTBEAT_GRACE = 600


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

    @model_validator(mode="after")
    def _subnet_with_vpc(self) -> NetworkPlan:
        # A run never adds a subnet to someone else's VPC: it could not know the routes.
        if self.vpc_id and not self.subnet_id:
            raise ConfigError(
                f"`vpc_id: {self.vpc_id}` needs a `subnet_id` in it; set both or neither"
            )
        return self


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
    project: str | None = Field(
        default=None, description="GCP project; None leaves it to the engine's provider config"
    )
    instance_type: str
    arch: Arch = "x86_64"
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
    heartbeat_grace: int = Field(
        default=DEFAULT_HEARTBEAT_GRACE, description="Seconds without a heartbeat to halt"
    )

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    @property
    def nvidia(self) -> bool:
        """Whether the nodes carry NVIDIA GPUs (the image and user data then set them up)."""
        return self.gpu is not None and self.gpu.vendor.lower() == "nvidia"

    def node_tags(self, rank: int) -> dict[str, str]:
        """The run's tags plus the rank of the node a resource belongs to."""
        return {**self.tags, RANK_TAG: str(rank)}


def build_plan(
    task: Any,
    offer: Any,
    *,
    run_name: str,
    ssh_public_key: str,
    network: NetworkPlan | None = None,
    image: str | None = None,
    project: str | None = None,
    heartbeat_grace: int = DEFAULT_HEARTBEAT_GRACE,
) -> ClusterPlan:
    """Freeze a task and its chosen offer into the plan every engine renders.

    `task` is a `TaskConfig` and `offer` an `Offer` (typed loosely so this module does not
    import the config and offers modules at start-up). A TPU offer becomes one slice whose
    hosts are the nodes; otherwise the task's `nodes` are the nodes.

    Raises:
        ConfigError: the run name is not a valid resource name, or the task asks for several
            nodes of a multi-host TPU slice.
    """
    _check_run_name(run_name)
    tpu = _tpu_plan(offer)
    count = _node_count(task, tpu=tpu)
    cloud = offer.backend
    network = network or NetworkPlan()
    if tpu is None:
        _check_subnet_holds(network, cloud=cloud, nodes=count)

    return ClusterPlan(
        run_name=run_name,
        cloud=cloud,
        region=offer.region,
        zone=_first_zone(offer),
        project=project,
        instance_type=offer.instance_type,
        arch="arm64" if getattr(offer, "cpu_arch", "x86") == "arm" else "x86_64",
        spot=bool(offer.spot),
        # A slice's offer is priced whole; its hosts are the nodes.
        price=float(offer.price) / (tpu.hosts if tpu is not None else 1),
        max_price=_max_price(task, offer),
        disk_gb=int(offer.disk_gb),
        nodes=tuple(NodePlan(rank=r, name=f"{run_name}-{r}") for r in range(count)),
        placement_group=count > 1
        and tpu is None
        and supports_cluster_placement(cloud=cloud, instance_type=offer.instance_type),
        efa_interfaces=int(getattr(offer, "efa_interfaces", 0) or 0),
        gpu=_gpu_plan(offer) if tpu is None else None,
        tpu=tpu,
        image=image,
        ssh_public_key=ssh_public_key.strip(),
        network=network,
        tags={**(getattr(task, "tags", None) or {}), RUN_TAG: run_name},
        heartbeat_grace=heartbeat_grace,
        max_duration=_max_duration(task),
    )


# Addresses each cloud keeps for itself in every subnet (network, gateway, DNS, broadcast...).
_RESERVED_IN_SUBNET = {"aws": 5, "azure": 5, "gcp": 4}


def _check_subnet_holds(network: NetworkPlan, *, cloud: str, nodes: int) -> None:
    """Refuse a run the subnet it creates cannot address: `up` would fail half-way, after the
    first instances were paid for. An existing subnet's size is the cloud's to check."""
    if network.subnet_id:
        return
    subnet = ipaddress.ip_network(network.subnet_cidr, strict=False)
    room = subnet.num_addresses - _RESERVED_IN_SUBNET.get(cloud, 5)
    if nodes > room:
        larger = " or a larger `backends.aws.subnet_cidr`" if cloud == "aws" else ""
        raise ConfigError(
            f"`nodes: {nodes}` does not fit the run's subnet {network.subnet_cidr} ({room} "
            f"addresses on {cloud}); lower `nodes`{larger}"
        )


def supports_cluster_placement(*, cloud: str, instance_type: str) -> bool:
    """Whether a cluster placement group (AWS), compact policy (GCP) or PPG (Azure) fits.

    AWS: burstable (T), Mac and first-generation types cannot join cluster placement groups
    (EC2 user guide, "Placement groups", rules and limitations). GCP: compact placement
    policies exist for the series listed in "About compact placement policies". Azure:
    proximity placement groups take any size.
    """
    if cloud == "aws":
        family = instance_type.split(".")[0].lower()
        return not re.match(r"^(t\d|mac|m1|m2|m3|c1|c3|r3|i2|hs1|cc2|cr1|a1)", family)
    if cloud == "gcp":
        return instance_type.split("-")[0].lower() in _GCP_COMPACT_SERIES
    return True


def tpu_slice(accelerator: str) -> TpuPlan:
    """Read a TPU accelerator type (`v5litepod-8`, `v4-32`): generation, chips and hosts.

    Raises:
        ConfigError: the name is not `<version>-<size>` of a known generation.
    """
    version, _, size = accelerator.partition("-")
    generation = _TPU_GENERATIONS.get(version)
    if generation is None or not size.isdigit():
        raise ConfigError(
            f"TPU type `{accelerator}` is not one taskstack knows, e.g. `v5litepod-8`"
        )

    # v2-v4 and v5p count TensorCores in the name (two per chip); v5e and v6e count chips.
    # Single-host slices hold up to 8 v5e/v6e chips or 4 of the others; larger ones use
    # hosts of 4 chips (Cloud TPU docs, "TPU versions").
    cores_per_chip = 2 if generation in {"v2", "v3", "v4", "v5p"} else 1
    chips = int(size) // cores_per_chip
    single_host_max = 8 if generation in {"v5e", "v6e"} else 4
    hosts = 1 if chips <= single_host_max else -(-chips // 4)
    return TpuPlan(name=accelerator, generation=generation, chips=chips, hosts=hosts)


# GCP machine series that accept a compact placement policy.
_GCP_COMPACT_SERIES = frozenset(
    {"a2", "a3", "a4", "c2", "c2d", "c3", "c3d", "c4", "c4d", "g2", "h3", "n2", "n2d", "z3"}
)

# Run names become resource names on every cloud: GCP allows the strictest set.
_RUN_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")


def _check_run_name(run_name: str) -> None:
    if not _RUN_NAME.match(run_name):
        raise ConfigError(
            f"run name `{run_name}` is not usable as a cloud resource name: use lowercase "
            "letters, digits and dashes, starting with a letter, at most 41 characters"
        )


def _tpu_plan(offer: Any) -> TpuPlan | None:
    tpu = getattr(offer, "tpu", None)
    if not tpu:
        return None
    return tpu_slice(tpu.name)


_TPU_GENERATIONS = {
    "v2": "v2",
    "v3": "v3",
    "v4": "v4",
    "v5litepod": "v5e",
    "v5e": "v5e",
    "v5p": "v5p",
    "v6e": "v6e",
}


def _node_count(task: Any, *, tpu: TpuPlan | None) -> int:
    nodes = int(getattr(task, "nodes", 1) or 1)
    if tpu is None:
        return nodes
    if nodes > 1 and nodes != tpu.hosts:
        raise ConfigError(
            f"`nodes: {nodes}` does not fit TPU slice `{tpu.name}` ({tpu.hosts} hosts): "
            f"a slice is one TPU VM whose hosts are the nodes; set `nodes: {tpu.hosts}` or "
            "drop `nodes`"
        )
    return tpu.hosts


def _first_zone(offer: Any) -> str | None:
    zones = getattr(offer, "zones", None) or []
    return sorted(zones)[0] if zones else None


def _max_price(task: Any, offer: Any) -> float | None:
    """The spot bid cap: the task's `max_price`; None leaves the cloud's default cap.

    The default cap is the on-demand price on AWS and Azure (`-1`); bidding the offer's
    current spot price instead would lose the node at the first price tick.
    """
    if not offer.spot:
        return None
    task_cap = getattr(task, "max_price", None)
    return float(task_cap) if task_cap is not None else None


def _gpu_plan(offer: Any) -> GpuPlan | None:
    count = int(getattr(offer, "gpu_count", 0) or 0)
    if count == 0:
        return None
    return GpuPlan(
        vendor=str(offer.gpu_vendor or "nvidia").lower(),
        name=str(offer.gpu_name),
        count=count,
        memory_gb=float(offer.gpu_memory_gb or 0),
    )


def _max_duration(task: Any) -> int | None:
    value = getattr(task, "max_duration", None)
    if value is None or value is False or value == "off":
        return None
    if isinstance(value, int | float):
        return int(value)
    raise ConfigError(f"`max_duration` reached the plan as {value!r}; it must be seconds by then")
