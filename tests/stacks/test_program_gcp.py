"""The GCP program under the Pulumi SDK's mocks: instances, GPUs, placement, spot, TPU VMs."""

from __future__ import annotations

import re

import pytest

from taskstack.compiler.plan import NetworkPlan
from taskstack.errors import StackError
from taskstack.stacks.cloudinit import NATIVE_LIMIT_HEAD_START_SECONDS, TPU_NODE_ATTRIBUTE
from taskstack.stacks.preview import preview
from taskstack.stacks.programs.gcp import service_account_id
from tests.stacks.plans import (
    SSH_KEY,
    catalog_offer,
    cpu_offer,
    make_plan,
    multi_host_tpu_offer,
)

INSTANCE = "gcp:compute/instance:Instance"
POLICY = "gcp:compute/resourcePolicy:ResourcePolicy"
FIREWALL = "gcp:compute/firewall:Firewall"
TPU_VM = "gcp:tpu/v2Vm:V2Vm"
ACCOUNT = "gcp:serviceaccount/account:Account"
INSTANCE_GRANT = "gcp:compute/instanceIAMMember:InstanceIAMMember"
DISK_GRANT = "gcp:compute/diskIamMember:DiskIamMember"
PROJECT_GRANT = "gcp:projects/iAMMember:IAMMember"

# GCP's rule for service account ids (IAM API, `projects.serviceAccounts.create`).
ACCOUNT_ID = re.compile(r"^[a-z](?:[-a-z0-9]{4,28}[a-z0-9])$")


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_resource_counts_per_node_count(nodes: int) -> None:
    result = preview(make_plan("a3-highgpu-8g", nodes=nodes))

    assert result.counts == {
        ACCOUNT: 1,
        DISK_GRANT: nodes,
        FIREWALL: 1 if nodes == 1 else 2,
        INSTANCE: nodes,
        INSTANCE_GRANT: nodes,
        "gcp:compute/network:Network": 1,
        **({POLICY: 1} if nodes > 1 else {}),
        "gcp:compute/subnetwork:Subnetwork": 1,
    }


def test_compact_placement_policy_for_clusters_only() -> None:
    result = preview(make_plan("a3-highgpu-8g", nodes=2))

    (policy,) = result.of_type(POLICY)
    assert policy.inputs["groupPlacementPolicy"] == {"collocation": "COLLOCATED", "vmCount": 2}
    assert all(
        i.inputs["resourcePolicies"].endswith(policy.inputs["name"])
        for i in result.of_type(INSTANCE)
    )


def test_no_placement_policy_for_series_without_compact_placement() -> None:
    result = preview(make_plan("n1-standard-8", nodes=2))

    assert result.of_type(POLICY) == []


def test_n1_gets_its_gpus_attached_and_a3_has_them_built_in() -> None:
    n1 = preview(make_plan("n1-standard-8")).of_type(INSTANCE)[0].inputs
    a3 = preview(make_plan("a3-highgpu-8g")).of_type(INSTANCE)[0].inputs

    offer = catalog_offer("n1-standard-8")
    assert n1["guestAccelerators"] == [
        {"type": f"nvidia-tesla-{offer.gpu_name.lower()}", "count": offer.gpu_count}
    ]
    assert "guestAccelerators" not in a3
    assert a3["scheduling"]["onHostMaintenance"] == "TERMINATE"


def test_spot_provisioning() -> None:
    result = preview(make_plan(catalog_offer("g2-standard-4", spot=True), spot_policy="spot"))

    scheduling = result.of_type(INSTANCE)[0].inputs["scheduling"]
    assert scheduling["provisioningModel"] == "SPOT"
    assert scheduling["preemptible"] is True
    assert scheduling["automaticRestart"] is False
    assert scheduling["instanceTerminationAction"] == "DELETE"


def test_on_demand_cpu_node_migrates_and_is_never_deleted_by_gcp() -> None:
    result = preview(make_plan(cpu_offer("gcp", "n2-standard-8", "us-central1", zones=("z-a",))))

    scheduling = result.of_type(INSTANCE)[0].inputs["scheduling"]
    assert scheduling["provisioningModel"] == "STANDARD"
    assert scheduling["onHostMaintenance"] == "MIGRATE"
    assert "instanceTerminationAction" not in scheduling


def test_max_duration_deletes_the_vm_after_the_grace() -> None:
    result = preview(make_plan("g2-standard-4", max_duration="1h"))

    scheduling = result.of_type(INSTANCE)[0].inputs["scheduling"]
    assert scheduling["maxRunDuration"] == {"seconds": 3600 + 600}
    assert scheduling["instanceTerminationAction"] == "DELETE"


