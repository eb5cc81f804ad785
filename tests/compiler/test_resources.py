"""The resource grammar: every shorthand dstack 0.22.5 accepts, and its errors."""

from __future__ import annotations

from typing import Any

import pytest

from taskstack.compiler.config import parse_task
from taskstack.compiler.resources import (
    CountRange,
    GPUSpec,
    ResourcesSpec,
    SizeRange,
    parse_size,
    resources_pretty,
)
from taskstack.errors import ConfigError


def _resources(yaml_body: str) -> ResourcesSpec:
    text = f"type: task\ncommands: [python train.py]\nresources:\n{yaml_body}"
    return parse_task(text, source="t.yml").resources


@pytest.mark.parametrize(
    ("text", "gb"),
    [
        ("64GB", 64.0),
        ("512MB", 0.5),
        ("1TB", 1024.0),
        ("8 gb", 8.0),
        ("16", 16.0),
        (32, 32.0),
        (0.5, 0.5),
        ("1.5GB", 1.5),
    ],
)
def test_sizes_are_gigabytes_with_binary_units(text: Any, gb: float) -> None:
    assert parse_size(text) == gb


@pytest.mark.parametrize(
    ("text", "bounds"),
    [
        ("1..4", (1, 4)),
        ("2..", (2, None)),
        ("..8", (None, 8)),
        (4, (4, 4)),
        ("4", (4, 4)),
        (" 2 .. 8 ", (2, 8)),
        ({"min": 3}, (3, None)),
    ],
)
def test_count_ranges(text: Any, bounds: tuple[int | None, int | None]) -> None:
    count = CountRange.model_validate(text)

    assert (count.min, count.max) == bounds


def test_size_range_reads_units_on_both_ends() -> None:
    size = SizeRange.model_validate("512MB..1TB")

    assert (size.min, size.max) == (0.5, 1024.0)
    assert size.contains(1.0) and not size.contains(2048.0)


def test_defaults_are_dstacks() -> None:
    spec = ResourcesSpec()

    assert spec.cpu.arch is None
    assert (spec.cpu.count.min, spec.cpu.count.max) == (2, None)
    assert (spec.memory.min, spec.memory.max) == (8.0, None)
    assert (spec.gpu.count.min, spec.gpu.count.max) == (0, None)
    assert (spec.disk.size.min, spec.disk.size.max) == (100.0, None)
    assert spec.shm_size is None


@pytest.mark.parametrize(
    ("cpu", "arch", "bounds"),
    [
        ("4", None, (4, 4)),
        ("16..", None, (16, None)),
        ("arm:4..8", "arm", (4, 8)),
        ("4..:x86", "x86", (4, None)),
        ("ARM", "arm", (2, None)),
        ("{min: 4, max: 8}", None, (4, 8)),
        ("{arch: arm, count: 8}", "arm", (8, 8)),
    ],
)
def test_cpu_forms(cpu: str, arch: str | None, bounds: tuple[int | None, int | None]) -> None:
    spec = _resources(f"  cpu: {cpu}\n")

    assert spec.cpu.arch == arch
    assert (spec.cpu.count.min, spec.cpu.count.max) == bounds


GPU_FORMS = [
    # (YAML value, vendor, names, count bounds, memory bounds)
    ("A100:80GB:2", None, ["A100"], (2, 2), (80.0, 80.0)),
    ("8:80GB:H100", None, ["H100"], (8, 8), (80.0, 80.0)),
    ("A10G,A100", None, ["A10G", "A100"], (1, None), None),
    ("amd:MI300X:8", "amd", ["MI300X"], (8, 8), None),
    ("NVIDIA:H100", "nvidia", ["H100"], (1, None), None),
    ("tpu:v5litepod-8", "google", ["v5litepod-8"], (1, None), None),
    ("tpu-v5litepod-8", None, ["v5litepod-8"], (1, None), None),
    ("24GB..40GB:2", None, None, (2, 2), (24.0, 40.0)),
    ("A100:1..4", None, ["A100"], (1, 4), None),
    ("nvidia", "nvidia", None, (1, None), None),
    ("0", None, None, (0, 0), None),
    ("2", None, None, (2, 2), None),
    ("2:4", None, None, (124, 124), None),  # YAML 1.1 sexagesimal, as dstack reads it
    ("'A100:2'", None, ["A100"], (2, 2), None),
]


@pytest.mark.parametrize(("gpu", "vendor", "names", "count", "memory"), GPU_FORMS)
def test_gpu_shorthands(
    gpu: str,
    vendor: str | None,
    names: list[str] | None,
    count: tuple[int | None, int | None],
    memory: tuple[float | None, float | None] | None,
) -> None:
    spec = _resources(f"  gpu: {gpu}\n").gpu

    assert spec.vendor == vendor
    assert spec.name == names
    assert (spec.count.min, spec.count.max) == count
    assert (None if spec.memory is None else (spec.memory.min, spec.memory.max)) == memory


def test_gpu_mapping_form() -> None:
    body = (
        "  gpu:\n"
        "    vendor: nvidia\n"
        "    name: [A100, H100]\n"
        "    count: 1..4\n"
        "    memory: 40GB..\n"
        "    total_memory: 160GB..\n"
        "    compute_capability: 8.0\n"
    )

    gpu = _resources(body).gpu

    assert gpu.vendor == "nvidia"
    assert gpu.name == ["A100", "H100"]
    assert (gpu.count.min, gpu.count.max) == (1, 4)
    assert gpu.memory is not None and gpu.memory.min == 40.0 and gpu.memory.max is None
    assert gpu.total_memory is not None and gpu.total_memory.min == 160.0
    assert gpu.compute_capability == (8, 0)


