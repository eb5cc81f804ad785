"""The resource grammar of a task (`resources:`), as dstack 0.22.5 reads it.

Sizes are gigabytes as floats, where dstack's `GB` is 1024 `MB` and `TB` is 1024 `GB`
(`512MB` is 0.5, `1TB` is 1024). Counts and sizes accept a range: `2..8`, `2..`, `..8`, or
a single value meaning exactly that. Every shorthand dstack accepts is accepted here:

    cpu: 16..            cpu: arm:4..8          cpu: {arch: x86, count: 8}
    memory: 64GB..       memory: "8 gb .. 16 gb"
    gpu: A100:80GB:2     gpu: 8:80GB:H100       gpu: A10G,A100      gpu: amd:MI300X:8
    gpu: tpu:v5litepod-8 gpu: 24GB..40GB:2      gpu: 0              gpu: {vendor: nvidia, ...}
    disk: 100GB..        shm_size: 16GB

Stricter than dstack: a negative size or count is an error (dstack accepts `gpu: A100:-2`).
Validation errors are `ConfigProblem`s, which `compiler.config` turns into one `ConfigError`
line naming the field and its YAML line.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from taskstack.compiler.source import shown

CPUArch = Literal["x86", "arm"]
GPUVendor = Literal["nvidia", "amd", "google", "intel", "tenstorrent"]

# Vendor names as a `gpu:` token may spell them (any case); `tpu` and `tt` are dstack's aliases.
_VENDOR_ALIASES: dict[str, GPUVendor] = {
    "nvidia": "nvidia",
    "amd": "amd",
    "google": "google",
    "tpu": "google",
    "intel": "intel",
    "tenstorrent": "tenstorrent",
    "tt": "tenstorrent",
}

_SIZE_UNITS = {"mb": 1 / 1024, "gb": 1.0, "tb": 1024.0}

T = TypeVar("T", int, float)


class ConfigProblem(ValueError):
    """A value is wrong; the message says what and how to fix it.

    `path` locates the offending item below the field being validated (a list index, a
    key), so the error can point at the exact YAML line.
    """

    def __init__(self, message: str, *, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_size(value: Any) -> float:
    """Read a size in GB: a number, or a string such as `64GB`, `512MB`, `1TB`, `8 gb`."""
    if isinstance(value, bool):
        raise ConfigProblem(f"{shown(value)} is not a size; write it like 64GB")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        size = _parse_size_text(value)
    else:
        raise ConfigProblem(f"{shown(value)} is not a size; write it like 64GB")
    if not math.isfinite(size):
        raise ConfigProblem(f"{shown(value)} is not a size; write it like 64GB")
    if size < 0:
        raise ConfigProblem(f"size {value} is negative; sizes start at 0")
    return size


def _parse_size_text(text: str) -> float:
    compact = text.replace(" ", "").lower()
    number, factor = compact, 1.0
    for unit, unit_factor in _SIZE_UNITS.items():
        if compact.endswith(unit):
            number, factor = compact[: -len(unit)], unit_factor
            break
    try:
        return float(number) * factor
    except ValueError:
        # dstack reads GB as 1024 MB but has no GiB/MiB/TiB spelling: those are errors there too.
        raise ConfigProblem(
            f"cannot read {shown(text)} as a size; use MB, GB or TB (1GB = 1024MB), e.g. 16GB"
        ) from None


Size = Annotated[float, BeforeValidator(parse_size)]
"""A size in GB; accepts `64GB`, `512MB`, `1TB` or a plain number of GB."""


class Range(_Model, Generic[T]):
    """A closed or open interval: `2..8`, `2..`, `..8`; a single value means exactly that.

    `min`/`max` is None for an open end; at least one end is set.
    """

    _unit: ClassVar[str] = ""

    min: T | None = Field(default=None, description="The lower bound, or None for none")
    max: T | None = Field(default=None, description="The upper bound, or None for none")

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigProblem(f"{shown(value)} is not a number or a range like 2..8")
        if isinstance(value, str) and ".." in value:
            parts = value.replace(" ", "").split("..")
            if len(parts) != 2:
                raise ConfigProblem(
                    f"{shown(value)} is not a range; write it like 2..8, 2.. or ..8"
                )
            low, high = parts
            return {"min": low or None, "max": high or None}
        if isinstance(value, str | int | float):
            return {"min": value, "max": value}
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> Range[T]:
        if self.min is None and self.max is None:
            raise ConfigProblem("the range `..` is empty; give a lower or an upper bound")
        for bound in (self.min, self.max):
            if bound is not None and bound < 0:
                raise ConfigProblem(f"{bound:g} is negative; counts and sizes start at 0")
        if self.min is not None and self.max is not None and self.min > self.max:
            low, high = f"{self.min:g}{self._unit}", f"{self.max:g}{self._unit}"
            raise ConfigProblem(f"the range {low}..{high} runs backwards; write {high}..{low}")
        return self

    def contains(self, value: float) -> bool:
        """Whether `value` lies within the range (open ends are unbounded)."""
        if self.min is not None and value < self.min:
            return False
        return self.max is None or value <= self.max


class CountRange(Range[int]):
    """A range of counts (CPU cores, GPUs)."""


class SizeRange(Range[Size]):  # type: ignore[type-var]
    """A range of sizes in GB (memory, GPU memory, disk)."""

    _unit: ClassVar[str] = "GB"


class CPUSpec(_Model):
    """CPU requirements: an architecture (any when None) and a core count."""

    arch: CPUArch | None = Field(
        default=None, description="The CPU architecture, `x86` or `arm`; any when not set"
    )
    count: CountRange = Field(
        default_factory=lambda: CountRange(min=2), description="The number of CPU cores"
    )

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool | float):
            raise ConfigProblem(
                f"{shown(value)} is not a CPU count; write a whole count (4), a range (2..8) "
                "or arch:count (arm:4..)"
            )
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            return _parse_cpu_text(value)
        # `{min: 4, max: 8}` is the count alone, as in dstack's older `cpu` shape.
        if isinstance(value, dict) and value and value.keys() <= {"min", "max"}:
            return {"count": value}
        if isinstance(value, dict) and isinstance(value.get("arch"), str):
            return {**value, "arch": value["arch"].lower()}
        return value


def _parse_cpu_text(text: str) -> dict[str, str]:
    spec: dict[str, str] = {}
    for token in text.replace(" ", "").split(":"):
        if not token:
            raise ConfigProblem(f"{shown(text)} has an empty part; write it like arm:4..8")
        if ".." in token or token.lstrip("-").isdigit():
            key, value = "count", token
        elif token.lower() in ("x86", "arm"):
            key, value = "arch", token.lower()
        else:
            raise ConfigProblem(
                f"{shown(text)} names an unknown CPU architecture {shown(token)}; use x86 or arm"
            )
        if key in spec:
            raise ConfigProblem(f"{shown(text)} gives the CPU {key} twice; give it once")
        spec[key] = value
    return spec


class GPUSpec(_Model):
    """GPU or accelerator requirements; `count.min == 0` means a GPU is not required."""

    vendor: GPUVendor | None = Field(
        default=None,
        description="The vendor: `nvidia`, `amd`, `google` (alias `tpu`), `intel`, "
        "`tenstorrent` (alias `tt`); any when not set",
    )
    name: list[str] | None = Field(
        default=None,
        description="Acceptable GPU names, e.g. `A100`, `H100`, TPU `v5litepod-8`; any if unset",
    )
    count: CountRange = Field(
        default_factory=lambda: CountRange(min=1), description="The number of GPUs per node"
    )
    memory: SizeRange | None = Field(default=None, description="The memory of one GPU, in GB")
    total_memory: SizeRange | None = Field(
        default=None, description="The memory of all GPUs of a node together, in GB"
    )
    compute_capability: tuple[int, int] | None = Field(
        default=None, description="The minimum CUDA compute capability, e.g. `8.0`"
    )

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigProblem(
                f"{shown(value)} is not a GPU spec; write a count (2), a name (A100) "
                "or name:memory:count (A100:80GB:2)"
            )
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            return _parse_gpu_text(value)
        if isinstance(value, dict):
            return _normalize_gpu_mapping(value)
        return value


def _parse_gpu_text(text: str) -> dict[str, Any]:
    """Read `A100:80GB:2`-style text; the tokens may come in any order."""
    spec: dict[str, Any] = {}
    for token in text.replace(" ", "").split(":"):
        if not token:
            raise ConfigProblem(f"{shown(text)} has an empty part; write it like A100:80GB:2")
        key, value = _classify_gpu_token(token)
        if key in spec:
            raise ConfigProblem(f"{shown(text)} gives the GPU {key} twice; give it once")
        spec[key] = value
    if "name" in spec:
        spec["name"] = _gpu_names(spec["name"], text=text)
    return spec


def _classify_gpu_token(token: str) -> tuple[str, Any]:
    # A vendor is a known word, a name starts with a letter, a size has a unit, else a count.
    vendor = _VENDOR_ALIASES.get(token.lower())
    if vendor is not None:
        return "vendor", vendor
    if token[0].isalpha():
        return "name", token.split(",")
    if any(char.isalpha() for char in token):
        return "memory", token
    return "count", token


def _gpu_names(names: Any, *, text: str) -> Any:
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list):
        return names
    if any(isinstance(name, str) and not name.strip() for name in names):
        raise ConfigProblem(
            f"{shown(text)} has an empty GPU name; separate names with single commas"
        )
    # dstack still reads the deprecated `tpu-v5litepod-8` spelling as the TPU `v5litepod-8`.
    return [
        name[4:] if isinstance(name, str) and name.startswith("tpu-") else name for name in names
    ]


def _normalize_gpu_mapping(value: dict[str, Any]) -> dict[str, Any]:
    spec = dict(value)
    vendor = spec.get("vendor")
    if isinstance(vendor, str):
        if vendor.lower() not in _VENDOR_ALIASES:
            raise ConfigProblem(
                f"unknown GPU vendor {shown(vendor)}; use nvidia, amd, google (tpu), intel "
                "or tenstorrent (tt)",
                path=("vendor",),
            )
        spec["vendor"] = _VENDOR_ALIASES[vendor.lower()]
    if "name" in spec and spec["name"] is not None:
        spec["name"] = _gpu_names(spec["name"], text=str(spec["name"]))
    if "compute_capability" in spec and spec["compute_capability"] is not None:
        spec["compute_capability"] = _parse_compute_capability(spec["compute_capability"])
    return spec


def _parse_compute_capability(value: Any) -> tuple[int, int]:
    parts: Any = value
    if isinstance(value, float | str) and not isinstance(value, bool):
        parts = str(value).strip().split(".")
    if isinstance(parts, list | tuple) and len(parts) == 2:
        try:
            return int(parts[0]), int(parts[1])
        except (TypeError, ValueError):
            pass
    raise ConfigProblem(
        f"{shown(value)} is not a compute capability; write major.minor, e.g. 8.0",
        path=("compute_capability",),
    )


class DiskSpec(_Model):
    """Disk requirements of a node."""

    size: SizeRange = Field(description="The disk size in GB, e.g. `100GB..`")

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return {"size": value}
        return value


class ResourcesSpec(_Model):
    """What one node needs; the defaults are dstack's (2+ CPUs, 8GB+ RAM, 100GB+ disk)."""

    cpu: CPUSpec = Field(default_factory=CPUSpec, description="The CPU requirements")
    memory: SizeRange = Field(
        default_factory=lambda: SizeRange(min=8.0), description="The RAM size, e.g. `64GB..`"
    )
    shm_size: Size | None = Field(
        default=None,
        description="The shared memory size (`/dev/shm`), e.g. `16GB`; PyTorch data loaders "
        "with several workers need it",
    )
    gpu: GPUSpec = Field(
        default_factory=lambda: GPUSpec(count=CountRange(min=0)),
        description="The GPU requirements; none required by default",
    )
    disk: DiskSpec = Field(
        default_factory=lambda: DiskSpec(size=SizeRange(min=100.0)),
        description="The disk requirements, e.g. `500GB..`",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, value: Any) -> Any:
        # `gpu: null` / `disk: null` drop the constraint in dstack; the defaults here (0+ GPUs,
        # 100GB+ disk) are what offers would match anyway, and keep both always present.
        if isinstance(value, dict):
            return {
                key: item
                for key, item in value.items()
                if item is not None or key not in ("gpu", "disk")
            }
        return value