def test_gcp_deletes_the_vm_before_the_nodes_own_backstop_would_only_stop_it() -> None:
    (instance,) = preview(make_plan("g2-standard-4", max_duration="1h")).of_type(INSTANCE)

    native = instance.inputs["scheduling"]["maxRunDuration"]["seconds"]
    script = instance.inputs["metadata"]["user-data"]
    backstop = int(re.search(r"--on-active=(\d+)s", script).group(1))
    assert backstop == native + NATIVE_LIMIT_HEAD_START_SECONDS


def test_boot_disk_zone_image_key_and_labels() -> None:
    offer = catalog_offer("g2-standard-4").model_copy(update={"disk_gb": 250})

    (instance,) = preview(make_plan(offer, run_name="exp")).of_type(INSTANCE)

    inputs = instance.inputs
    assert inputs["bootDisk"]["initializeParams"]["size"] == 250
    assert inputs["bootDisk"]["initializeParams"]["image"].endswith(
        "ubuntu-accelerator-2204-amd64-with-nvidia-550"
    )
    assert inputs["zone"] == offer.zones[0]
    assert inputs["metadata"]["ssh-keys"] == f"ubuntu:{SSH_KEY}"
    assert inputs["metadata"]["user-data"].startswith("#!/bin/bash")
    assert inputs["labels"] == {"taskstack-run": "exp", "taskstack-rank": "0"}


def test_firewall_opens_ssh_from_the_cidr_and_everything_between_nodes() -> None:
    network = NetworkPlan(ssh_cidr="198.51.100.0/24")

    result = preview(make_plan("a3-highgpu-8g", nodes=2, network=network))

    rules = {r.name: r.inputs for r in result.of_type(FIREWALL)}
    assert rules["demo-ssh"]["sourceRanges"] == ["198.51.100.0/24"]
    assert rules["demo-ssh"]["allows"] == [{"protocol": "tcp", "ports": ["22"]}]
    assert rules["demo-internal"]["sourceTags"] == ["taskstack-demo"]
    assert rules["demo-internal"]["allows"] == [{"protocol": "all"}]
    assert all(i.inputs["tags"] == ["taskstack-demo"] for i in result.of_type(INSTANCE))


def test_existing_network_needs_its_network_name() -> None:
    with pytest.raises(StackError, match="needs the `vpc_id` of its GCP network"):
        preview(make_plan("g2-standard-4", network=NetworkPlan(subnet_id="sub")))


def test_tpu_v5litepod_8_is_one_tpu_vm() -> None:
    offer = catalog_offer("v5litepod-8").model_copy(update={"spot": True})

    result = preview(make_plan(offer, spot_policy="spot"))

    assert result.of_type(INSTANCE) == []
    (vm,) = result.of_type(TPU_VM)
    assert vm.inputs["acceleratorType"] == "v5litepod-8"
    assert vm.inputs["runtimeVersion"] == "v2-alpha-tpuv5-lite"
    assert vm.inputs["schedulingConfig"] == {"spot": True}
    assert vm.inputs["metadata"]["startup-script"].startswith("#!/bin/bash")
    assert [n["rank"] for n in result.outputs["nodes"]] == [0]


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [("v2-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")],
)
def test_tpu_runtime_version_per_generation(accelerator: str, runtime: str) -> None:
    (vm,) = preview(make_plan(catalog_offer(accelerator))).of_type(TPU_VM)

    assert vm.inputs["runtimeVersion"] == runtime


