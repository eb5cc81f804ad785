"""The offers catalog: every instance type the clouds sell, with its specs and hourly price.

Where the offers come from, in this order:

1. `TASKSTACK_CATALOG=DIR`: a folder holding either `offers.csv` (the packaged format: gpuhunt's
   v2 columns plus a leading `provider` column) or one gpuhunt file per cloud (`aws.csv`, ...).
2. `TASKSTACK_OFFLINE=1` or `offline=True`: the catalog packaged with taskstack.
3. gpuhunt's online catalog, kept in `~/.taskstack/catalog/` for an hour so an apply does not
   wait on the network each time. A download that takes longer than a few seconds is given up.
4. When the download fails: the last downloaded copy, or else the packaged catalog.

Rows are read by the rules of gpuhunt's v2 loader (`item_from_row`: required and optional
columns, vendor and CPU defaults, the `tpu-` prefix of older files) straight into plain
`Offer`s that the matching (`offers.py`) and the plan compiler read. gpuhunt itself, with the
HTTP stack it imports, is loaded only to find its bucket for a download.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from taskstack.errors import ConfigError
from taskstack.home import ensure_home, taskstack_home

log = logging.getLogger(__name__)

CLOUDS = ("aws", "gcp", "azure")
BACKENDS = (*CLOUDS, "local")
"""Every backend taskstack runs tasks on."""
DEFAULT_DISK_GB = 100

# The date `data/SOURCES.md` gives for the packaged rows; the source line reports its age.
PACKAGED_DATE = date(2026, 12, 3)

ONLINE_DEADLINE = 3.0  # seconds for the whole download before we fall back
CACHE_TTL = 3600.0  # seconds a downloaded catalog is used without asking again
FAILURE_BACKOFF = 600.0  # seconds without download attempts after one failed

SourceKind = Literal["directory", "packaged", "online", "cache"]


class TpuSlice(BaseModel):
    """A single-host TPU slice, as sold by GCP (`v5litepod-8`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Accelerator type, e.g. `v5litepod-8`")
    generation: str = Field(description="`v2`, `v3`, `v4`, `v5e`, `v5p`, `v6e`")
    chips: int


class Offer(BaseModel):
    """One instance type in one region at one price; what a run's nodes are made of.

    `disk_gb` is the boot volume a run gets: the task's disk minimum (100GB by default),
    unless `disk_fixed` says the instance comes with a disk of its own (the local machine).
    For TPUs `gpu_name` is the slice name and `gpu_count` is 1, as in gpuhunt; `tpu` has the
    chip count. `configured` is False for offers of a backend that is not in use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    region: str
    instance_type: str
    price: float = Field(description="USD per hour")
    spot: bool
    cpu: int
    cpu_arch: str = Field(description="`x86` or `arm`")
    memory_gb: float
    disk_gb: int
    disk_fixed: bool = False
    gpu_vendor: str | None = None
    gpu_name: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: float | None = Field(default=None, description="Per GPU")
    efa_interfaces: int = Field(default=0, description="Max EFA interfaces (AWS)")
    tpu: TpuSlice | None = None
    zones: tuple[str, ...] = Field(default=(), description="Empty: any zone of the region")
    flags: tuple[str, ...] = ()
    configured: bool = True
    provider_data: dict[str, Any] = Field(default={}, description="The catalog's extra data")


class CatalogSource(BaseModel):
    """Which catalog the offers came from and how old it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SourceKind
    location: str = Field(description="A folder, a file or a URL")
    created_at: datetime = Field(description="When the data was assembled or downloaded")

    def describe(self, *, now: datetime | None = None) -> str:
        """One line for people: `packaged catalog (2026-12-03, 0 days old)`."""
        now = now or datetime.now(UTC)
        age = _age_text(now - self.created_at)
        label = {
            "directory": f"catalog from {self.location}",
            "packaged": "packaged catalog",
            "online": "gpuhunt online catalog",
            "cache": "gpuhunt online catalog (downloaded copy)",
        }[self.kind]
        return f"{label} ({self.created_at:%Y-%m-%d}, {age} old)"


@dataclass(frozen=True)
class Catalog:
    """All offers of one catalog source, in the catalog's order."""

    offers: tuple[Offer, ...]
    source: CatalogSource

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends that have offers here, in a fixed order."""
        present = {offer.backend for offer in self.offers}
        return tuple(name for name in CLOUDS if name in present)


def load_catalog(*, offline: bool | None = None) -> Catalog:
    """The catalog to match against, from the source the environment and `offline` choose.

    Args:
        offline: True never goes online; None reads `TASKSTACK_OFFLINE`.

    Raises:
        ConfigError: `TASKSTACK_CATALOG` names a folder without a catalog in it.
    """
    folder = os.environ.get("TASKSTACK_CATALOG")
    if folder:
        return load_directory(Path(folder).expanduser())

    if offline is None:
        offline = os.environ.get("TASKSTACK_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        return load_packaged()

    return _load_online_or_fallback()


def load_packaged() -> Catalog:
    """The catalog that ships inside the package (`compiler/data/offers.csv`)."""
    # Read beside this module rather than through `importlib.resources`, whose readers cost
    # a short command more to import than the file takes to read; taskstack is never zipped.
    text = (Path(__file__).parent / "data" / "offers.csv").read_text("utf-8")
    created = datetime(PACKAGED_DATE.year, PACKAGED_DATE.month, PACKAGED_DATE.day, tzinfo=UTC)
    source = CatalogSource(kind="packaged", location="taskstack/compiler/data", created_at=created)
    return Catalog(offers=tuple(_offers_from_csv(text)), source=source)


def load_directory(folder: Path, *, kind: SourceKind = "directory") -> Catalog:
    """A catalog folder: `offers.csv` with a provider column, or `aws.csv`, `gcp.csv`, ...

    Raises:
        ConfigError: the folder holds neither, or a file lacks a column offers need.
    """
    combined = folder / "offers.csv"
    per_cloud = [folder / f"{name}.csv" for name in CLOUDS if (folder / f"{name}.csv").is_file()]
    if combined.is_file():
        offers = list(_offers_from_csv(_checked_csv(combined, with_provider=True)))
        newest = combined.stat().st_mtime
    elif per_cloud:
        offers = []
        for path in per_cloud:
            text = _checked_csv(path, with_provider=False)
            offers.extend(_offers_from_csv(text, provider=path.stem))
        newest = max(path.stat().st_mtime for path in per_cloud)
    else:
        raise ConfigError(
            f"TASKSTACK_CATALOG: {folder} holds no `offers.csv` nor `aws.csv`/`gcp.csv`/"
            "`azure.csv`; point it at a catalog folder or unset it"
        )

    created = datetime.fromtimestamp(newest, tz=UTC)
    source = CatalogSource(kind=kind, location=str(folder), created_at=created)
    return Catalog(offers=tuple(_merge_zones(offers)), source=source)


def cache_dir() -> Path:
    """Where the last downloaded online catalog is kept."""
    return taskstack_home() / _CACHE_FOLDER


_CACHE_FOLDER = "catalog"


def _checked_csv(path: Path, *, with_provider: bool) -> str:
    """The text of a catalog file whose header has every column an offer is built from."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"TASKSTACK_CATALOG: cannot read {path} ({exc})") from exc

    header = next(csv.reader(io.StringIO(text)), [])
    required = (("provider",) if with_provider else ()) + _REQUIRED_COLUMNS
    missing = [column for column in required if column not in header]
    if missing:
        raise ConfigError(
            f"TASKSTACK_CATALOG: {path} lacks the column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; its first line must name gpuhunt's columns "
            f"({', '.join(required)}, ...)"
        )
    return text


# The columns gpuhunt's `item_from_row` cannot do without; the others are optional.
_REQUIRED_COLUMNS = ("instance_name", "location", "price", "cpu", "memory", "gpu_count", "spot")


# --- Online catalog --------------------------------------------------------------------------


def _load_online_or_fallback() -> Catalog:
    """A fresh downloaded copy, else a download within the deadline, else the best fallback."""
    # Created up front so that an unusable state folder is one clear error, not a traceback
    # from the download's write.
    cached = ensure_home(_CACHE_FOLDER)
    age = _cache_age(cached)
    failed_recently = _failed_recently(cached)
    if age is not None and (age < CACHE_TTL or failed_recently):
        return load_directory(cached, kind="cache")
    if failed_recently:
        return load_packaged()

    try:
        _download(cached, deadline=ONLINE_DEADLINE)
    except _DownloadFailed as exc:
        log.warning("online catalog unavailable (%s); using a local catalog", exc)
        _remember_failure(cached)
        if age is not None:
            return load_directory(cached, kind="cache")
        return load_packaged()
    return load_directory(cached, kind="online")


class _DownloadFailed(Exception):
    pass


def _cache_age(folder: Path) -> float | None:
    """Seconds since the cached copy was downloaded; None when there is none."""
    stamp = folder / "downloaded"
    if not stamp.is_file() or not (folder / "aws.csv").is_file():
        return None
    return time.time() - stamp.stat().st_mtime


def _failed_recently(folder: Path) -> bool:
    """Whether a download failed lately; without network every command would wait again."""
    failed = folder / "failed"
    return failed.is_file() and time.time() - failed.stat().st_mtime < FAILURE_BACKOFF


def _remember_failure(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "failed").touch()
    except OSError as exc:  # a read-only state folder only costs a retry next time
        log.debug("cannot record the failed download: %s", exc)


def _download(folder: Path, *, deadline: float) -> None:
    """Fetch every cloud's catalog from gpuhunt's bucket into `folder`, or raise.

    The download runs in a daemon thread so that a stalled connection cannot hold the
    command (or its exit) past the deadline.
    """
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["files"] = {name: _fetch_cloud(name, timeout=deadline) for name in CLOUDS}
        except Exception as exc:  # any failure means "fall back"; the log keeps the cause
            result["error"] = exc

    worker = threading.Thread(target=fetch, name="catalog-download", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        raise _DownloadFailed(f"no answer within {deadline:g}s")
    if "error" in result:
        raise _DownloadFailed(str(result["error"]))

    _write_cache(folder, files=result["files"])


def _fetch_cloud(name: str, *, timeout: float) -> str:
    """One cloud's CSV text, at the latest version gpuhunt published."""
    from gpuhunt._internal.catalog import _get_base_url

    # The same layout gpuhunt's own loader reads: `{base}/{provider}/version` names the
    # version, `{base}/{provider}/{version}/catalog.zip` holds `{provider}.csv`.
    base = _get_base_url()
    with urllib.request.urlopen(f"{base}/{name}/version", timeout=timeout) as response:
        version = response.read().decode("utf-8").strip()
    with urllib.request.urlopen(f"{base}/{name}/{version}/catalog.zip", timeout=timeout) as resp:
        data = resp.read()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(f"{name}.csv").decode("utf-8")


def _write_cache(folder: Path, *, files: dict[str, str]) -> None:
    """Replace the cached copy; each file is renamed into place so readers never see half."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        partial = folder / f".{name}.csv.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(folder / f"{name}.csv")
    (folder / "downloaded").write_text(datetime.now(UTC).isoformat() + "\n", encoding="utf-8")
    (folder / "failed").unlink(missing_ok=True)


# --- Rows to offers --------------------------------------------------------------------------


def _offers_from_csv(text: str, *, provider: str | None = None) -> Iterator[Offer]:
    """Offers of one CSV; `provider` names the cloud when the file has no provider column."""
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        backend = provider or row.get("provider") or ""
        if backend not in CLOUDS:
            continue
        try:
            offer = _offer_from_row(row, backend=backend)
        except ValueError as exc:
            # gpuhunt's own loader skips malformed rows the same way.
            log.warning("skipping catalog row %s (%s): %s", line, backend, exc)
            continue
        yield offer


def _offer_from_row(row: dict[str, str | None], *, backend: str) -> Offer:
    """One row of a gpuhunt v2 file as an offer, read as gpuhunt's `item_from_row` reads it.

    Every column is read, in gpuhunt's order, before the offer is built, so a row that
    gpuhunt skips is skipped here too.

    Raises:
        ValueError: a required column is missing or empty, or a value cannot be read.
    """
    gpu_count, gpu_name, vendor = _gpu_columns(row)
    cpu_arch = _optional(row, "cpu_arch", _cpu_arch) or "x86"
    instance_type = _required(row, "instance_name", str)
    location = _required(row, "location", str)
    price = _required(row, "price", float)
    cpu = _required(row, "cpu", int)
    memory_gb = _required(row, "memory", float)
    gpu_memory_gb = _optional(row, "gpu_memory", float)
    spot = _required(row, "spot", _boolean)
    disk_size = _optional(row, "disk_size", float)
    flags = tuple((row.get("flags") or "").split())
    data = _read("provider_data", row.get("provider_data") or "{}", _json_object)

    region, zones = _region_and_zones(backend, location, data)
    with_gpu = bool(gpu_count)
    # Every value is typed already, so the offer is built without a second validation: it
    # would be a third of the load time of a catalog.
    return Offer.model_construct(
        backend=backend,
        region=region,
        instance_type=instance_type,
        price=price,
        spot=spot,
        cpu=cpu,
        cpu_arch=cpu_arch,
        memory_gb=memory_gb,
        disk_gb=round(disk_size) if disk_size is not None else DEFAULT_DISK_GB,
        disk_fixed=disk_size is not None,
        gpu_vendor=vendor if with_gpu else None,
        gpu_name=gpu_name if with_gpu else None,
        gpu_count=gpu_count,
        gpu_memory_gb=gpu_memory_gb if with_gpu else None,
        efa_interfaces=_efa_interfaces(flags, data),
        tpu=_tpu_slice(gpu_name, data) if vendor == "google" else None,
        zones=zones,
        flags=flags,
        provider_data=data,
    )


def _gpu_columns(row: dict[str, str | None]) -> tuple[int, str | None, str | None]:
    """GPU count, name and vendor of a row, with gpuhunt's reading of older files."""
    count = _required(row, "gpu_count", int)
    name = _optional(row, "gpu_name", str)
    vendor = _optional(row, "gpu_vendor", _vendor)
    # Files from before the `gpu_vendor` column write a TPU as `tpu-<slice>` and mean
    # NVIDIA by any other GPU; gpuhunt still reads them so.
    if name and name.startswith("tpu-"):
        return count, name[4:], vendor or "google"
    if vendor is None and count:
        return count, name, "nvidia"
    return count, name, vendor


_T = TypeVar("_T")

# gpuhunt's `AcceleratorVendor` and `CPUArchitecture` values; a file's spelling is lowercased.
_VENDORS = frozenset({"nvidia", "amd", "google", "intel", "tenstorrent"})
_CPU_ARCHS = frozenset({"x86", "arm"})


def _required(row: dict[str, str | None], column: str, read: Callable[[str], _T]) -> _T:
    value = row.get(column)
    if value is None:
        raise ValueError(f"Required field {column!r} is missing")
    if value == "":
        raise ValueError(f"Required field {column!r} is empty")
    return _read(column, value, read)


def _optional(row: dict[str, str | None], column: str, read: Callable[[str], _T]) -> _T | None:
    value = row.get(column)
    return _read(column, value, read) if value else None


def _read(column: str, value: str, read: Callable[[str], _T]) -> _T:
    try:
        return read(value)
    except ValueError as exc:
        raise ValueError(f"Cannot parse field {column!r}: {exc}") from exc


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"Not a boolean: {text!r}")
    return text.lower() == "true"


def _vendor(text: str) -> str:
    if text.lower() not in _VENDORS:
        raise ValueError(f"{text.lower()!r} is not a valid AcceleratorVendor")
    return text.lower()


def _cpu_arch(text: str) -> str:
    if text.lower() not in _CPU_ARCHS:
        raise ValueError(f"{text.lower()!r} is not a valid CPUArchitecture")
    return text.lower()


def _json_object(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        # gpuhunt takes any JSON here; an offer's extra data must be an object to be read.
        raise ValueError(f"{type(data).__name__} is not a JSON object")
    return data


_GCP_ZONE = re.compile(r"^([a-z]+-[a-z]+\d+)-[a-z]$")


def _region_and_zones(
    provider: str, location: str, data: dict[str, Any]
) -> tuple[str, tuple[str, ...]]:
    """gpuhunt's GCP rows are per zone (`us-central1-a`); offers are per region."""
    zones = tuple(data.get("zones") or ())
    match = _GCP_ZONE.match(location) if provider == "gcp" else None
    if match:
        return match.group(1), zones or (location,)
    return location, zones


def _efa_interfaces(flags: Iterable[str], data: dict[str, Any]) -> int:
    if "efa" not in flags:
        return 0
    return int(data.get("efa_interfaces") or 1)


# Generations whose slice suffix counts TensorCores (2 per chip) rather than chips.
_TPU_CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2}


def _tpu_slice(name: str | None, data: dict[str, Any]) -> TpuSlice | None:
    if not name or "-" not in name:
        return None
    prefix, _, size = name.rpartition("-")
    generation = "v5e" if prefix == "v5litepod" else prefix
    chips = data.get("tpu_chips")
    if chips is None and size.isdigit():
        chips = int(size) // _TPU_CORES_PER_CHIP.get(prefix, 1)
    return TpuSlice(name=name, generation=generation, chips=int(chips or 1))


def _merge_zones(offers: list[Offer]) -> list[Offer]:
    """One offer per region: rows that differ only by zone become one offer with its zones."""
    merged: dict[tuple, Offer] = {}
    for offer in offers:
        key = (
            offer.backend,
            offer.region,
            offer.instance_type,
            offer.spot,
            offer.price,
            offer.gpu_name,
            offer.gpu_count,
        )
        seen = merged.get(key)
        if seen is None:
            merged[key] = offer
        elif offer.zones and seen.zones:
            zones = tuple(dict.fromkeys((*seen.zones, *offer.zones)))
            merged[key] = seen.model_copy(update={"zones": zones})
    return list(merged.values())


def _age_text(age: Any) -> str:
    seconds = max(age.total_seconds(), 0)
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"
