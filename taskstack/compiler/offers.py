"""Offers: which instances of the catalog fit a task, cheapest first.

`find_offers` takes a task (or `Requirements`) and the backends in use and returns every
matching offer with the catalog it came from. The rules follow dstack 0.22.5 and gpuhunt's
matching, so a `.dstack.yml` asks for the same machines here:

- `cpu`, `memory`: ranges over the instance's vCPUs and RAM; `cpu.arch` when given.
- `disk`: the boot volume is created at the range's minimum (100GB by default), so only an
  instance with a disk of its own (the local machine) can be too small, and only a minimum
  above the cloud's largest boot volume (`BOOT_VOLUME_MAX_GB`) too large.
- `gpu`: vendor, names (case-insensitive), count, memory per GPU, total memory and minimum
  compute capability (from gpuhunt's table of known NVIDIA GPUs). A TPU slice is a GPU named
  like the slice (`v5litepod-8`), count 1, vendor `google`, memory the slice's HBM. When the
  count may be 0, offers without GPUs (CPU-only instances) match whatever else the GPU part
  says.
- `nodes`: a TPU slice is one TPU VM whose hosts are the run's nodes (`compiler.plan`), so a
  slice fits a task whose `nodes` is its host count. A task that names a multi-host slice
  (`gpu: v5litepod-16`) and leaves `nodes` at 1 gets the slice's hosts as its nodes; no other
  task is offered a multi-host slice. dstack 0.22.5 offers no multi-host slice at all.
- `spot_policy` (`on-demand` when unset, as in dstack), `max_price`, `backends`, `regions`,
  `availability_zones`, `instance_types`.

When nothing matches, `OffersError` names the requirement that removed the last offers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskstack.compiler.catalog import (
    BACKENDS,
    Catalog,
    CatalogSource,
    Offer,
    load_catalog,
)
from taskstack.compiler.source import cut
from taskstack.errors import ConfigError, OffersError

__all__ = [
    "Catalog",
    "Offer",
    "OfferQuery",
    "Requirements",
    "Span",
    "find_offers",
    "format_price",
    "format_resources",
    "tpu_hosts",
]

SpotPolicy = Literal["spot", "on-demand", "auto"]

# dstack's `tpu` vendor is gpuhunt's `google`.
_VENDOR_ALIASES = {"tpu": "google"}


class Span(BaseModel):
    """A closed range with optional ends, as in `2..`, `..8`, `24GB..40GB`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: float | None = None
    max: float | None = None

    def contains(self, value: float) -> bool:
        """Whether `value` lies within both ends (an open end accepts anything)."""
        if self.min is not None and value < self.min:
            return False
        return self.max is None or value <= self.max

    def is_any(self) -> bool:
        """Whether the range accepts every value (`0..` counts as any count or size)."""
        return not self.min and self.max is None

    def text(self, unit: str = "") -> str:
        """`2..`, `..8`, `8`, `24GB..40GB` (the way a config writes it)."""
        low = f"{_number(self.min)}{unit}" if self.min is not None else ""
        high = f"{_number(self.max)}{unit}" if self.max is not None else ""
        return low if self.min == self.max else f"{low}..{high}"

    @classmethod
    def of(cls, value: Any) -> Span | None:
        """A span from a model with `min`/`max`, a dict, a number, or None."""
        if value is None:
            return None
        if isinstance(value, int | float):
            return cls(min=value, max=value)
        if isinstance(value, dict):
            return cls(min=value.get("min"), max=value.get("max"))
        return cls(min=value.min, max=value.max)