def resources_pretty(spec: ResourcesSpec) -> str:
    """One line in dstack's style, e.g. `cpu=16.. mem=64GB.. disk=500GB.. gpu=A100:80GB:2`."""
    cpu = _range_text(spec.cpu.count)
    parts = [
        f"cpu=arm:{cpu}" if spec.cpu.arch == "arm" else f"cpu={cpu}",
        f"mem={_range_text(spec.memory, unit='GB')}",
        f"disk={_range_text(spec.disk.size, unit='GB')}",
        f"gpu={_gpu_text(spec.gpu)}",
    ]
    return " ".join(parts)


def _gpu_text(gpu: GPUSpec) -> str:
    parts: list[str] = []
    if gpu.name:
        parts.append(",".join(gpu.name))
    if gpu.memory is not None:
        parts.append(_range_text(gpu.memory, unit="GB"))
    parts.append(_range_text(gpu.count))
    if gpu.total_memory is not None:
        parts.append(_range_text(gpu.total_memory, unit="GB"))
    if gpu.compute_capability is not None:
        # dstack prints the capability as a Python tuple, `(8, 0)`; kept for the same output.
        parts.append(str(gpu.compute_capability))
    return ":".join(parts)


def _range_text(value: Range[Any], *, unit: str = "") -> str:
    low = "" if value.min is None else f"{value.min:g}{unit}"
    high = "" if value.max is None else f"{value.max:g}{unit}"
    return low if low == high else f"{low}..{high}"
