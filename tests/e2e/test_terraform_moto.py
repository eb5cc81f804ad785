"""The Terraform engine end to end: the real AWS provider against moto's EC2 API.

Each scenario runs at most one apply (a 2-node cycle is about a minute here). moto cannot
create placement groups or EFA interfaces and ignores spot options (TESTBED.md), so the EFA
scenario checks Terraform's plan JSON and applies nothing. Timings go to stdout (`-s`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from taskstack.compiler.plan import RANK_TAG, RUN_TAG, NetworkPlan
from taskstack.home import taskstack_home
from taskstack.settings import Settings, load_settings
from taskstack.stacks.engine import EngineEvent
from taskstack.stacks.terraform import TerraformEngine
from tests.testbed.moto import MotoServer, aws_environ
from tests.testbed.plans import TEST_NETWORK, aws_plan, p5_plan

pytestmark = pytest.mark.e2e

PRIVATE = NetworkPlan(vpc_cidr="10.200.0.0/16", subnet_cidr="10.200.0.0/24", public_ips=False)
SUBNET = ipaddress.ip_network(TEST_NETWORK.subnet_cidr)


def _settings(moto: MotoServer, tmp_path: Path) -> Settings:
    return load_settings(path=tmp_path / "none.yml", environ=aws_environ(moto))


def _ubuntu_image(moto: MotoServer) -> str:
    # moto ships only old Ubuntu images (no 22.04), so the e2e plans name one explicitly; the
    # lookup itself is checked in tests/stacks/test_tfjson.py.
    images = moto.client("ec2").describe_images(Owners=["099720109477"])["Images"]
    return sorted(images, key=lambda image: image["Name"])[-1]["ImageId"]


def _live_instances(moto: MotoServer) -> list[dict]:
    reservations = moto.client("ec2").describe_instances()["Reservations"]
    instances = [i for r in reservations for i in r["Instances"]]
    return [i for i in instances if i["State"]["Name"] not in ("terminated", "shutting-down")]


def _timed(timings: dict[str, float], step: str, action):
    started = time.monotonic()
    result = action()
    timings[step] = round(time.monotonic() - started, 1)
    return result


def test_two_nodes_are_applied_become_nodes_and_are_destroyed(
    moto: MotoServer, terraform_cli: Path, tmp_path: Path
) -> None:
    engine = TerraformEngine(_settings(moto, tmp_path), user_data=lambda plan: "#!/bin/sh\n")
    plan = aws_plan("pair", nodes=2, network=PRIVATE, image=_ubuntu_image(moto))
    events: list[EngineEvent] = []
    timings: dict[str, float] = {}

    preview = _timed(timings, "preview", lambda: engine.preview(plan))
    nodes = _timed(timings, "up", lambda: engine.up(plan, on_event=events.append))
    live = _live_instances(moto)
    _timed(timings, "destroy", lambda: engine.destroy("pair"))
    print(f"\n2-node cycle against moto: {timings}, total {sum(timings.values()):.1f} s")

    assert preview.counts["aws_instance"] == 2
    assert preview.counts["aws_vpc"] == 1
    assert [node.rank for node in nodes] == [0, 1]
    assert all(ipaddress.ip_address(node.private_ip) in SUBNET for node in nodes)
    assert all(node.address == node.private_ip for node in nodes)
    assert {node.instance_id for node in nodes} == {i["InstanceId"] for i in live}
    ranks = {_tag(i, RANK_TAG) for i in live}
    assert ranks == {"0", "1"} and {_tag(i, RUN_TAG) for i in live} == {"pair"}
    assert all(i["InstanceType"] == "t3.micro" for i in live)
    done = {e.resource_name for e in events if e.status == "done"}
    assert {"aws_instance.node_0", "aws_instance.node_1", "aws_vpc.net"} <= done
    assert _live_instances(moto) == []
    assert _vpcs_in(moto, "10.200.0.0/16") == []
    assert engine.list_stacks() == []
    assert not (taskstack_home() / "terraform" / "runs" / "pair").exists()


def test_an_efa_plan_shows_placement_every_efa_interface_and_spot(
    moto: MotoServer, terraform_cli: Path, tmp_path: Path
) -> None:
    engine = TerraformEngine(_settings(moto, tmp_path), user_data=lambda plan: None)
    plan = p5_plan("big", nodes=2, image=_ubuntu_image(moto))
    started = time.monotonic()

    preview = engine.preview(plan)
    shown = engine.saved_plan("big")
    engine.destroy("big")
    print(
        f"\nEFA plan (init, plan, show -json, empty destroy): {time.monotonic() - started:.1f} s"
    )

    changes = {c["address"]: c["change"]["after"] for c in shown["resource_changes"]}
    assert changes["aws_placement_group.cluster"]["strategy"] == "cluster"
    interfaces = changes["aws_launch_template.efa"]["network_interfaces"]
    assert len(interfaces) == 32
    assert {i["interface_type"] for i in interfaces} == {"efa"}
    assert sorted(i["network_card_index"] for i in interfaces) == list(range(32))
    for rank in (0, 1):
        instance = changes[f"aws_instance.node_{rank}"]
        assert instance["instance_type"] == "p5.48xlarge"
        market = instance["instance_market_options"][0]
        assert market["market_type"] == "spot"
        assert market["spot_options"][0]["max_price"] == "40.0000"
        assert market["spot_options"][0]["spot_instance_type"] == "one-time"
    assert preview.counts["aws_eip"] == 2
    assert _live_instances(moto) == []
    assert engine.list_stacks() == []


def test_runs_are_workspaces_of_an_s3_state_backend(
    moto: MotoServer, terraform_cli: Path, tmp_path: Path
) -> None:
    moto.client("s3").create_bucket(Bucket="tf-state")
    options = {
        "bucket": "tf-state",
        "region": "us-east-1",
        "endpoints": {"s3": moto.url},
        "use_path_style": True,
        "use_lockfile": True,
        "skip_credentials_validation": True,
        "skip_requesting_account_id": True,
        "skip_metadata_api_check": True,
    }
    environ = {
        **aws_environ(moto),
        "TASKSTACK_TF_BACKEND": "s3",
        "TASKSTACK_TF_BACKEND_CONFIG": json.dumps(options),
    }
    engine = TerraformEngine(load_settings(path=tmp_path / "none.yml", environ=environ))
    plan = aws_plan("solo", nodes=1, network=PRIVATE, image=_ubuntu_image(moto))
    started = time.monotonic()

    engine.preview(plan)
    listed = engine.list_stacks()
    stored = _keys(moto, "tf-state")
    engine.destroy("solo")
    print(f"\ns3 state backend, preview + destroy: {time.monotonic() - started:.1f} s")

    assert listed == ["solo"]
    assert "env:/solo/taskstack/terraform.tfstate" in stored
    assert _keys(moto, "tf-state") == []
    assert engine.list_stacks() == []


_KILLED_APPLY = textwrap.dedent(
    """
    from taskstack.settings import load_settings
    from taskstack.stacks.terraform import TerraformEngine
    from taskstack.compiler.plan import ClusterPlan
    import sys

    plan = ClusterPlan.model_validate_json(sys.argv[1])
    engine = TerraformEngine(load_settings(), user_data=lambda plan: None)
    engine.preview(plan)
    engine.up(plan)
    """
)


def test_a_stack_left_by_a_killed_apply_is_listed_and_destroyed(
    moto: MotoServer, terraform_cli: Path, tmp_path: Path
) -> None:
    engine = TerraformEngine(_settings(moto, tmp_path), user_data=lambda plan: None)
    plan = aws_plan("crashed", nodes=1, network=PRIVATE, image=_ubuntu_image(moto))
    apply_log = taskstack_home() / "terraform" / "runs" / "crashed" / "apply.log"
    started = time.monotonic()

    taskstack = subprocess.Popen(
        [sys.executable, "-c", _KILLED_APPLY, plan.model_dump_json()],
        env={**os.environ, **aws_environ(moto)},
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        _wait_for(lambda: apply_log.exists() and "apply_start" in apply_log.read_text(), 300)
    finally:
        taskstack.send_signal(signal.SIGKILL)
        taskstack.wait()
    listed = engine.list_stacks()
    engine.destroy("crashed")
    print(f"\nkilled apply, listed and destroyed: {time.monotonic() - started:.1f} s")

    assert listed == ["crashed"]
    assert _live_instances(moto) == []
    assert _vpcs_in(moto, "10.200.0.0/16") == []
    assert engine.list_stacks() == []


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.0f} s")
        time.sleep(0.2)


def _vpcs_in(moto: MotoServer, cidr: str) -> list[str]:
    vpcs = moto.client("ec2").describe_vpcs()["Vpcs"]
    return [vpc["VpcId"] for vpc in vpcs if vpc["CidrBlock"] == cidr]


def _keys(moto: MotoServer, bucket: str) -> list[str]:
    listing = moto.client("s3").list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def _tag(instance: dict, key: str) -> str | None:
    return next((t["Value"] for t in instance.get("Tags", []) if t["Key"] == key), None)
