"""`dstack plan`: the resource tree, stable JSON, options, and one-line errors."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskstack.cli.plan  # noqa: F401  (registers the command)
from taskstack.cli.app import app
from tests.cli.errors import one_error_line

runner = CliRunner()
WIDE = {"COLUMNS": "200"}

TASK = """\
type: task
name: train
nodes: 2
commands:
  - torchrun train.py
resources:
  gpu: H100:8
"""


@pytest.fixture(autouse=True)
def _no_clouds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKSTACK_BACKENDS", raising=False)
    monkeypatch.delenv("TASKSTACK_CATALOG", raising=False)


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.dstack.yml"
    path.write_text(TASK)
    return path


def test_tree_shows_the_offer_and_what_a_reviewer_checks(task_file: Path) -> None:
    result = runner.invoke(app, ["plan", "-f", str(task_file), "--backend", "aws"], env=WIDE)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == (
        "run train: aws p5.48xlarge x 2 in us-east-1, on-demand, $98.32/h per node"
    )
    out = result.output
    assert "aws:ec2/instance:Instance train-0" in out
    assert "aws:ec2/instance:Instance train-1" in out
    assert "instance type: p5.48xlarge" in out
    assert "EFA interfaces: 32" in out
    assert "strategy: cluster" in out
    assert "disk GB: 100" in out
    assert "taskstack:run=train" in out
    assert "12 resources: 2 aws:ec2/eip:Eip, 2 aws:ec2/instance:Instance" in out
    # The user data is long and not something to eyeball in a tree.
    assert "#!/bin/bash" not in out


def test_json_is_stable_and_carries_offer_plan_and_resources(task_file: Path) -> None:
    args = ["plan", "-f", str(task_file), "--backend", "aws", "--json"]

    first = runner.invoke(app, args)
    second = runner.invoke(app, args)

    assert first.exit_code == 0, first.output
    assert first.output == second.output
    data = json.loads(first.output)
    assert sorted(data) == ["offer", "plan", "preview"]
    assert data["plan"]["efa_interfaces"] == 32
    assert data["plan"]["placement_group"] is True
    assert data["preview"]["counts"]["aws:ec2/instance:Instance"] == 2
    assert [n["rank"] for n in data["preview"]["outputs"]["nodes"]] == [0, 1]


def test_nodes_option_overrides_the_task(task_file: Path) -> None:
    result = runner.invoke(
        app, ["plan", "-f", str(task_file), "-b", "aws", "--nodes", "1", "--json"]
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["preview"]["counts"]["aws:ec2/instance:Instance"] == 1
    assert "aws:ec2/placementGroup:PlacementGroup" not in data["preview"]["counts"]


def test_tpu_task_on_gcp_is_one_tpu_vm(tmp_path: Path) -> None:
    path = tmp_path / "tpu.dstack.yml"
    path.write_text("type: task\ncommands: [python t.py]\nresources:\n  gpu: v5litepod-8\n")

    result = runner.invoke(app, ["plan", "-f", str(path), "--backend", "gcp"], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "gcp:tpu/v2Vm:V2Vm tpu" in result.output
    assert "TPU: v5litepod-8" in result.output
    assert "TPU runtime: v2-alpha-tpuv5-lite" in result.output


def test_azure_backend(task_file: Path) -> None:
    result = runner.invoke(app, ["plan", "-f", str(task_file), "-b", "azure"], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "azure-native:compute:VirtualMachine train-0" in result.output
    assert "instance type: Standard_ND96isr_H100_v5" in result.output


def test_unknown_backend_is_refused_by_the_option(task_file: Path) -> None:
    result = runner.invoke(app, ["plan", "-f", str(task_file), "--backend", "oci"])

    assert result.exit_code == 2
    assert "oci" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "missing.dstack.yml"], "error: missing.dstack.yml: no such file"),
        (["-f", "{task}", "--name", "Bad_Name"], "error: `--name`: 'Bad_Name' is not a run name"),
        (
            ["-f", "{task}", "-b", "aws", "-b", "gcp"],
            "error: `--backend`: `-b aws -b gcp` names 2",
        ),
    ],
)
def test_errors_are_one_red_line_and_exit_1(
    args: list[str],
    message: str,
    task_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(task_file.parent)
    argv = [arg.replace("{task}", str(task_file)) for arg in args]
    err = one_error_line(["plan", *argv], monkeypatch, capsys)

    assert err.startswith(message), err


@pytest.fixture
def plan_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[Path, str]]:
    """`plan_error(TEXT, *ARGS)`: the task file written, and the one error line that
    `dstack plan -f FILE ARGS` prints for it."""

    def plan(text: str, *args: str) -> tuple[Path, str]:
        path = tmp_path / "task.dstack.yml"
        path.write_text(text)
        return path, one_error_line(["plan", "-f", str(path), *args], monkeypatch, capsys)

    return plan


@pytest.mark.parametrize("backend", ["aws", "gcp", "azure"])
def test_no_fit_names_an_offer_of_the_backend_previewed(backend: str, plan_error) -> None:
    cheap = "type: task\nmax_price: 0.001\nresources: {gpu: A100}\ncommands: [x]\n"

    _, err = plan_error(cheap, "-b", backend)

    assert err.startswith("error: no offer fits: `max_price: 0.001` removed the last"), err
    assert f"(the cheapest was {backend} " in err, err


def test_a_task_whose_files_would_be_missing_is_refused(plan_error) -> None:
    files = TASK + "files:\n  - data/config.json:/opt/config.json\n"

    path, err = plan_error(files, "-b", "aws")

    assert err.startswith(f"error: {path}: `files`: taskstack does not copy files"), err


@pytest.mark.parametrize(
    ("backend", "module", "label"),
    [
        ("aws", "pulumi", "AWS"),
        ("aws", "pulumi_aws", "AWS"),
        ("gcp", "pulumi_gcp", "GCP"),
        ("azure", "pulumi_azure_native", "Azure"),
    ],
)
def test_a_missing_sdk_is_one_line_naming_the_extra(
    backend: str, module: str, label: str, task_file: Path, tmp_path: Path
) -> None:
    # A fresh interpreter: the SDKs are already imported in this one.
    script = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        f"sys.argv = ['dstack', 'plan', '-f', {str(task_file)!r}, '-b', {backend!r}]\n"
        "from taskstack.cli.app import main\n"
        "main()\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )

    assert done.returncode == 1
    assert done.stderr.startswith(f"error: the {label} preview needs the Pulumi SDK"), done.stderr
    assert f"pip install 'taskstack[{backend}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_program_loads_only_what_json_needs_and_freezes_what_it_built(
    task_file: Path,
) -> None:
    # A fresh `dstack` process that, as it exits, says which of the heavy or unneeded
    # modules it loaded and whether the collector was left to walk the preview's objects.
    script = (
        "import atexit, gc, json, sys\n"
        "def report():\n"
        "    heavy = ('rich', 'gpuhunt', 'requests')\n"
        "    loaded = [m for m in sys.modules if m.split('.')[0] in heavy or m.startswith("
        "'taskstack.cli.')]\n"
        "    print(json.dumps({'loaded': sorted(loaded), 'frozen': gc.get_freeze_count()}),"
        " file=sys.stderr)\n"
        "atexit.register(report)\n"
        f"sys.argv = ['dstack', 'plan', '-f', {str(task_file)!r}, '-b', 'aws', '--json']\n"
        "from taskstack.cli.main import main\n"
        "main()\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["preview"]["counts"]["aws:ec2/instance:Instance"] == 2
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["loaded"] == ["taskstack.cli.app", "taskstack.cli.main", "taskstack.cli.plan"]
    assert report["frozen"] > 0


def test_run_in_process_the_command_leaves_the_collector_alone(task_file: Path) -> None:
    frozen = gc.get_freeze_count()

    result = runner.invoke(app, ["plan", "-f", str(task_file), "-b", "aws", "--json"])

    assert result.exit_code == 0, result.output
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()


@pytest.mark.parametrize(("cloud", "room"), [("aws", 251), ("gcp", 252), ("azure", 251)])
def test_plan_refuses_more_nodes_than_the_runs_subnet_holds(
    cloud: str, room: int, plan_error
) -> None:
    wide = "type: task\nname: wide\ncommands: [hostname]\n"

    path, err = plan_error(wide, "-b", cloud, "--nodes", str(room + 1))
    fits = runner.invoke(app, ["plan", "-f", str(path), "-b", cloud, "--nodes", "2", "--json"])

    assert f"`nodes: {room + 1}` does not fit the run's subnet 10.200.0.0/24 ({room} " in err
    assert fits.exit_code == 0, fits.output
