"""The packaged rows added for CPU-only, 2-GPU and multi-host TPU offers, and what they plan.

The data checks hold the rows to the facts they were built from (`data/SOURCES.md`): a
multi-host slice is the plan's own reading of its name, costs its chips at the per-chip price
of the single-host slices of its generation and region, and is made of the 4-chip hosts those
single-host rows describe. The plan checks go through `dstack plan`, offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskstack.cli.plan  # noqa: F401  (registers the command)
from taskstack.cli.app import app
from taskstack.compiler.catalog import Offer, load_packaged
from taskstack.compiler.offers import format_resources, tpu_hosts
from taskstack.compiler.plan import tpu_slice
from tests.cli.errors import one_error_line

runner = CliRunner()
OFFERS = load_packaged().offers
TPUS = [o for o in OFFERS if o.tpu is not None and not o.spot]
MULTI_HOST = [o for o in TPUS if "tpu_hosts" in o.provider_data]
TPU_VM = "gcp:tpu/v2Vm:V2Vm"


@pytest.fixture(autouse=True)
def _no_clouds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKSTACK_BACKENDS", raising=False)
    monkeypatch.delenv("TASKSTACK_CATALOG", raising=False)


def _label(offer: Offer) -> str:
    return f"{offer.instance_type}@{offer.region}"


def _single_host(offer: Offer, *, chips: int | None = None) -> list[Offer]:
    """The single-host slices of the offer's generation (and region, unless `chips` is set)."""
    return [
        o
        for o in TPUS
        if o.tpu is not None
        and offer.tpu is not None
        and o.tpu.generation == offer.tpu.generation
        and "tpu_hosts" not in o.provider_data
        and (o.tpu.chips == chips if chips is not None else o.region == offer.region)
    ]


def test_multi_host_slices_are_in_the_catalog() -> None:
    assert sorted({o.instance_type for o in MULTI_HOST}) == [
        "v4-16",
        "v5litepod-16",
        "v5litepod-32",
        "v5p-16",
        "v6e-16",
    ]


@pytest.mark.parametrize("offer", MULTI_HOST, ids=_label)
def test_a_multi_host_row_is_the_plans_reading_of_its_name(offer: Offer) -> None:
    assert offer.tpu is not None

    planned = tpu_slice(offer.tpu.name)

    assert planned.chips == offer.tpu.chips == offer.provider_data["tpu_chips"]
    assert planned.hosts == offer.provider_data["tpu_hosts"] == tpu_hosts(offer) > 1


@pytest.mark.parametrize("offer", [o for o in TPUS if o not in MULTI_HOST], ids=_label)
def test_a_single_host_row_is_one_host(offer: Offer) -> None:
    assert tpu_hosts(offer) == tpu_slice(offer.instance_type).hosts == 1


@pytest.mark.parametrize("offer", MULTI_HOST, ids=_label)
def test_a_slice_costs_its_chips_at_the_single_host_price_per_chip(offer: Offer) -> None:
    assert offer.tpu is not None
    singles = _single_host(offer)

    per_chip = {round(o.price / o.tpu.chips, 5) for o in singles if o.tpu is not None}

    assert per_chip == {round(offer.price / offer.tpu.chips, 5)}


@pytest.mark.parametrize("offer", MULTI_HOST, ids=_label)
def test_a_slice_is_made_of_the_four_chip_hosts_of_its_generation(offer: Offer) -> None:
    assert offer.tpu is not None
    (host,) = {(o.cpu, o.memory_gb) for o in _single_host(offer, chips=4)}
    hbm_per_chip = {o.gpu_memory_gb / o.tpu.chips for o in _single_host(offer) if o.tpu}

    assert (offer.cpu, offer.memory_gb) == host
    assert hbm_per_chip == {(offer.gpu_memory_gb or 0) / offer.tpu.chips}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_every_cloud_has_cpu_only_rows_on_demand_and_spot(cloud: str) -> None:
    cpu_only = [
        o
        for o in OFFERS
        if o.backend == cloud and o.gpu_count == 0 and "accelerator" not in o.provider_data
    ]

    assert {o.spot for o in cpu_only} == {False, True}
    assert all(o.gpu_name is None and o.gpu_vendor is None and o.tpu is None for o in cpu_only)
    # Each fits a task's default resources (2.. CPUs, 8GB.. RAM), so such a task can land on it.
    assert all(o.cpu >= 2 and o.memory_gb >= 8 for o in cpu_only)


