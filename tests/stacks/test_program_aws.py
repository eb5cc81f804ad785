"""The AWS program under the Pulumi SDK's mocks (pulumi-aws checks every argument's type)."""

from __future__ import annotations

import pytest

from taskstack.compiler.plan import RANK_TAG, RUN_TAG, NetworkPlan
from taskstack.stacks.preview import Preview, preview
from tests.stacks.plans import SSH_KEY, catalog_offer, cpu_offer, make_plan

INSTANCE = "aws:ec2/instance:Instance"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
PLACEMENT = "aws:ec2/placementGroup:PlacementGroup"
EIP = "aws:ec2/eip:Eip"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
NETWORK_TYPES = (
    "aws:ec2/vpc:Vpc",
    "aws:ec2/subnet:Subnet",
    "aws:ec2/internetGateway:InternetGateway",
    "aws:ec2/route:Route",
)


def _instances(result: Preview) -> list[dict]:
    return [r.inputs for r in result.of_type(INSTANCE)]


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_resource_counts_per_node_count(nodes: int) -> None:
    result = preview(make_plan("g5.xlarge", nodes=nodes))

    expected = {
        INSTANCE: nodes,
        SECURITY_GROUP: 1,
        "aws:ec2/keyPair:KeyPair": 1,
        **{kind: 1 for kind in NETWORK_TYPES},
    }
    if nodes > 1:
        expected[PLACEMENT] = 1
    assert result.counts == dict(sorted(expected.items()))


def test_p5_gets_32_efa_interfaces_one_per_network_card() -> None:
    result = preview(make_plan("p5.48xlarge", nodes=2))

    (template,) = result.of_type(TEMPLATE)
    interfaces = template.inputs["networkInterfaces"]
    assert len(interfaces) == 32
    assert {i["interfaceType"] for i in interfaces} == {"efa"}
    assert [i["networkCardIndex"] for i in interfaces] == list(range(32))
    assert [i["deviceIndex"] for i in interfaces] == [0] + [1] * 31
    for instance in _instances(result):
        # The interfaces (with subnet and security group) come from the template.
        assert instance["launchTemplate"]["id"].startswith("lt-")
        assert "subnetId" not in instance and "vpcSecurityGroupIds" not in instance


def test_p4d_gets_4_efa_interfaces() -> None:
    result = preview(make_plan("p4d.24xlarge"))

    (template,) = result.of_type(TEMPLATE)
    assert len(template.inputs["networkInterfaces"]) == 4


def test_several_network_cards_get_an_elastic_ip_on_the_primary_interface() -> None:
    result = preview(make_plan("p5.48xlarge", nodes=2))

    eips = result.of_type(EIP)
    assert len(eips) == 2
    assert all(e.inputs["networkInterface"].startswith("eni-") for e in eips)
    public_ips = [node["public_ip"] for node in result.outputs["nodes"]]
    assert None not in public_ips and len(set(public_ips)) == 2


def test_g5_xlarge_has_no_efa() -> None:
    result = preview(make_plan("g5.xlarge", nodes=2))

    assert result.of_type(TEMPLATE) == []
    assert result.of_type(EIP) == []
    for instance in _instances(result):
        assert "networkInterfaces" not in instance and "launchTemplate" not in instance
        assert instance["associatePublicIpAddress"] is True
        assert instance["subnetId"].startswith("subnet-")


def test_placement_group_is_cluster_and_used_by_every_instance() -> None:
    result = preview(make_plan("p4d.24xlarge", nodes=2))

    (group,) = result.of_type(PLACEMENT)
    assert group.inputs["strategy"] == "cluster"
    names = {i["placementGroup"] for i in _instances(result)}
    assert names == {group.inputs["name"]}


def test_no_placement_group_for_one_node_or_a_type_without_support() -> None:
    single = preview(make_plan("p4d.24xlarge", nodes=1))
    burstable = preview(make_plan(cpu_offer("aws", "t3.large", "us-east-1"), nodes=3))

    assert single.of_type(PLACEMENT) == []
    assert burstable.of_type(PLACEMENT) == []
    assert all("placementGroup" not in i for i in _instances(burstable))


def test_spot_uses_market_options_with_the_bid() -> None:
    result = preview(
        make_plan(catalog_offer("g5.xlarge", spot=True), spot_policy="spot", max_price=0.9)
    )

    for instance in _instances(result):
        assert instance["instanceMarketOptions"] == {
            "marketType": "spot",
            "spotOptions": {
                "instanceInterruptionBehavior": "terminate",
                "maxPrice": "0.9000",
                "spotInstanceType": "one-time",
            },
        }


def test_on_demand_has_no_market_options() -> None:
    result = preview(make_plan("g5.xlarge"))

    assert "instanceMarketOptions" not in _instances(result)[0]


def test_root_volume_is_the_offers_disk_and_shutdown_terminates() -> None:
    offer = catalog_offer("g5.xlarge").model_copy(update={"disk_gb": 500})

    (instance,) = _instances(preview(make_plan(offer)))

    assert instance["rootBlockDevice"]["volumeSize"] == 500
    assert instance["rootBlockDevice"]["deleteOnTermination"] is True
    assert instance["instanceInitiatedShutdownBehavior"] == "terminate"


