"""Plans the program tests render: real catalog offers (or a CPU offer) through `build_plan`."""

from __future__ import annotations

from typing import Any

from taskstack.compiler.catalog import Offer, load_packaged
from taskstack.compiler.config import TaskConfig
from taskstack.compiler.plan import ClusterPlan, NetworkPlan, build_plan

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEYFORPROGRAMS test@taskstack"


def catalog_offer(instance_type: str, *, spot: bool = False, region: str | None = None) -> Offer:
    """The packaged catalog's offer of `instance_type` (on-demand unless `spot`)."""
    for offer in load_packaged().offers:
        if offer.instance_type != instance_type or offer.spot != spot:
            continue
        if region is None or offer.region == region:
            return offer
    raise LookupError(f"the packaged catalog has no {instance_type} (spot={spot})")


def multi_host_tpu_offer(name: str = "v5litepod-16") -> Offer:
    """The packaged catalog's slice of several hosts (on-demand)."""
    return catalog_offer(name)


def cpu_offer(backend: str, instance_type: str, region: str, **fields: Any) -> Offer:
    """A CPU-only offer with the given fields (zones, prices the tests choose)."""
    values: dict[str, Any] = {
        "backend": backend,
        "region": region,
        "instance_type": instance_type,
        "price": 0.2,
        "spot": False,
        "cpu": 4,
        "cpu_arch": "x86",
        "memory_gb": 16.0,
        "disk_gb": 100,
        **fields,
    }
    return Offer(**values)


def make_plan(
    offer: Offer | str,
    *,
    nodes: int = 1,
    run_name: str = "demo",
    network: NetworkPlan | None = None,
    image: str | None = None,
    **task: Any,
) -> ClusterPlan:
    """A plan for a task of `nodes` nodes on `offer` (an offer or a catalog instance type)."""
    if isinstance(offer, str):
        offer = catalog_offer(offer)
    config = TaskConfig.model_validate({"commands": ["true"], "nodes": nodes, **task})
    return build_plan(
        config,
        offer,
        run_name=run_name,
        ssh_public_key=SSH_KEY,
        network=network,
        image=image,
    )
