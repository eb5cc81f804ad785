"""Offers catalogs for tests that apply on a cloud: CPU types the emulators can create.

The packaged catalog lists GPU and accelerator types only, and a GPU offer makes the runtime
ask for `--gpus all`, which test hosts cannot run. t3 types also cannot join a cluster
placement group, which moto could not create anyway (TESTBED.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

CPU_CATALOG = (
    "provider,instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,"
    "disk_size,gpu_vendor,flags,cpu_arch,provider_data\n"
    "aws,t3.large,us-east-1,0.0832,2,8.0,0,,,False,,,,x86,\n"
    "aws,t3.large,eu-west-1,0.0912,2,8.0,0,,,False,,,,x86,\n"
    # The next offer of a run whose first one the cloud refuses for capacity.
    "aws,t3.xlarge,us-east-1,0.1664,4,16.0,0,,,False,,,,x86,\n"
    "aws,t3.xlarge,eu-west-1,0.1824,4,16.0,0,,,False,,,,x86,\n"
)


def cpu_catalog(folder: Path) -> Path:
    """Write the CPU catalog as `folder/offers.csv`; `TASKSTACK_CATALOG=folder` selects it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "offers.csv").write_text(CPU_CATALOG)
    return folder


@pytest.fixture
def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AWS configured through the environment with the CPU catalog; the task folder."""
    monkeypatch.setenv("TASKSTACK_CATALOG", str(cpu_catalog(tmp_path / "catalog")))
    monkeypatch.setenv("TASKSTACK_BACKENDS", "aws")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    job = tmp_path / "job"
    job.mkdir()
    return job
