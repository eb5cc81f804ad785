"""The offline preview harness: mocks, autonaming, secrets, errors, stability, isolation."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest

from taskstack.compiler.plan import NetworkPlan
from taskstack.errors import EngineMissingError, OffersError, StackError
from taskstack.stacks.mocks import run_program
from taskstack.stacks.preview import (
    PREVIEW_SSH_KEY,
    SECRET_MASK,
    firewall_rules,
    highlights,
    paused_gc,
    preview,
    preview_task,
    require_sdk,
)
from tests.conftest import REPO_ROOT
from tests.stacks.plans import make_plan

TASK = """\
type: task
name: train
nodes: 2
commands:
  - python train.py
resources:
  gpu: H100:8
"""


def _write_task(tmp_path: Path, text: str = TASK, name: str = "train.dstack.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_secret_inputs_and_outputs_are_masked() -> None:
    import pulumi_aws as aws

    def program() -> None:
        pair = aws.ec2.KeyPair("k", public_key=pulumi.Output.secret("hunter2-key"))
        pulumi.export("plain", pair.key_name)
        pulumi.export("hidden", pulumi.Output.secret("hunter2"))

    resources, outputs = run_program(program, stack="secrets")

    (pair,) = resources
    assert pair.inputs["publicKey"] == SECRET_MASK
    assert outputs["hidden"] == SECRET_MASK
    assert outputs["plain"].startswith("k-")
    assert "hunter2" not in json.dumps([r.model_dump() for r in resources]) + str(outputs)


def test_autonaming_feeds_names_to_dependent_resources() -> None:
    import pulumi_aws as aws

    def program() -> None:
        group = aws.ec2.PlacementGroup("pg", strategy="cluster")
        aws.ec2.Instance("vm", instance_type="t3.micro", ami="ami-1", placement_group=group.name)

    resources, _ = run_program(program, stack="autoname")

    by_type = {r.type: r.inputs for r in resources}
    name = by_type["aws:ec2/placementGroup:PlacementGroup"]["name"]
    assert name.startswith("pg-") and len(name) == len("pg-") + 7
    assert by_type["aws:ec2/instance:Instance"]["placementGroup"] == name


def test_a_failing_program_is_a_stack_error_with_the_reason() -> None:
    def program() -> None:
        raise ValueError("no such subnet")

    with pytest.raises(StackError, match="run `broken` failed under the preview mocks: no such"):
        run_program(program, stack="broken")


def test_a_wrongly_typed_argument_is_caught_by_the_sdk() -> None:
    import pulumi_gcp as gcp

    def program() -> None:
        gcp.compute.Network("n", auto_create_subnetworks=False, mtu=["not", "a", "number"])

    with pytest.raises(StackError, match="mtu"):
        run_program(program, stack="typed")


def test_an_invoke_the_mocks_cannot_answer_is_refused() -> None:
    import pulumi_aws as aws

    def program() -> None:
        pulumi.export("zones", aws.get_availability_zones_output().names)

    with pytest.raises(
        StackError, match="cannot answer the invoke `aws:index/getAvailabilityZones"
    ):
        run_program(program, stack="invoke")


def test_many_previews_in_one_process_stay_independent() -> None:
    plans = [
        make_plan("g5.xlarge", nodes=2),
        make_plan("a3-highgpu-8g", nodes=1),
        make_plan("g5.xlarge", nodes=1),
    ]

    results = [preview(plan) for plan in plans]

    assert [len(r.of_type("aws:ec2/instance:Instance")) for r in results] == [2, 0, 1]
    assert len(results[1].of_type("gcp:compute/instance:Instance")) == 1
    assert [len(r.outputs["nodes"]) for r in results] == [2, 1, 1]


def test_a_failed_preview_does_not_spoil_the_next() -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(StackError):
        run_program(broken, stack="first")
    result = preview(make_plan("g5.xlarge"))

    assert result.counts["aws:ec2/instance:Instance"] == 1


def test_json_is_stable_sorted_and_complete() -> None:
    plan = make_plan("p4d.24xlarge", nodes=2)

    first, second = preview(plan).to_json(), preview(plan).to_json()

    assert first == second
    data = json.loads(first)
    assert list(data) == sorted(data)
    assert data["counts"]["aws:ec2/instance:Instance"] == 2
    assert [n["rank"] for n in data["outputs"]["nodes"]] == [0, 1]
    types = [r["type"] for r in data["resources"]]
    assert types == sorted(types)


def test_only_the_sdk_of_the_plans_cloud_is_imported() -> None:
    code = (
        "import sys\n"
        "from tests.stacks.plans import make_plan\n"
        "from taskstack.stacks.preview import preview\n"
        "preview(make_plan('g5.xlarge'))\n"
        "print(sorted(m for m in ('pulumi_aws', 'pulumi_gcp', 'pulumi_azure_native')"
        " if m in sys.modules))\n"
    )

    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert out.stdout.strip() == "['pulumi_aws']"


def test_highlights_show_what_a_reviewer_checks() -> None:
    result = preview(make_plan("p5.48xlarge", nodes=2))

    (instance, *_) = result.of_type("aws:ec2/instance:Instance")
    (template,) = result.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    pairs = dict(highlights(instance))
    assert pairs["instance type"] == "p5.48xlarge"
    assert pairs["disk GB"] == "100"
    assert pairs["placement"].startswith("demo-placement-")
    assert pairs["on shutdown"] == "terminate"
    assert "taskstack:rank=0" in pairs["tags"]
    assert dict(highlights(template))["EFA interfaces"] == "32"


@pytest.mark.parametrize(
    ("instance_type", "guard"),
    [
        ("p5.48xlarge", "aws:ec2/securityGroup:SecurityGroup"),
        ("g2-standard-4", "gcp:compute/firewall:Firewall"),
        ("Standard_NC4as_T4_v3", "azure-native:network:NetworkSecurityGroup"),
    ],
)
def test_ssh_and_intra_run_rules_are_shown_apart_on_every_cloud(
    instance_type: str, guard: str
) -> None:
    network = NetworkPlan(ssh_cidr="203.0.113.0/24")
    result = preview(make_plan(instance_type, nodes=2, network=network))

    rules = [pair for resource in result.of_type(guard) for pair in firewall_rules(resource)]

    labels = sorted(label for label, _ in rules)
    assert labels == ["SSH from", "intra-run"], rules
    assert dict(rules)["SSH from"] == "203.0.113.0/24"
    assert dict(rules)["intra-run"].startswith("all traffic between the run's nodes")
    assert "203.0.113.0/24" not in dict(rules)["intra-run"]


def test_highlights_carry_the_firewall_rules() -> None:
    result = preview(make_plan("Standard_NC4as_T4_v3", nodes=2))

    (nsg,) = result.of_type("azure-native:network:NetworkSecurityGroup")

    pairs = highlights(nsg)
    assert ("SSH from", "0.0.0.0/0") in pairs
    assert ("intra-run", "all traffic between the run's nodes (10.200.0.0/24)") in pairs


@pytest.mark.parametrize(
    ("cloud", "blocked", "label"),
    [
        ("aws", "pulumi", "AWS"),
        ("gcp", "pulumi_gcp", "GCP"),
        ("azure", "pulumi_azure_native", "Azure"),
    ],
)
def test_a_missing_sdk_names_the_extra_to_install(
    cloud: str, blocked: str, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)

    with pytest.raises(EngineMissingError, match=rf"^the {label} preview needs the Pulumi SDK"):
        require_sdk(cloud)


def test_preview_task_picks_the_cheapest_offer_of_the_backend(tmp_path: Path) -> None:
    path = _write_task(tmp_path)

    result = preview_task(path, backend="aws")

    assert result.plan.run_name == "train"
    assert result.plan.instance_type == "p5.48xlarge"
    assert result.plan.ssh_public_key == PREVIEW_SSH_KEY
    assert result.preview.counts["aws:ec2/instance:Instance"] == 2
    assert result.offer["instance_type"] == "p5.48xlarge"


def test_preview_task_overrides_nodes_and_name(tmp_path: Path) -> None:
    path = _write_task(tmp_path)

    result = preview_task(path, backend="gcp", nodes=3, run_name="other")

    assert result.plan.run_name == "other"
    assert result.preview.counts["gcp:compute/instance:Instance"] == 3


def test_run_is_named_after_the_folder_of_a_plain_dstack_yml(tmp_path: Path) -> None:
    folder = tmp_path / "My_Project"
    folder.mkdir()
    path = _write_task(folder, TASK.replace("name: train\n", ""), name=".dstack.yml")

    result = preview_task(path, backend="azure")

    assert result.plan.run_name == "my-project"


def test_no_offer_of_the_backend_is_an_offers_error(tmp_path: Path) -> None:
    path = _write_task(tmp_path, TASK + "backends: [gcp]\n")

    with pytest.raises(OffersError):
        preview_task(path, backend="aws")


def test_the_collector_is_paused_only_while_a_program_runs() -> None:
    seen = []

    def program() -> None:
        seen.append(gc.isenabled())

    assert gc.isenabled()
    run_program(program, stack="gc")

    assert seen == [False]
    assert gc.isenabled()


def test_a_paused_collector_stays_paused_after_a_preview() -> None:
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_preview_works_inside_a_running_event_loop() -> None:
    # `apply` is async: a preview from a coroutine must not touch the caller's loop.
    async def from_a_coroutine() -> int:
        return len(preview(make_plan("g5.xlarge", nodes=2)).outputs["nodes"])

    assert asyncio.run(from_a_coroutine()) == 2
