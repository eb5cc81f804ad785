"""`dstack offer`: the table, JSON, flags and files, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskstack.cli.offer  # noqa: F401  (registers the command)
from taskstack.cli.app import app
from taskstack.cli.offer import offers_table
from taskstack.compiler.catalog import load_packaged
from taskstack.compiler.offers import Requirements, find_offers
from tests.cli.errors import one_error_line

runner = CliRunner()
WIDE = {"COLUMNS": "160"}


@pytest.fixture(autouse=True)
def _no_clouds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKSTACK_BACKENDS", raising=False)
    monkeypatch.delenv("TASKSTACK_CATALOG", raising=False)


def test_table_in_dstacks_style_with_unconfigured_backends_marked() -> None:
    result = runner.invoke(
        app, ["offer", "--gpu", "A100:40GB:8", "--backend", "aws", "--max-offers", "2"], env=WIDE
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == "# BACKEND REGION RESOURCES INSTANCE TYPE SPOT PRICE".split()
    assert lines[1].split() == (
        "1 aws* us-east-1 96xCPU, 1152GB, 8xA100 (40GB), 100GB p4d.24xlarge yes $5.09".split()
    )
    assert lines[2].split() == (
        "2 aws* us-east-1 96xCPU, 1152GB, 8xA100 (40GB), 100GB p4d.24xlarge no $32.77".split()
    )
    assert "Shown 2 of 4 offers; * backend not configured" in result.output
    assert "Offers from the packaged catalog (2026-12-03," in result.output


def test_caption_names_the_real_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path))

    result = runner.invoke(app, ["offer", "--gpu", "A100:40GB:8", "-b", "aws"], env=WIDE)

    # The caption wraps at the table's width.
    words = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"backend not configured (see {tmp_path / 'config.yml'})" in words
    assert "~/.taskstack" not in result.output


def test_configured_backend_is_not_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSTACK_BACKENDS", "aws")

    result = runner.invoke(app, ["offer", "--gpu", "H100:8", "--on-demand"], env=WIDE)

    assert result.exit_code == 0, result.output
    assert [line.split()[1] for line in result.output.splitlines()[1:3]] == ["aws", "aws"]
    assert "not configured" not in result.output
    assert "Shown 2 of 2 offers" in result.output


def test_task_file_requirements_with_flags_laid_over(tmp_path: Path) -> None:
    task = tmp_path / "train.dstack.yml"
    task.write_text(
        "type: task\ncommands: [python train.py]\nresources:\n  gpu: tpu:v5litepod-8\n"
        "spot_policy: on-demand\n"
    )

    result = runner.invoke(
        app, ["offer", "-f", str(task), "--backend", "gcp", "--region", "europe-west4"], env=WIDE
    )

    assert result.exit_code == 0, result.output
    row = result.output.splitlines()[1].split()
    assert row[:3] == ["1", "gcp*", "europe-west4"]
    assert "v5litepod-8 (8 chips, 128GB)" in result.output
    assert "Shown 1 of 1 offers" in result.output


def test_json_is_stable_and_complete() -> None:
    args = ["offer", "--gpu", "A10G,A100", "--spot", "--backend", "aws", "--json"]

    first = runner.invoke(app, args)
    second = runner.invoke(app, args)

    assert first.exit_code == 0, first.output
    assert first.output == second.output
    document = json.loads(first.output)
    assert list(document) == ["catalog", "offers", "requirements", "shown", "total"]
    assert (document["total"], document["shown"]) == (2, 2)
    assert document["catalog"]["kind"] == "packaged"
    assert document["offers"][0] == {
        "backend": "aws",
        "configured": False,
        "cpu": 4,
        "cpu_arch": "x86",
        "disk_fixed": False,
        "disk_gb": 100,
        "efa_interfaces": 0,
        "flags": [],
        "gpu_count": 1,
        "gpu_memory_gb": 22.3515625,
        "gpu_name": "A10G",
        "gpu_vendor": "nvidia",
        "instance_type": "g5.xlarge",
        "memory_gb": 16.0,
        "price": 0.397,
        "provider_data": {"local_nvme_gb": 250, "spot_min_az": "use1-az2"},
        "region": "us-east-1",
        "spot": True,
        "tpu": None,
        "zones": [],
    }
    assert document["offers"][1]["instance_type"] == "p4d.24xlarge"
    assert document["offers"][1]["efa_interfaces"] == 4


def test_max_offers_limits_the_json_too() -> None:
    result = runner.invoke(app, ["offer", "--backend", "gcp", "--json", "--max-offers", "3"])

    document = json.loads(result.output)
    assert (document["shown"], len(document["offers"]), document["total"]) == (3, 3, 50)
    assert [o["price"] for o in document["offers"]] == [0.02679, 0.05552, 0.06701]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--gpu", "A100:2", "--backend", "aws"],
            "error: no offer fits: `resources.gpu.count: 2` removed the last 6 offers",
        ),
        (
            ["--gpu", "A100:8", "--max-price", "5", "--backend", "aws"],
            "error: no offer fits: `max_price: 5` removed the last 6 offers",
        ),
        (["--gpu", "A100:8:xx"], "error: `--gpu A100:8:xx`: 'A100:8:xx' gives the GPU name"),
        (["--backend", "lambda"], "error: `--backend lambda`: not a backend"),
        (["--gpu", "H100"], "error: no offer fits on the backends in use (local);"),
        (["-f", "missing.dstack.yml"], "error: missing.dstack.yml: no such file"),
        (["--gpu", "H900"], "error: unknown GPU name `H900` in `resources.gpu.name`; did you"),
    ],
)
def test_errors_are_one_red_line_and_exit_1(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = one_error_line(["offer", *args], monkeypatch, capsys)

    assert err.startswith(message), err


@pytest.mark.parametrize("price", ["0", "-1"])
def test_max_price_must_be_positive_as_in_a_task_file(price: str) -> None:
    result = runner.invoke(app, ["offer", "--max-price", price])

    assert result.exit_code == 2
    assert "Invalid value for --max-price: must be greater than 0" in result.output


def test_spot_flags_exclude_each_other() -> None:
    result = runner.invoke(app, ["offer", "--spot", "--on-demand"])

    assert result.exit_code == 2
    assert "give one of --spot, --on-demand, --spot-auto" in result.output


def test_offers_table_is_reusable_for_apply() -> None:
    query = find_offers(
        Requirements(gpu_names=("T4",), gpu_count={"min": 1}),
        backends=["aws", "gcp", "azure"],
        catalog=load_packaged(),
    )

    table = offers_table(query.offers[:3], total=query.total, shown=3)

    assert table.row_count == 3
    assert [column.header for column in table.columns] == [
        "#",
        "BACKEND",
        "REGION",
        "RESOURCES",
        "INSTANCE TYPE",
        "SPOT",
        "PRICE",
    ]
    assert table.caption == "Shown 3 of 9 offers"


def test_offline_flag_never_goes_online(monkeypatch: pytest.MonkeyPatch) -> None:
    import taskstack.compiler.catalog as catalog_module

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog went online")

    monkeypatch.delenv("TASKSTACK_OFFLINE")
    monkeypatch.setattr(catalog_module, "_download", forbidden)

    result = runner.invoke(app, ["offer", "--offline", "--backend", "azure", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["catalog"]["kind"] == "packaged"