def test_two_gpu_rows_where_the_clouds_sell_them() -> None:
    two = sorted({(o.backend, o.instance_type, o.gpu_name) for o in OFFERS if o.gpu_count == 2})

    # AWS sells few 2-GPU types and the sources had no price for them (data/SOURCES.md).
    assert two == [
        ("azure", "Standard_NC48ads_A100_v4", "A100"),
        ("azure", "Standard_NV72ads_A10_v5", "A10"),
        ("gcp", "a2-highgpu-2g", "A100"),
        ("gcp", "g2-standard-24", "L4"),
    ]


def test_a_multi_host_offer_shows_its_hosts() -> None:
    (offer,) = [o for o in MULTI_HOST if _label(o) == "v5litepod-16@us-central1"]
    (single,) = [o for o in TPUS if _label(o) == "v5litepod-8@us-central1"]

    assert (
        format_resources(offer) == "112xCPU, 192GB, v5litepod-16 (16 chips, 4 hosts, 256GB), 100GB"
    )
    assert format_resources(single) == "224xCPU, 384GB, v5litepod-8 (8 chips, 128GB), 100GB"


# --- `dstack plan` -----------------------------------------------------------------------------


def _task(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.dstack.yml"
    path.write_text(f"type: task\nname: train\ncommands: [python train.py]\n{body}")
    return path


@pytest.mark.parametrize("nodes", ["", "nodes: 4\n"], ids=["nodes-unset", "nodes-4"])
def test_plan_of_a_v5litepod_16_task_is_one_tpu_vm_whose_hosts_are_the_nodes(
    nodes: str, tmp_path: Path
) -> None:
    path = _task(tmp_path, f"{nodes}resources:\n  gpu: v5litepod-16\n")

    result = runner.invoke(app, ["plan", "-f", str(path), "--backend", "gcp", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["offer"]["instance_type"] == "v5litepod-16"
    assert data["plan"]["tpu"] == {
        "name": "v5litepod-16",
        "generation": "v5e",
        "chips": 16,
        "hosts": 4,
    }
    assert [n["rank"] for n in data["plan"]["nodes"]] == [0, 1, 2, 3]
    # The offer prices the whole slice; the plan's price is per node, and a host is a node.
    assert data["plan"]["price"] == pytest.approx(data["offer"]["price"] / 4)
    assert data["plan"]["placement_group"] is False
    assert data["preview"]["counts"][TPU_VM] == 1
    assert "gcp:compute/instance:Instance" not in data["preview"]["counts"]
    (vm,) = [r for r in data["preview"]["resources"] if r["type"] == TPU_VM]
    assert vm["inputs"]["acceleratorType"] == "v5litepod-16"
    assert [n["rank"] for n in data["preview"]["outputs"]["nodes"]] == [0, 1, 2, 3]


def test_plan_of_a_two_node_tpu_task_takes_a_two_host_slice(tmp_path: Path) -> None:
    path = _task(tmp_path, "nodes: 2\nresources:\n  gpu: tpu\n")

    result = runner.invoke(app, ["plan", "-f", str(path), "--backend", "gcp", "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["offer"]["instance_type"], data["plan"]["tpu"]["hosts"]) == ("v4-16", 2)
    assert data["preview"]["counts"][TPU_VM] == 1


def test_plan_refuses_nodes_that_no_slice_has_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task(tmp_path, "nodes: 2\nresources:\n  gpu: v5litepod-16\n")

    err = one_error_line(["plan", "-f", str(path), "-b", "gcp"], monkeypatch, capsys)

    assert "`nodes: 2`" in err
    assert "has 4 hosts; set `nodes: 4`" in err


@pytest.mark.parametrize(
    ("cloud", "instance_type"),
    [("aws", "t3.large"), ("gcp", "e2-standard-2"), ("azure", "Standard_F4s_v2")],
)
def test_plan_of_a_task_without_gpu_is_a_cpu_only_instance(
    cloud: str, instance_type: str, tmp_path: Path
) -> None:
    path = _task(tmp_path, "")

    result = runner.invoke(app, ["plan", "-f", str(path), "--backend", cloud, "--json"])

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["offer"]["instance_type"] == instance_type
    assert (data["offer"]["gpu_count"], data["plan"]["gpu"], data["plan"]["tpu"]) == (
        0,
        None,
        None,
    )


def test_apply_of_a_multi_host_slice_runs_one_node_per_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskstack import apply

    monkeypatch.setenv("TASKSTACK_BACKENDS", "gcp")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "taskstack-test")
    path = _task(tmp_path, "resources:\n  gpu: v5litepod-16\n")

    plan = apply.plan_run(path, cwd=tmp_path)

    assert (plan.backend, plan.offer.instance_type, plan.nodes_num) == ("gcp", "v5litepod-16", 4)
