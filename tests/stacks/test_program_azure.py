"""The Azure program under the Pulumi SDK's mocks (pulumi-azure-native checks the arguments)."""

from __future__ import annotations

import base64

import pytest

from taskstack.compiler.plan import RANK_TAG, RUN_TAG, NetworkPlan
from taskstack.stacks.cloudinit import WATCHDOG_PATH, AzureDeallocation, watchdog_script
from taskstack.stacks.preview import preview
from tests.stacks.plans import SSH_KEY, catalog_offer, make_plan

VM = "azure-native:compute:VirtualMachine"
NIC = "azure-native:network:NetworkInterface"
PUBLIC_IP = "azure-native:network:PublicIPAddress"
PPG = "azure-native:compute:ProximityPlacementGroup"
AVSET = "azure-native:compute:AvailabilitySet"
NSG = "azure-native:network:NetworkSecurityGroup"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_resource_counts_per_node_count(nodes: int) -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=nodes))

    cluster = {AVSET: 1, PPG: 1} if nodes > 1 else {}
    assert result.counts == dict(
        sorted(
            {
                **cluster,
                VM: nodes,
                ROLE_ASSIGNMENT: nodes,
                NIC: nodes,
                NSG: 1,
                PUBLIC_IP: nodes,
                "azure-native:network:Subnet": 1,
                "azure-native:network:VirtualNetwork": 1,
                "azure-native:resources:ResourceGroup": 1,
            }.items()
        )
    )


def test_cluster_vms_share_an_availability_set_in_a_proximity_placement_group() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=2))

    (ppg,) = result.of_type(PPG)
    (avset,) = result.of_type(AVSET)
    assert avset.inputs["proximityPlacementGroup"]["id"].endswith(
        ppg.inputs["proximityPlacementGroupName"]
    )
    assert avset.inputs["sku"] == {"name": "Aligned"}
    (avset_id,) = {vm.inputs["availabilitySet"]["id"] for vm in result.of_type(VM)}
    assert avset_id.endswith(f"/{avset.inputs['availabilitySetName']}")


def test_single_vm_has_no_placement() -> None:
    result = preview(make_plan("Standard_ND96asr_v4"))

    assert result.of_type(PPG) == [] and result.of_type(AVSET) == []
    assert "availabilitySet" not in result.of_type(VM)[0].inputs


def test_spot_priority_eviction_and_max_price() -> None:
    offer = catalog_offer("Standard_NC4as_T4_v3", spot=True)

    capped = preview(make_plan(offer, spot_policy="spot", max_price=0.3)).of_type(VM)[0]
    uncapped = preview(make_plan(offer, spot_policy="spot")).of_type(VM)[0]

    assert capped.inputs["priority"] == "Spot"
    assert capped.inputs["evictionPolicy"] == "Delete"
    assert capped.inputs["billingProfile"] == {"maxPrice": 0.3}
    assert uncapped.inputs["billingProfile"] == {"maxPrice": -1}


def test_on_demand_vm_is_regular() -> None:
    (vm,) = preview(make_plan("Standard_NC4as_T4_v3")).of_type(VM)

    assert vm.inputs["priority"] == "Regular"
    assert "evictionPolicy" not in vm.inputs and "billingProfile" not in vm.inputs


def test_os_disk_ssh_key_image_and_user_data() -> None:
    offer = catalog_offer("Standard_NC4as_T4_v3").model_copy(update={"disk_gb": 400})

    (vm,) = preview(make_plan(offer, max_duration="30m")).of_type(VM)

    storage = vm.inputs["storageProfile"]
    assert storage["osDisk"]["diskSizeGB"] == 400
    assert storage["osDisk"]["deleteOption"] == "Delete"
    assert storage["imageReference"]["offer"] == "ubuntu-hpc"
    linux = vm.inputs["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"] == [
        {"keyData": SSH_KEY, "path": "/home/ubuntu/.ssh/authorized_keys"}
    ]
    script = base64.b64decode(vm.inputs["osProfile"]["customData"]).decode()
    assert script.startswith("#!/bin/bash") and "--on-active=2400s" in script


def test_nics_have_accelerated_networking_and_public_ips() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=2))

    for nic in result.of_type(NIC):
        assert nic.inputs["enableAcceleratedNetworking"] is True
        (config,) = nic.inputs["ipConfigurations"]
        assert config["publicIPAddress"]["id"]
    assert all(ip.inputs["sku"] == {"name": "Standard"} for ip in result.of_type(PUBLIC_IP))