def test_every_taggable_resource_carries_the_run_and_node_resources_their_rank() -> None:
    result = preview(make_plan("p5.48xlarge", nodes=2, run_name="exp"))

    for resource in result.resources:
        if resource.type == "aws:ec2/route:Route":
            continue  # routes take no tags
        assert resource.inputs["tags"][RUN_TAG] == "exp", resource.name
    ranks = {i["tags"][RANK_TAG] for i in _instances(result)}
    assert ranks == {"0", "1"}
    assert {e.inputs["tags"][RANK_TAG] for e in result.of_type(EIP)} == {"0", "1"}
    assert all(i["volumeTags"][RUN_TAG] == "exp" for i in _instances(result))


def test_key_pair_holds_the_runs_key_and_instances_use_its_generated_name() -> None:
    result = preview(make_plan("g5.xlarge", nodes=2))

    (key,) = result.of_type("aws:ec2/keyPair:KeyPair")
    assert key.inputs["publicKey"] == SSH_KEY
    # The name is the provider's autonaming, emulated by the mocks: it must not vanish.
    names = {i["keyName"] for i in _instances(result)}
    assert len(names) == 1 and names.pop().startswith("demo-key-")


def test_gpu_types_boot_the_deep_learning_image_and_cpu_types_ubuntu() -> None:
    gpu = _instances(preview(make_plan("g5.xlarge")))[0]["ami"]
    cpu = _instances(preview(make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1"))))[0]["ami"]
    arm = _instances(
        preview(make_plan(cpu_offer("aws", "c7g.xlarge", "us-east-1", cpu_arch="arm")))
    )[0]["ami"]

    assert gpu == "lookup:amazon:Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
    assert cpu == "lookup:099720109477:ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
    assert arm.endswith("ubuntu-jammy-22.04-arm64-server-*")


def test_plan_image_overrides_the_lookup() -> None:
    (instance,) = _instances(preview(make_plan("g5.xlarge", image="ami-0123456789abcdef0")))

    assert instance["ami"] == "ami-0123456789abcdef0"


def test_security_group_opens_ssh_and_intra_run_traffic_only_for_clusters() -> None:
    network = NetworkPlan(ssh_cidr="203.0.113.0/24")

    single = preview(make_plan("g5.xlarge", network=network)).of_type(SECURITY_GROUP)[0]
    cluster = preview(make_plan("g5.xlarge", nodes=2, network=network)).of_type(SECURITY_GROUP)

    assert [rule["cidrBlocks"] for rule in single.inputs["ingress"]] == [["203.0.113.0/24"]]
    assert single.inputs["ingress"][0]["fromPort"] == 22
    intra = [rule for rule in cluster[0].inputs["ingress"] if rule.get("self")]
    assert len(intra) == 1 and intra[0]["protocol"] == "-1"


def test_existing_vpc_and_subnet_are_used_as_they_are() -> None:
    network = NetworkPlan(vpc_id="vpc-0aaa", subnet_id="subnet-0bbb")

    result = preview(make_plan("g5.xlarge", nodes=2, network=network))

    assert not any(result.of_type(kind) for kind in NETWORK_TYPES)
    assert {i["subnetId"] for i in _instances(result)} == {"subnet-0bbb"}
    assert result.of_type(SECURITY_GROUP)[0].inputs["vpcId"] == "vpc-0aaa"


def test_a_created_subnet_sits_in_the_plans_zone_with_the_plans_cidrs() -> None:
    network = NetworkPlan(vpc_cidr="10.9.0.0/16", subnet_cidr="10.9.1.0/24")
    offer = catalog_offer("g5.xlarge").model_copy(update={"zones": ("us-east-1b",)})

    result = preview(make_plan(offer, network=network))

    (vpc,) = result.of_type("aws:ec2/vpc:Vpc")
    (subnet,) = result.of_type("aws:ec2/subnet:Subnet")
    assert vpc.inputs["cidrBlock"] == "10.9.0.0/16"
    assert subnet.inputs["cidrBlock"] == "10.9.1.0/24"
    assert subnet.inputs["availabilityZone"] == "us-east-1b"


def test_every_resource_targets_the_plans_region() -> None:
    result = preview(make_plan(catalog_offer("g5.xlarge", region="us-west-2"), nodes=2))

    assert {r.inputs["region"] for r in result.resources} == {"us-west-2"}


def test_nodes_output_lists_every_node_in_rank_order() -> None:
    result = preview(make_plan("g5.xlarge", nodes=3))

    nodes = result.outputs["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1, 2]
    assert all(n["instance_id"].startswith("i-") for n in nodes)
    assert len({n["private_ip"] for n in nodes}) == 3
    assert all(n["public_ip"] for n in nodes)


def test_private_only_nodes_have_no_public_address() -> None:
    result = preview(make_plan("p5.48xlarge", nodes=2, network=NetworkPlan(public_ips=False)))

    assert result.of_type(EIP) == []
    assert [n["public_ip"] for n in result.outputs["nodes"]] == [None, None]


def test_user_data_sets_up_the_gpu_node() -> None:
    (instance,) = _instances(preview(make_plan("g5.xlarge", max_duration="1h")))

    assert instance["userData"].startswith("#!/bin/bash")
    assert "nvidia-ctk runtime configure --runtime=docker" in instance["userData"]
    assert "--on-active=4200s" in instance["userData"]


def test_rendering_twice_gives_the_same_program() -> None:
    plan = make_plan("p5.48xlarge", nodes=4)

    assert preview(plan).to_json() == preview(plan).to_json()
