"""The interface every infrastructure engine offers, and the typed results it returns.

An engine turns a `ClusterPlan` into a stack named after the run: `preview` says what would
be created, `up` creates it and returns the run's nodes, `destroy` removes it (a stack that is
already gone is success), `list_stacks` finds the stacks its state backend holds, leftovers of
crashed runs included. Progress reaches the caller as `EngineEvent`s through a callback;
engines never print.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import ConfigError, StackError
from taskstack.runtime.spec import Node
from taskstack.settings import Settings


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EngineEvent(_Frozen):
    """One step of an engine operation, for a live progress display."""

    kind: Literal["resource", "diagnostic", "summary"]
    message: str
    resource_type: str | None = None
    resource_name: str | None = None
    action: str | None = None
    """`create`, `delete`, `update`, `replace`, `read`."""
    status: Literal["started", "done", "failed"] | None = None


OnEvent = Callable[[EngineEvent], None]


class PlannedResource(_Frozen):
    """One resource of a preview: its type in the engine's own naming, its name, the action."""

    type: str
    name: str
    action: str = "create"


class StackPreview(_Frozen):
    """What `up` would do to a run's stack, per type and resource by resource (JSON-able)."""

    run_name: str
    engine: str
    resources: tuple[PlannedResource, ...]

    @property
    def counts(self) -> dict[str, int]:
        """How many resources of each type would be created or changed, by type."""
        return dict(Counter(resource.type for resource in self.resources))

    def to_json(self) -> dict[str, Any]:
        """The preview as plain data, for `dstack plan --json` and infra reviews."""
        return {**self.model_dump(), "counts": self.counts}


class Engine(Protocol):
    """What `apply` needs from an engine; implemented by the Pulumi and Terraform engines."""

    name: str

    def preview(self, plan: ClusterPlan) -> StackPreview:
        """Record the plan as the one `up` may create and say what it would create."""
        ...

    def up(self, plan: ClusterPlan, on_event: OnEvent | None = None) -> list[Node]:
        """Create the previewed stack and return its nodes in rank order."""
        ...

    def destroy(self, run_name: str, on_event: OnEvent | None = None) -> None:
        """Remove the run's stack and its state; a stack already gone is not an error."""
        ...

    def list_stacks(self) -> list[str]:
        """Names of the stacks in the state backend (= run names)."""
        ...


def engine_for(settings: Settings, name: str | None = None) -> Engine:
    """The engine `name` (default: the one the settings choose), set up from the settings."""
    name = name or settings.engine
    if name == "pulumi":
        from taskstack.stacks.pulumi_engine import PulumiEngine

        return PulumiEngine(settings)
    if name == "terraform":
        from taskstack.stacks.terraform import TerraformEngine

        return TerraformEngine(settings)
    raise ConfigError(f"unknown engine `{name}`; use `--engine pulumi` or `--engine terraform`")


def nodes_from_outputs(plan: ClusterPlan, outputs: Sequence[dict[str, Any]]) -> list[Node]:
    """The `nodes` output of a stack as the runtime's nodes, checked against the plan's ranks.

    Each output entry holds `rank`, `instance_id`, `public_ip` and `private_ip`. Nodes are
    reached at their public IP, or at the private one when the plan has no public IPs.
    """
    ranks = sorted(int(entry["rank"]) for entry in outputs)
    expected = [node.rank for node in plan.nodes]
    if ranks != sorted(expected):
        raise StackError(
            f"stack of run {plan.run_name} reported ranks {ranks}, the plan has {expected}"
        )

    nodes = [_node(plan, entry) for entry in outputs]
    return sorted(nodes, key=lambda node: node.rank)


# Codes the clouds return when they have no machine for an offer right now; another offer
# (type, zone, region or on-demand) may still succeed. AWS: EC2 API error codes; GCP:
# Compute Engine operation errors; Azure: Compute allocation error codes.
CAPACITY_CODES = (
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientCapacityOnHost",
    "InsufficientReservedInstanceCapacity",
    "SpotMaxPriceTooLow",
    "capacity-not-available",
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "STOCKOUT",
    "AllocationFailed",
    "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest",
    "OverconstrainedZonalAllocationRequest",
    "SkuNotAvailable",
)


def capacity_error_in(text: str) -> str | None:
    """The first capacity error code found in an engine's error output, if any."""
    return next((code for code in CAPACITY_CODES if code in text), None)


def first_error_line(text: str, *, marker: str) -> str:
    """The first line of an engine's error output that starts with `marker`, else the first
    line, with the decoration engines put around it (`stderr:`, Terraform's box) removed."""
    lines = [line.strip().strip("│╷╵").strip() for line in text.splitlines()]
    lines = [line.removeprefix("stdout:").removeprefix("stderr:").strip() for line in lines]
    lines = [line for line in lines if line and not line.startswith("code:")]
    marked = [line for line in lines if line.startswith(marker)]
    return (marked or lines or ["no output"])[0]


def _node(plan: ClusterPlan, entry: dict[str, Any]) -> Node:
    private_ip = entry.get("private_ip")
    public_ip = entry.get("public_ip") or None
    address = public_ip if plan.network.public_ips else private_ip
    if not address or not private_ip:
        raise StackError(
            f"stack of run {plan.run_name}: node {entry.get('rank')} has no "
            f"{'public' if plan.network.public_ips else 'private'} IP address"
        )
    return Node(
        rank=int(entry["rank"]),
        address=address,
        private_ip=private_ip,
        user=plan.ssh_user,
        instance_id=entry.get("instance_id"),
    )