def test_multi_host_slice_is_one_vm_whose_hosts_are_the_nodes() -> None:
    result = preview(make_plan(multi_host_tpu_offer()))

    assert len(result.of_type(TPU_VM)) == 1
    nodes = result.outputs["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1, 2, 3]
    assert len({n["private_ip"] for n in nodes}) == 4
    assert all(n["instance_id"].endswith(f"/worker-{n['rank']}") for n in nodes)
    # The hosts talk to each other: the intra-run rule is there.
    assert len(result.of_type(FIREWALL)) == 2


def test_nodes_output_for_instances() -> None:
    result = preview(make_plan("a3-highgpu-8g", nodes=2, network=NetworkPlan(public_ips=False)))

    nodes = result.outputs["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1]
    assert [n["public_ip"] for n in nodes] == [None, None]
    assert all(n["private_ip"] and n["instance_id"] for n in nodes)
    assert all(
        "accessConfigs" not in i.inputs["networkInterfaces"][0] for i in result.of_type(INSTANCE)
    )


def test_rendering_twice_gives_the_same_program() -> None:
    plan = make_plan(multi_host_tpu_offer())

    assert preview(plan).to_json() == preview(plan).to_json()


# --- the nodes delete themselves (cloudinit.GcpSelfDeletion) ---------------------------------


def test_instances_run_as_the_runs_service_account_with_the_cloud_platform_scope() -> None:
    result = preview(make_plan("a3-highgpu-8g", nodes=2, run_name="exp"))

    (account,) = result.of_type(ACCOUNT)
    assert account.inputs["accountId"] == "taskstack-exp"
    email = "taskstack-exp@mock.iam.gserviceaccount.com"
    assert [i.inputs["serviceAccount"] for i in result.of_type(INSTANCE)] == [
        {"email": email, "scopes": ["cloud-platform"]}
    ] * 2


def test_each_instance_may_delete_itself_and_its_boot_disk_and_nothing_else() -> None:
    result = preview(make_plan("a3-highgpu-8g", nodes=2, run_name="exp"))

    member = "serviceAccount:taskstack-exp@mock.iam.gserviceaccount.com"
    instances = {i.name: i.inputs for i in result.of_type(INSTANCE)}
    for grants, target in ((INSTANCE_GRANT, "instanceName"), (DISK_GRANT, "name")):
        granted = {g.inputs[target]: g.inputs for g in result.of_type(grants)}
        assert sorted(granted) == sorted(i["name"] for i in instances.values())
        for name, grant in granted.items():
            assert grant["role"] == "roles/compute.instanceAdmin.v1"
            assert grant["member"] == member
            assert grant["zone"] == instances[name]["zone"]
            assert "condition" not in grant
    # Instance-level grants only: nothing on the project.
    assert result.of_type(PROJECT_GRANT) == []


def test_max_duration_still_arms_gcp_deletion_besides_the_nodes_own() -> None:
    (instance,) = preview(make_plan("g2-standard-4", max_duration="1h")).of_type(INSTANCE)

    assert instance.inputs["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert "serviceAccount" in instance.inputs
    assert "GCP is deleting this instance" in instance.inputs["metadata"]["user-data"]


def test_tpu_vm_runs_as_the_service_account_and_knows_its_node_name() -> None:
    offer = multi_host_tpu_offer()

    result = preview(make_plan(offer, run_name="slice"))

    (vm,) = result.of_type(TPU_VM)
    assert vm.inputs["serviceAccount"] == {
        "email": "taskstack-slice@mock.iam.gserviceaccount.com",
        "scopes": ["cloud-platform"],
    }
    assert vm.inputs["metadata"][TPU_NODE_ATTRIBUTE] == (
        f"projects/mock/locations/{vm.inputs['zone']}/nodes/slice"
    )
    assert "GCP is deleting this TPU node" in vm.inputs["metadata"]["startup-script"]


def test_tpu_vm_grant_is_tpu_editor_on_the_project_as_nodes_have_no_iam_of_their_own() -> None:
    result = preview(make_plan(catalog_offer("v5litepod-8"), run_name="slice"))

    (grant,) = result.of_type(PROJECT_GRANT)
    assert grant.inputs["project"] == "mock"  # the provider's project: the plan names none
    assert grant.inputs["role"] == "roles/tpu.editor"
    assert grant.inputs["member"] == "serviceAccount:taskstack-slice@mock.iam.gserviceaccount.com"
    assert "condition" not in grant.inputs  # the TPU API does not read resource conditions
    assert result.of_type(INSTANCE_GRANT) == result.of_type(DISK_GRANT) == []


def test_the_plans_project_is_the_service_accounts_and_the_grants() -> None:
    plan = make_plan(catalog_offer("v5litepod-8")).model_copy(update={"project": "proj-7"})

    result = preview(plan)

    (account,) = result.of_type(ACCOUNT)
    (grant,) = result.of_type(PROJECT_GRANT)
    (vm,) = result.of_type(TPU_VM)
    assert account.inputs["project"] == grant.inputs["project"] == "proj-7"
    assert vm.inputs["metadata"][TPU_NODE_ATTRIBUTE].startswith("projects/proj-7/")


@pytest.mark.parametrize(
    "run_name",
    ["a", "demo", "a" * 20, "a" * 21, "trailing-", "a" * 41, "a" + "-" * 40, "x1-x2-x3-x4-x5"],
)
def test_service_account_ids_follow_gcps_rule_for_every_run_name(run_name: str) -> None:
    account_id = service_account_id(run_name)

    assert ACCOUNT_ID.match(account_id), account_id


def test_long_run_names_sharing_a_prefix_get_distinct_service_accounts() -> None:
    first = service_account_id("experiment-with-a-long-name-1")
    second = service_account_id("experiment-with-a-long-name-2")

    assert first != second
    assert first.startswith("taskstack-experiment")
