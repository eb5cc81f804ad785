"""The plan rendered as Terraform JSON: the resources, their arguments, the `nodes` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskstack.compiler.plan import RANK_TAG, RUN_TAG, NetworkPlan
from taskstack.errors import ConfigError
from taskstack.settings import AwsSettings, load_settings
from taskstack.stacks import tfjson
from tests.testbed.plans import TEST_SSH_KEY, aws_plan, p5_plan


def _kinds(document: dict) -> dict[str, int]:
    return {kind: len(items) for kind, items in document["resource"].items()}


def test_two_nodes_get_a_network_a_group_a_key_and_one_instance_per_rank() -> None:
    plan = aws_plan("train", nodes=2)

    document = tfjson.render(plan, user_data="#!/bin/sh\ntrue\n")

    assert _kinds(document) == {
        "aws_vpc": 1,
        "aws_subnet": 1,
        "aws_internet_gateway": 1,
        "aws_route": 1,
        "aws_security_group": 1,
        "aws_key_pair": 1,
        "aws_instance": 2,
    }
    resources = document["resource"]
    assert resources["aws_vpc"]["net"]["cidr_block"] == "10.200.0.0/16"
    assert resources["aws_subnet"]["net"]["cidr_block"] == "10.200.0.0/24"
    assert resources["aws_key_pair"]["run"]["public_key"] == TEST_SSH_KEY
    for rank in (0, 1):
        node = resources["aws_instance"][f"node_{rank}"]
        assert node["instance_type"] == "t3.micro"
        assert node["root_block_device"][0]["volume_size"] == 20
        assert node["instance_initiated_shutdown_behavior"] == "terminate"
        assert node["user_data"] == "#!/bin/sh\ntrue\n"
        assert node["tags"][RUN_TAG] == "train"
        assert node["tags"][RANK_TAG] == str(rank)
        assert node["tags"]["Name"] == f"train-{rank}"
        assert "instance_market_options" not in node
        assert "placement_group" not in node


def test_the_security_group_opens_ssh_and_traffic_between_nodes_only_when_there_are_several():
    ssh_only = tfjson.render(aws_plan("one", nodes=1, network=NetworkPlan(ssh_cidr="1.2.3.0/24")))
    cluster = tfjson.render(aws_plan("two", nodes=2))

    one_rules = ssh_only["resource"]["aws_security_group"]["nodes"]["ingress"]
    two_rules = cluster["resource"]["aws_security_group"]["nodes"]["ingress"]
    assert [(r["protocol"], r["from_port"], r["cidr_blocks"]) for r in one_rules] == [
        ("tcp", 22, ["1.2.3.0/24"])
    ]
    assert [(r["protocol"], r["self"]) for r in two_rules] == [("tcp", None), ("-1", True)]
    # JSON syntax gives inline rules no defaults: every attribute is spelled out.
    assert all(len(rule) == 9 for rule in one_rules + two_rules)


def test_the_image_is_looked_up_unless_the_plan_names_one() -> None:
    looked_up = tfjson.render(aws_plan("train"))
    given = tfjson.render(aws_plan("train", image="ami-12345678"))

    lookup = looked_up["data"]["aws_ami"]["image"]
    assert lookup["owners"] == ["099720109477"]
    assert "ubuntu-jammy-22.04-amd64-server" in lookup["filter"][0]["values"][0]
    assert looked_up["resource"]["aws_instance"]["node_0"]["ami"] == "${data.aws_ami.image.id}"
    assert "data" not in given
    assert given["resource"]["aws_instance"]["node_0"]["ami"] == "ami-12345678"


def test_an_existing_subnet_is_used_as_it_is() -> None:
    network = NetworkPlan(vpc_id="vpc-1", subnet_id="subnet-1")
    subnet_only = NetworkPlan(subnet_id="subnet-2")

    document = tfjson.render(aws_plan("train", network=network))
    looked_up = tfjson.render(aws_plan("train", network=subnet_only))

    assert not {"aws_vpc", "aws_subnet", "aws_internet_gateway"} & set(document["resource"])
    assert document["resource"]["aws_instance"]["node_0"]["subnet_id"] == "subnet-1"
    assert document["resource"]["aws_security_group"]["nodes"]["vpc_id"] == "vpc-1"
    group = looked_up["resource"]["aws_security_group"]["nodes"]
    assert group["vpc_id"] == "${data.aws_subnet.given.vpc_id}"


def test_an_efa_type_gets_every_interface_on_its_card_a_placement_group_and_spot() -> None:
    plan = p5_plan("big", nodes=2)

    document = tfjson.render(plan)

    resources = document["resource"]
    assert resources["aws_placement_group"]["cluster"]["strategy"] == "cluster"
    interfaces = resources["aws_launch_template"]["efa"]["network_interfaces"]
    assert len(interfaces) == 32
    assert [i["network_card_index"] for i in interfaces] == list(range(32))
    assert [i["device_index"] for i in interfaces] == [0] + [1] * 31
    assert {i["interface_type"] for i in interfaces} == {"efa"}
    for rank in (0, 1):
        node = resources["aws_instance"][f"node_{rank}"]
        assert node["placement_group"] == "${aws_placement_group.cluster.id}"
        assert node["launch_template"][0]["id"] == "${aws_launch_template.efa.id}"
        assert "subnet_id" not in node
        spot = node["instance_market_options"][0]
        assert spot["market_type"] == "spot"
        assert spot["spot_options"][0]["max_price"] == "40.0000"
    # Several network cards rule out an auto-assigned public IP: each node gets an EIP.
    assert set(resources["aws_eip"]) == {"node_0", "node_1"}
    assert document["data"]["aws_ami"]["image"]["owners"] == ["amazon"]


def test_the_nodes_output_lists_every_rank_with_its_addresses() -> None:
    public = tfjson.render(aws_plan("train", nodes=2))
    private = tfjson.render(aws_plan("train", nodes=2, network=NetworkPlan(public_ips=False)))

    nodes = public["output"]["nodes"]["value"]
    assert [node["rank"] for node in nodes] == [0, 1]
    assert nodes[1]["private_ip"] == "${aws_instance.node_1.private_ip}"
    assert nodes[1]["public_ip"] == "${aws_instance.node_1.public_ip}"
    assert all(node["public_ip"] is None for node in private["output"]["nodes"]["value"])
    instance = private["resource"]["aws_instance"]["node_0"]
    assert instance["associate_public_ip_address"] is False


def test_an_endpoint_override_points_every_service_at_the_emulator() -> None:
    aws = AwsSettings(endpoint_url="http://127.0.0.1:5000", profile="ci")

    provider = tfjson.render(aws_plan("train"), aws=aws)["provider"]["aws"]

    assert provider["endpoints"][0]["ec2"] == "http://127.0.0.1:5000"
    assert provider["skip_metadata_api_check"] == "true"
    assert provider["max_retries"] == 3
    assert provider["profile"] == "ci"
    assert "max_retries" not in tfjson.render(aws_plan("train"))["provider"]["aws"]


def test_credentials_never_enter_the_document(tmp_path: Path) -> None:
    environ = {"TASKSTACK_BACKENDS": "aws", "AWS_SECRET_ACCESS_KEY": "very-secret-key"}
    settings = load_settings(path=tmp_path / "none.yml", environ=environ)

    document = tfjson.render(aws_plan("train"), aws=settings.backends.aws)

    assert "very-secret-key" not in json.dumps(document)


def test_rendering_twice_gives_the_same_document() -> None:
    first = json.dumps(tfjson.render(p5_plan("big")), sort_keys=True)
    second = json.dumps(tfjson.render(p5_plan("big")), sort_keys=True)

    assert first == second


def test_other_clouds_point_to_the_pulumi_engine() -> None:
    plan = aws_plan("train").model_copy(update={"cloud": "gcp"})

    with pytest.raises(ConfigError, match="renders AWS plans only.*--engine pulumi"):
        tfjson.render(plan)