class Requirements(BaseModel):
    """What a task asks of one node and where it may run; what offers are matched against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_arch: str | None = Field(default=None, description="`x86` or `arm`; None = either")
    cpu: Span = Span(min=2)
    memory_gb: Span = Span(min=8)
    disk_gb: Span = Span(min=100)
    gpu_vendor: str | None = None
    gpu_names: tuple[str, ...] | None = None
    gpu_count: Span = Span(min=0)
    gpu_memory_gb: Span | None = Field(default=None, description="Per GPU")
    gpu_total_memory_gb: Span | None = None
    compute_capability: tuple[int, int] | None = Field(default=None, description="Minimum")
    spot_policy: SpotPolicy = "on-demand"
    max_price: float | None = None
    backends: tuple[str, ...] | None = None
    regions: tuple[str, ...] | None = None
    availability_zones: tuple[str, ...] | None = None
    instance_types: tuple[str, ...] | None = None
    nodes: int = Field(default=1, ge=1, description="The task's `nodes`; TPU slice hosts")

    @classmethod
    def from_task(cls, task: Any) -> Requirements:
        """The requirements of a parsed task (`compiler.config.TaskConfig`)."""
        fields = cls.resource_fields(task.resources)
        return cls(
            **fields,
            nodes=int(getattr(task, "nodes", None) or 1),
            spot_policy=task.spot_policy or "on-demand",
            max_price=task.max_price,
            backends=_names(task.backends),
            regions=_names(task.regions),
            availability_zones=_names(getattr(task, "availability_zones", None)),
            instance_types=_names(getattr(task, "instance_types", None)),
        )

    @staticmethod
    def resource_fields(resources: Any) -> dict[str, Any]:
        """The resource part of the requirements from a `ResourcesSpec`."""
        fields: dict[str, Any] = {}
        cpu = resources.cpu
        if cpu is not None:
            fields["cpu_arch"] = _text(getattr(cpu, "arch", None))
            fields["cpu"] = Span.of(getattr(cpu, "count", cpu))
        if resources.memory is not None:
            fields["memory_gb"] = Span.of(resources.memory)
        if resources.disk is not None:
            fields["disk_gb"] = Span.of(resources.disk.size)
        if resources.gpu is not None:
            fields.update(_gpu_fields(resources.gpu))
        return {key: value for key, value in fields.items() if value is not None}


def _gpu_fields(gpu: Any) -> dict[str, Any]:
    vendor = _text(gpu.vendor)
    capability = gpu.compute_capability
    return {
        "gpu_vendor": _VENDOR_ALIASES.get(vendor, vendor) if vendor else None,
        "gpu_names": tuple(gpu.name) if gpu.name else None,
        "gpu_count": Span.of(gpu.count),
        "gpu_memory_gb": Span.of(gpu.memory),
        "gpu_total_memory_gb": Span.of(gpu.total_memory),
        "compute_capability": tuple(int(part) for part in capability) if capability else None,
    }


class OfferQuery(BaseModel):
    """The result of one match: every fitting offer, cheapest first, and its catalog."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offers: tuple[Offer, ...]
    catalog: CatalogSource
    requirements: Requirements

    @property
    def total(self) -> int:
        """How many offers matched."""
        return len(self.offers)

    @property
    def source(self) -> str:
        """The catalog used, for people: `packaged catalog (2026-12-03, 2 h old)`."""
        return self.catalog.describe()


def find_offers(
    requirements_or_task: Requirements | Any,
    *,
    backends: Sequence[str],
    catalog: Catalog | None = None,
    any_backend: bool = False,
    local_offer: Offer | None = None,
) -> OfferQuery:
    """Every offer that fits, cheapest first (ties in a fixed order).

    Args:
        requirements_or_task: `Requirements`, or a task to derive them from.
        backends: the backends in use (`settings.backends_in_use()`); `local` adds this
            machine's offer. Offers elsewhere are left out, unless `any_backend`.
        catalog: the catalog to search; loaded with `load_catalog()` when None.
        any_backend: also offer every backend of the catalog, marked `configured=False`
            (`dstack offer --backend gcp` for a user who has not configured GCP).
        local_offer: this machine's offer; measured when None and `local` is in use.

    Raises:
        OffersError: nothing fits; the message names the requirement that removed the last
            offers.
    """
    requirements = _as_requirements(requirements_or_task)
    catalog = catalog if catalog is not None else load_catalog()
    in_use = frozenset(backends)
    candidates = _candidates(catalog, backends=backends, local_offer=local_offer)

    filters = _filters(requirements, in_use=in_use, any_backend=any_backend)
    try:
        matched = _match(candidates, filters=filters, source=catalog.source)
    except OffersError:
        # A typo in a GPU name, or a backend taskstack has no engine for, says more than
        # "removed the last offers".
        _check_gpu_names(requirements.gpu_names or (), catalog=catalog)
        _check_backend_names(requirements.backends or ())
        raise
    fitted = (_fitted(offer, requirements, in_use=in_use) for offer in matched)
    offers = sorted(fitted, key=_order)
    return OfferQuery(offers=tuple(offers), catalog=catalog.source, requirements=requirements)


