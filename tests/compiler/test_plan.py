"""The cluster plan: ranks, placement, EFA, spot, TPU slices, tags, and its frozen JSON form."""

from __future__ import annotations

import pydantic
import pytest

from taskstack.compiler.plan import (
    RANK_TAG,
    RUN_TAG,
    ClusterPlan,
    NetworkPlan,
    supports_cluster_placement,
    tpu_slice,
)
from taskstack.errors import ConfigError
from tests.stacks.plans import catalog_offer, cpu_offer, make_plan, multi_host_tpu_offer


def test_nodes_get_fixed_ranks_and_names() -> None:
    plan = make_plan("g5.xlarge", nodes=3, run_name="train")

    assert [(n.rank, n.name) for n in plan.nodes] == [
        (0, "train-0"),
        (1, "train-1"),
        (2, "train-2"),
    ]
    assert plan.node_count == 3


def test_offer_is_frozen_into_the_plan() -> None:
    offer = catalog_offer("p5.48xlarge")

    plan = make_plan(offer, nodes=2)

    assert (plan.cloud, plan.region, plan.instance_type) == ("aws", offer.region, "p5.48xlarge")
    assert plan.price == offer.price
    assert plan.disk_gb == offer.disk_gb
    assert plan.efa_interfaces == 32
    assert plan.gpu is not None and (plan.gpu.name, plan.gpu.count) == ("H100", 8)
    assert plan.nvidia


@pytest.mark.parametrize(
    ("instance_type", "efa"),
    [("p5.48xlarge", 32), ("p4d.24xlarge", 4), ("g5.xlarge", 0)],
)
def test_efa_interfaces_come_from_the_offer(instance_type: str, efa: int) -> None:
    assert make_plan(instance_type).efa_interfaces == efa


@pytest.mark.parametrize(("nodes", "placement"), [(1, False), (2, True), (8, True)])
def test_placement_group_only_for_several_nodes(nodes: int, placement: bool) -> None:
    assert make_plan("p4d.24xlarge", nodes=nodes).placement_group is placement


def test_no_placement_group_for_types_that_cannot_join_one() -> None:
    plan = make_plan(cpu_offer("aws", "t3.large", "us-east-1"), nodes=4)

    assert plan.placement_group is False


@pytest.mark.parametrize(
    ("cloud", "instance_type", "supported"),
    [
        ("aws", "p5.48xlarge", True),
        ("aws", "c5n.18xlarge", True),
        ("aws", "t3.large", False),
        ("aws", "mac2.metal", False),
        ("gcp", "a3-highgpu-8g", True),
        ("gcp", "n2-standard-8", True),
        ("gcp", "n1-standard-8", False),
        ("gcp", "e2-standard-4", False),
        ("azure", "Standard_ND96asr_v4", True),
    ],
)
def test_cluster_placement_support(cloud: str, instance_type: str, supported: bool) -> None:
    assert supports_cluster_placement(cloud=cloud, instance_type=instance_type) is supported


def test_spot_offer_bids_the_tasks_max_price() -> None:
    offer = catalog_offer("g5.xlarge", spot=True)

    capped = make_plan(offer, spot_policy="spot", max_price=2.5)
    uncapped = make_plan(offer, spot_policy="spot")

    assert capped.spot and capped.max_price == 2.5
    # No cap from the task: the cloud's default (the on-demand price) applies.
    assert uncapped.spot and uncapped.max_price is None


def test_on_demand_offer_has_no_bid() -> None:
    plan = make_plan("g5.xlarge", max_price=2.5)

    assert plan.spot is False
    assert plan.max_price is None


def test_tags_carry_the_run_name_and_the_tasks_tags() -> None:
    plan = make_plan("g5.xlarge", run_name="exp", tags={"team": "ml", RUN_TAG: "spoofed"})

    assert plan.tags == {"team": "ml", RUN_TAG: "exp"}
    assert plan.node_tags(1) == {"team": "ml", RUN_TAG: "exp", RANK_TAG: "1"}