def test_gpu_mapping_accepts_a_single_name_and_vendor_alias() -> None:
    gpu = GPUSpec.model_validate({"vendor": "TPU", "name": "v5litepod-8", "count": 1})

    assert (gpu.vendor, gpu.name) == ("google", ["v5litepod-8"])


def test_disk_and_shm_size() -> None:
    spec = _resources("  disk: 500GB..1TB\n  shm_size: 16GB\n  memory: 64GB..\n")

    assert (spec.disk.size.min, spec.disk.size.max) == (500.0, 1024.0)
    assert spec.shm_size == 16.0
    assert spec.memory.min == 64.0


RESOURCE_ERRORS = [
    ("  memory: 16GiB\n", r"`resources\.memory\.min`: cannot read '16GiB' as a size"),
    ("  memory: '..'\n", r"`resources\.memory`: the range `\.\.` is empty"),
    ("  memory: -8GB..\n", r"`resources\.memory\.min`: size -8GB is negative"),
    ("  memory: 1..2..3\n", r"`resources\.memory`: '1\.\.2\.\.3' is not a range"),
    (
        "  disk: 500GB..100GB\n",
        r"`resources\.disk\.size`: the range 500GB\.\.100GB runs backwards",
    ),
    ("  cpu: riscv:4\n", r"`resources\.cpu`: .*unknown CPU architecture 'riscv'"),
    ("  cpu: 4.5\n", r"`resources\.cpu`: 4\.5 is not a CPU count"),
    ("  cpu: arm:x86\n", r"`resources\.cpu`: .*gives the CPU arch twice"),
    ("  cpu: -2\n", r"`resources\.cpu\.count`: -2 is negative"),
    ("  gpu: A100:H100\n", r"`resources\.gpu`: 'A100:H100' gives the GPU name twice"),
    ("  gpu: A100::2\n", r"`resources\.gpu`: 'A100::2' has an empty part"),
    ("  gpu: A100:4..2\n", r"`resources\.gpu\.count`: the range 4\.\.2 runs backwards"),
    ("  gpu: A100:-2\n", r"`resources\.gpu\.count`: -2 is negative"),
    ("  gpu: nvidia:amd\n", r"`resources\.gpu`: .*gives the GPU vendor twice"),
    ("  gpu: A100,\n", r"`resources\.gpu`: .*empty GPU name"),
    ("  gpu: true\n", r"`resources\.gpu`: True is not a GPU spec"),
    ("  gpu:\n    model: A100\n", r"`resources\.gpu\.model`: unknown field"),
    ("  gpu:\n    vendor: acme\n", r"`resources\.gpu\.vendor`: unknown GPU vendor 'acme'"),
    ("  gpu:\n    compute_capability: 8\n", r"`resources\.gpu\.compute_capability`: 8 is not"),
    ("  shm_size: 8GB..\n", r"`resources\.shm_size`: cannot read '8GB\.\.' as a size"),
    ("  disk: -1GB\n", r"`resources\.disk\.size\.min`: size -1GB is negative"),
    ("  cores: 4\n", r"`resources\.cores`: unknown field"),
]


@pytest.mark.parametrize(("body", "message"), RESOURCE_ERRORS)
def test_resource_errors_name_the_field(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^t\.yml:\d+: {message}"):
        _resources(body)


def test_resource_errors_point_at_the_yaml_line() -> None:
    with pytest.raises(ConfigError, match=r"^t\.yml:5: `resources\.gpu\.count`"):
        _resources("  cpu: 4\n  gpu: A100:4..2\n")


# Expected strings are those dstack 0.22.5 printed for the same configs (conformance cases).
PRETTY = [
    ("  cpu: 2..\n", "cpu=2.. mem=8GB.. disk=100GB.. gpu=0.."),
    (
        "  cpu: 16..\n  memory: 64GB..\n  gpu: A100:80GB:2\n  disk: 500GB..\n",
        "cpu=16.. mem=64GB.. disk=500GB.. gpu=A100:80GB:2",
    ),
    ("  cpu: 4\n", "cpu=4 mem=8GB.. disk=100GB.. gpu=0.."),
    ("  cpu: arm:4..8\n", "cpu=arm:4..8 mem=8GB.. disk=100GB.. gpu=0.."),
    ("  memory: 512MB..1TB\n", "cpu=2.. mem=0.5GB..1024GB disk=100GB.. gpu=0.."),
    ("  gpu: A10G,A100\n", "cpu=2.. mem=8GB.. disk=100GB.. gpu=A10G,A100:1.."),
    ("  gpu: amd:MI300X:8\n", "cpu=2.. mem=8GB.. disk=100GB.. gpu=MI300X:8"),
    ("  gpu: tpu:v5litepod-8\n", "cpu=2.. mem=8GB.. disk=100GB.. gpu=v5litepod-8:1.."),
    ("  gpu: 2:4\n", "cpu=2.. mem=8GB.. disk=100GB.. gpu=124"),
    (
        "  gpu:\n    vendor: nvidia\n    name: [A100, H100]\n    count: 1..4\n"
        "    memory: 40GB..\n    total_memory: 160GB..\n    compute_capability: 8.0\n",
        "cpu=2.. mem=8GB.. disk=100GB.. gpu=A100,H100:40GB..:1..4:160GB..:(8, 0)",
    ),
]


@pytest.mark.parametrize(("body", "pretty"), PRETTY)
def test_resources_pretty_matches_dstack(body: str, pretty: str) -> None:
    assert resources_pretty(_resources(body)) == pretty


def test_specs_are_frozen() -> None:
    spec = ResourcesSpec()

    with pytest.raises(ValueError, match="frozen"):
        spec.cpu.count.min = 4  # type: ignore[misc]