def format_resources(offer: Offer) -> str:
    """`96xCPU, 1152GB, 8xA100 (40GB), 100GB`: what one node of the offer has."""
    parts = [f"{offer.cpu}xCPU" + (" (arm)" if offer.cpu_arch == "arm" else "")]
    parts.append(f"{_number(offer.memory_gb)}GB")
    if offer.tpu is not None:
        # CPUs and RAM are one host's; a slice of several hosts says how many there are.
        hosts = tpu_hosts(offer)
        memory = f", {_number(offer.gpu_memory_gb)}GB" if offer.gpu_memory_gb else ""
        chips = f"{offer.tpu.chips} chip" + ("s" if offer.tpu.chips != 1 else "")
        across = f", {hosts} hosts" if hosts > 1 else ""
        parts.append(f"{offer.tpu.name} ({chips}{across}{memory})")
    elif offer.gpu_count:
        memory = f" ({_number(offer.gpu_memory_gb)}GB)" if offer.gpu_memory_gb else ""
        parts.append(f"{offer.gpu_count}x{offer.gpu_name}{memory}")
    elif offer.provider_data.get("accelerator"):
        # Trainium has no gpuhunt vendor, so the catalog keeps it beside the GPU columns.
        data = offer.provider_data
        device_gb = data.get("accelerator_memory_gb")
        suffix = f" ({_number(device_gb)}GB)" if device_gb else ""
        parts.append(f"{data.get('accelerator_count', 1)}x{data['accelerator']}{suffix}")
    parts.append(f"{offer.disk_gb}GB")
    return ", ".join(parts)


def tpu_hosts(offer: Offer) -> int:
    """How many hosts, and so nodes, the offer's TPU slice has; 1 for any other offer.

    The count is the plan's (`compiler.plan.tpu_slice`), so what is matched is what is built.
    """
    if offer.tpu is None:
        return 1
    from taskstack.compiler.plan import tpu_slice

    try:
        return tpu_slice(offer.tpu.name).hosts
    except ConfigError:
        # A slice type the plan does not know; choosing it fails there with its own message.
        return 1


def format_price(price: float) -> str:
    """`$32.77` per hour; prices under a dollar keep four significant digits (`$0.1845`)."""
    if price >= 1:
        return f"${price:.2f}"
    return f"${price:.4g}"


# --- Steps of find_offers ----------------------------------------------------------------------


def _as_requirements(value: Requirements | Any) -> Requirements:
    if isinstance(value, Requirements):
        return value
    return Requirements.from_task(value)


def _candidates(
    catalog: Catalog, *, backends: Sequence[str], local_offer: Offer | None
) -> list[Offer]:
    """The catalog's offers plus this machine's when `local` is in use.

    Offers of backends not in use stay in: the last filter removes them, so that a task
    fitting only elsewhere gets a message saying where.
    """
    offers = list(catalog.offers)
    if "local" in backends:
        if local_offer is None:
            from taskstack.compiler.machine import local_offer as measure_local

            local_offer = measure_local()
        offers.append(local_offer)
    return offers


@dataclass(frozen=True)
class _Filter:
    """One requirement: its name in the config, the value asked, and the test."""

    field: str
    asked: str
    test: Callable[[Offer], bool]

    def describe(self) -> str:
        return f"`{self.field}: {cut(self.asked)}`" if self.asked else f"`{self.field}`"