def test_max_duration_reaches_the_plan_in_seconds() -> None:
    assert make_plan("g5.xlarge", max_duration="2h").max_duration == 7200
    assert make_plan("g5.xlarge").max_duration is None
    assert make_plan("g5.xlarge").heartbeat_grace == 600


def test_arm_offer_gives_an_arm_plan() -> None:
    plan = make_plan(cpu_offer("aws", "c7g.xlarge", "us-east-1", cpu_arch="arm"))

    assert plan.arch == "arm64"
    assert plan.gpu is None and not plan.nvidia


def test_first_zone_of_the_offer_is_chosen() -> None:
    plan = make_plan(catalog_offer("a3-highgpu-8g"))

    assert plan.zone == "us-east4-a"


def test_single_host_tpu_is_one_node() -> None:
    plan = make_plan(catalog_offer("v5litepod-8"))

    assert plan.tpu is not None
    assert (plan.tpu.name, plan.tpu.generation, plan.tpu.chips, plan.tpu.hosts) == (
        "v5litepod-8",
        "v5e",
        8,
        1,
    )
    assert plan.node_count == 1
    assert plan.gpu is None
    assert plan.placement_group is False


def test_multi_host_tpu_hosts_are_the_nodes() -> None:
    offer = multi_host_tpu_offer()

    plan = make_plan(offer)

    assert plan.node_count == 4
    assert plan.placement_group is False


def test_nodes_that_do_not_fit_the_tpu_slice_are_refused() -> None:
    offer = multi_host_tpu_offer()

    with pytest.raises(ConfigError, match=r"`nodes: 2` does not fit TPU slice `v5litepod-16`"):
        make_plan(offer, nodes=2)


@pytest.mark.parametrize(
    ("accelerator", "generation", "chips", "hosts"),
    [
        ("v2-8", "v2", 4, 1),
        ("v2-32", "v2", 16, 4),
        ("v3-8", "v3", 4, 1),
        ("v4-8", "v4", 4, 1),
        ("v4-32", "v4", 16, 4),
        ("v5litepod-1", "v5e", 1, 1),
        ("v5litepod-8", "v5e", 8, 1),
        ("v5litepod-16", "v5e", 16, 4),
        ("v5p-8", "v5p", 4, 1),
        ("v6e-8", "v6e", 8, 1),
        ("v6e-32", "v6e", 32, 8),
    ],
)
def test_tpu_slice_grammar(accelerator: str, generation: str, chips: int, hosts: int) -> None:
    tpu = tpu_slice(accelerator)

    assert (tpu.generation, tpu.chips, tpu.hosts) == (generation, chips, hosts)


@pytest.mark.parametrize("accelerator", ["v9-8", "v5litepod", "v4-x", "tpu"])
def test_unknown_tpu_types_are_refused(accelerator: str) -> None:
    with pytest.raises(ConfigError, match=f"TPU type `{accelerator}`"):
        tpu_slice(accelerator)


@pytest.mark.parametrize("name", ["Train", "1run", "run_1", "a" * 42, ""])
def test_run_names_that_cannot_name_resources_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is not usable as a cloud resource name"):
        make_plan("g5.xlarge", run_name=name)


def test_vpc_without_subnet_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"`vpc_id: vpc-1` needs a `subnet_id`"):
        NetworkPlan(vpc_id="vpc-1")


def test_plan_is_frozen() -> None:
    plan = make_plan("g5.xlarge")

    with pytest.raises(pydantic.ValidationError):
        plan.instance_type = "p5.48xlarge"  # type: ignore[misc]


def test_plan_round_trips_through_json() -> None:
    plan = make_plan("p5.48xlarge", nodes=2, max_duration="1h", tags={"team": "ml"})

    again = ClusterPlan.model_validate_json(plan.model_dump_json())

    assert again == plan


def test_building_twice_gives_the_same_plan() -> None:
    assert make_plan("p4d.24xlarge", nodes=4) == make_plan("p4d.24xlarge", nodes=4)