def test_private_only_nodes_get_no_public_ip() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", network=NetworkPlan(public_ips=False)))

    assert result.of_type(PUBLIC_IP) == []
    assert result.outputs["nodes"][0]["public_ip"] is None


def test_nsg_opens_ssh_and_intra_subnet_traffic_for_clusters() -> None:
    network = NetworkPlan(ssh_cidr="192.0.2.0/24", subnet_cidr="10.7.0.0/24")

    (nsg,) = preview(make_plan("Standard_ND96asr_v4", nodes=2, network=network)).of_type(NSG)

    rules = {rule["name"]: rule for rule in nsg.inputs["securityRules"]}
    assert rules["ssh"]["sourceAddressPrefix"] == "192.0.2.0/24"
    assert rules["ssh"]["destinationPortRange"] == "22"
    assert rules["intra-run"]["sourceAddressPrefix"] == "10.7.0.0/24"


def test_tags_carry_run_and_rank() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=2, run_name="exp"))

    assert all(r.inputs["tags"][RUN_TAG] == "exp" for r in result.resources if "tags" in r.inputs)
    assert {vm.inputs["tags"][RANK_TAG] for vm in result.of_type(VM)} == {"0", "1"}
    assert {r.type for r in result.resources if "tags" not in r.inputs} == {
        "azure-native:network:Subnet",
        ROLE_ASSIGNMENT,
    }


def test_every_resource_lives_in_the_runs_resource_group() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=2))

    (group,) = result.of_type("azure-native:resources:ResourceGroup")
    grouped = [r for r in result.resources if r.type != ROLE_ASSIGNMENT]
    assert {r.inputs["resourceGroupName"] for r in grouped} == {group.inputs["resourceGroupName"]}
    # Role assignments have no group: each is scoped to its VM, which is in the group.
    assert all("/resourceGroups/" in r.inputs["scope"] for r in result.of_type(ROLE_ASSIGNMENT))


@pytest.mark.parametrize("spot", [False, True], ids=["regular", "spot"])
def test_each_vm_may_deallocate_itself_and_nothing_else(spot: bool) -> None:
    offer = catalog_offer("Standard_NC4as_T4_v3", spot=spot)

    result = preview(make_plan(offer, nodes=2, spot_policy="spot" if spot else "on-demand"))

    vms = {vm.name: vm for vm in result.of_type(VM)}
    assignments = {a.name: a.inputs for a in result.of_type(ROLE_ASSIGNMENT)}
    assert sorted(assignments) == [f"{name}-deallocate" for name in sorted(vms)]
    for name, vm in vms.items():
        assert vm.inputs["identity"] == {"type": "SystemAssigned"}
        assignment = assignments[f"{name}-deallocate"]
        assert assignment["scope"].endswith(f"/{vm.inputs['vmName']}")
        assert assignment["principalType"] == "ServicePrincipal"
        assert assignment["principalId"].startswith("principal-")
        subscription = "/".join(assignment["scope"].split("/")[:3])
        assert assignment["roleDefinitionId"] == (
            f"{subscription}/providers/Microsoft.Authorization/roleDefinitions/{VM_CONTRIBUTOR}"
        )
    assert len({a["principalId"] for a in assignments.values()}) == len(vms)


def test_the_vms_switch_and_backstop_deallocate_through_resource_manager() -> None:
    (vm,) = preview(make_plan("Standard_NC4as_T4_v3", max_duration="1h")).of_type(VM)

    script = base64.b64decode(vm.inputs["osProfile"]["customData"]).decode()

    assert watchdog_script(grace=600, azure=AzureDeallocation()) in script
    assert f"--on-active=4200s {WATCHDOG_PATH} now" in script


def test_nodes_output_in_rank_order() -> None:
    result = preview(make_plan("Standard_ND96asr_v4", nodes=3))

    nodes = result.outputs["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1, 2]
    assert all(n["instance_id"] and n["public_ip"] and n["private_ip"] for n in nodes)


def test_rendering_twice_gives_the_same_program() -> None:
    plan = make_plan("Standard_ND96asr_v4", nodes=2)

    assert preview(plan).to_json() == preview(plan).to_json()