def _filters(
    requirements: Requirements, *, in_use: frozenset[str], any_backend: bool
) -> list[_Filter]:
    """The active requirements, in the order their effect is reported.

    Placement comes first, then resources, then price, then the backends in use last: when
    a task only fits on a cloud that is not configured, that is the message that helps.
    """
    r = requirements
    filters: list[_Filter] = []
    add = filters.append

    if r.backends is not None:
        named = set(r.backends)
        add(_Filter("backends", _list(r.backends), lambda o: o.backend in named))
    if r.regions is not None:
        regions = {name.lower() for name in r.regions}
        add(_Filter("regions", _list(r.regions), lambda o: o.region.lower() in regions))
    if r.availability_zones is not None:
        add(_Filter("availability_zones", _list(r.availability_zones), _zone_test(r)))
    if r.instance_types is not None:
        types = {name.lower() for name in r.instance_types}
        add(_Filter("instance_types", _list(r.instance_types), _instance_test(types)))
    if r.spot_policy != "auto":
        want_spot = r.spot_policy == "spot"
        add(_Filter("spot_policy", r.spot_policy, lambda o: o.spot == want_spot))

    filters.extend(_resource_filters(r))
    add(_nodes_filter(r))

    if r.max_price is not None:
        price = r.max_price
        add(_Filter("max_price", _number(price), lambda o: o.price <= price + 1e-9))
    if not any_backend:
        add(_Filter("backends in use", _list(sorted(in_use)), lambda o: o.backend in in_use))
    return filters


BOOT_VOLUME_MAX_GB = {"aws": 16_384, "gcp": 65_536, "azure": 4_095}
"""The largest boot volume each cloud makes, in GB (GiB): an EBS gp3 volume, a GCP
persistent disk, an Azure managed OS disk."""


def _resource_filters(r: Requirements) -> list[_Filter]:
    filters: list[_Filter] = []
    add = filters.append

    if r.cpu_arch is not None:
        arch = r.cpu_arch.lower()
        add(_Filter("resources.cpu.arch", arch, lambda o: o.cpu_arch == arch))
    add(_Filter("resources.cpu", r.cpu.text(), lambda o: r.cpu.contains(o.cpu)))
    memory = r.memory_gb
    add(_Filter("resources.memory", memory.text("GB"), lambda o: memory.contains(o.memory_gb)))
    disk_min = r.disk_gb.min or 0

    def disk_fits(offer: Offer) -> bool:
        # Volumes are made at the minimum, so only an instance's own disk can be too small.
        if offer.disk_fixed:
            return offer.disk_gb >= disk_min
        return disk_min <= BOOT_VOLUME_MAX_GB.get(offer.backend, math.inf)

    add(_Filter("resources.disk", r.disk_gb.text("GB"), disk_fits))

    filters.extend(_gpu_filters(r))
    return filters


def _gpu_filters(r: Requirements) -> list[_Filter]:
    """The GPU part, which (as in gpuhunt) does not apply to GPU-less offers when 0 GPUs do."""
    zero_ok = not r.gpu_count.min

    def gpu(field: str, asked: str, test: Callable[[Offer], bool]) -> _Filter:
        return _Filter(field, asked, lambda o: (zero_ok and o.gpu_count == 0) or test(o))

    filters: list[_Filter] = []
    add = filters.append
    if r.gpu_vendor is not None:
        vendor = r.gpu_vendor.lower()
        add(gpu("resources.gpu.vendor", vendor, lambda o: o.gpu_vendor == vendor))
    if r.gpu_names is not None:
        names = {name.lower() for name in r.gpu_names}
        asked = ",".join(r.gpu_names)
        add(gpu("resources.gpu.name", asked, lambda o: (o.gpu_name or "").lower() in names))
    if not r.gpu_count.is_any():
        count = r.gpu_count
        add(gpu("resources.gpu.count", count.text(), lambda o: count.contains(o.gpu_count)))
    if r.gpu_memory_gb is not None:
        per_gpu = r.gpu_memory_gb
        asked = per_gpu.text("GB")
        add(gpu("resources.gpu.memory", asked, lambda o: per_gpu.contains(o.gpu_memory_gb or 0)))
    if r.gpu_total_memory_gb is not None:
        total = r.gpu_total_memory_gb
        asked = total.text("GB")
        add(gpu("resources.gpu.total_memory", asked, lambda o: total.contains(_total_memory(o))))
    if r.compute_capability is not None:
        minimum = r.compute_capability
        asked = f"{minimum[0]}.{minimum[1]}"
        add(gpu("resources.gpu.compute_capability", asked, _capability_test(minimum)))
    return filters


def _nodes_filter(r: Requirements) -> _Filter:
    """A TPU slice fits a task of as many nodes as it has hosts (see the module docstring).

    The plan builds one TPU VM per run, never one per node, so a single-host slice does not
    fit a task of several nodes either.
    """
    named = {name.lower().removeprefix("tpu-") for name in r.gpu_names or ()}

    def test(offer: Offer) -> bool:
        if offer.tpu is None:
            return True
        hosts = tpu_hosts(offer)
        return hosts == r.nodes or (r.nodes == 1 and offer.tpu.name.lower() in named)

    return _Filter("nodes", str(r.nodes), test)


def _match(
    candidates: list[Offer], *, filters: list[_Filter], source: CatalogSource
) -> list[Offer]:
    """The offers passing every filter; raise naming the filter that removed the last ones.

    One pass: each offer records the first filter it fails. Applied in order, filter `k`
    leaves the offers whose first failure comes after `k`, so the filter that empties the
    list is the latest first-failure of all, and it removed the offers that failed there.
    """
    matched: list[Offer] = []
    failed_at: list[tuple[int, Offer]] = []
    for offer in candidates:
        index = next((i for i, f in enumerate(filters) if not f.test(offer)), None)
        if index is None:
            matched.append(offer)
        else:
            failed_at.append((index, offer))

    if matched:
        return matched
    raise _no_match(failed_at, filters=filters, source=source)


def _no_match(
    failed_at: list[tuple[int, Offer]], *, filters: list[_Filter], source: CatalogSource
) -> OffersError:
    if not failed_at:
        return OffersError(f"no offers: the {source.describe()} has no offers for these backends")

    last = max(index for index, _ in failed_at)
    removed = sorted((offer for index, offer in failed_at if index == last), key=_order)
    cheapest = removed[0]
    culprit = filters[last]
    example = f"{cheapest.backend} {cheapest.instance_type} at {format_price(cheapest.price)}/h"
    if culprit.field == "backends in use":
        from taskstack.settings import config_path

        elsewhere = _list(sorted({offer.backend for offer in removed}))
        return OffersError(
            f"no offer fits on the backends in use ({culprit.asked}); {len(removed)} offers on "
            f"{elsewhere} would (cheapest: {example}): configure one in {config_path()}, "
            f"or look with `dstack offer --backend {cheapest.backend}`"
        )
    if culprit.field == "nodes":
        hosts = tpu_hosts(cheapest)
        return OffersError(
            f"no offer fits `nodes: {culprit.asked}`: a TPU slice is one TPU VM whose hosts "
            f"are the nodes, and the cheapest ({example}) has {hosts} "
            f"host{'s' if hosts > 1 else ''}; set `nodes: {hosts}` or pick a slice of "
            f"{culprit.asked} hosts"
        )
    plural = "offer" if len(removed) == 1 else "offers"
    return OffersError(
        f"no offer fits: {culprit.describe()} removed the last {len(removed)} {plural} "
        f"(the cheapest was {example}); relax it and see `dstack offer`"
    )


def _check_gpu_names(asked: Sequence[str], *, catalog: Catalog) -> None:
    """Raise naming the GPU names that no catalog row and no gpuhunt table knows."""
    known = _known_gpu_names(catalog)
    unknown = [name for name in asked if not _is_known_gpu(name, known=known)]
    if not unknown:
        return
    close = difflib.get_close_matches(unknown[0].lower(), list(known), n=3, cutoff=0.5)
    spelled = [f"`{known[name]}`" for name in close]
    hint = f"did you mean {' or '.join(spelled)}?" if close else "`dstack offer` lists the GPUs"
    names = ", ".join(f"`{name}`" for name in unknown)
    plural = "s" if len(unknown) > 1 else ""
    raise OffersError(f"unknown GPU name{plural} {names} in `resources.gpu.name`; {hint}")


def _check_backend_names(asked: Sequence[str]) -> None:
    """Raise naming a backend of the task (dstack has more) that taskstack cannot run on."""
    unknown = [name for name in asked if name not in BACKENDS]
    if unknown:
        raise OffersError(
            f"`backends: {unknown[0]}`: taskstack runs tasks on aws, gcp, azure and local "
            f"only; name one of those in `backends`"
        )


def _known_gpu_names(catalog: Catalog) -> dict[str, str]:
    """GPU names of the catalog's rows and of gpuhunt's accelerator tables, by lowercase."""
    from gpuhunt._internal.constraints import KNOWN_ACCELERATORS

    names = [info.name for info in KNOWN_ACCELERATORS]
    names.extend(offer.gpu_name for offer in catalog.offers if offer.gpu_name)
    return {name.lower(): name for name in names}


def _is_known_gpu(name: str, *, known: dict[str, str]) -> bool:
    lowered = name.lower().removeprefix("tpu-")
    # A TPU slice (`v5litepod-8`) is known by its generation too, whatever its size.
    return lowered in known or lowered.rpartition("-")[0] in known


def _fitted(offer: Offer, requirements: Requirements, *, in_use: frozenset[str]) -> Offer:
    """The offer as a run would get it: volume at the disk minimum, the zones asked for."""
    update: dict[str, Any] = {"configured": offer.backend in in_use}
    if not offer.disk_fixed:
        update["disk_gb"] = _volume_gb(requirements.disk_gb, default=offer.disk_gb)
    if requirements.availability_zones is not None and offer.zones:
        wanted = set(requirements.availability_zones)
        update["zones"] = tuple(zone for zone in offer.zones if zone in wanted)
    elif requirements.availability_zones is not None:
        update["zones"] = tuple(
            zone for zone in requirements.availability_zones if _zone_in(zone, offer.region)
        )
    return offer.model_copy(update=update)


def _volume_gb(disk: Span, *, default: int) -> int:
    """The range's minimum; with only a maximum (`..50GB`), the default capped by it."""
    if disk.min:
        return math.ceil(disk.min)
    return math.ceil(min(default, disk.max)) if disk.max is not None else default


_BACKEND_RANK = {name: rank for rank, name in enumerate(BACKENDS)}


def _order(offer: Offer) -> tuple:
    """Cheapest first; then a fixed order, so equal prices never swap between runs."""
    rank = _BACKEND_RANK.get(offer.backend, len(_BACKEND_RANK))
    return (offer.price, rank, offer.backend, offer.region, offer.instance_type, offer.spot)


# --- Small tests and helpers -------------------------------------------------------------------


def _zone_test(r: Requirements) -> Callable[[Offer], bool]:
    wanted = set(r.availability_zones or ())

    def test(offer: Offer) -> bool:
        if offer.zones:
            return bool(wanted.intersection(offer.zones))
        # Catalog rows without zones (AWS, Azure) take any zone of their region.
        return any(_zone_in(zone, offer.region) for zone in wanted)

    return test


def _zone_in(zone: str, region: str) -> bool:
    """`us-east-1a` is in `us-east-1`; `us-central1-a` in `us-central1`; Azure's `1` anywhere."""
    if zone.isdigit():
        return True
    suffix = zone[len(region) :] if zone.startswith(region) else ""
    return suffix.lstrip("-").isalpha() and len(suffix.lstrip("-")) == 1


def _instance_test(types: set[str]) -> Callable[[Offer], bool]:
    return lambda offer: offer.instance_type.lower() in types


def _capability_test(minimum: tuple[int, int]) -> Callable[[Offer], bool]:
    from gpuhunt import AcceleratorVendor, find_accelerators

    def test(offer: Offer) -> bool:
        if offer.gpu_vendor != "nvidia" or not offer.gpu_name:
            return False
        known = find_accelerators(names=[offer.gpu_name], vendors=[AcceleratorVendor.NVIDIA])
        return bool(known) and known[0].compute_capability >= minimum

    return test


def _total_memory(offer: Offer) -> float:
    return offer.gpu_count * (offer.gpu_memory_gb or 0)


def _names(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(str(getattr(item, "value", item)) for item in value)


def _text(value: Any) -> str | None:
    """An enum's value or a string, lower-cased; None stays None."""
    if value is None:
        return None
    return str(getattr(value, "value", value)).lower()


def _list(values: Sequence[str]) -> str:
    return ", ".join(values)


def _number(value: float | None) -> str:
    """`16`, `22.4`, `0.0627`: integers without `.0`, others with few digits."""
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}".rstrip("0").rstrip(".")
