"""The Azure program (pulumi-azure-native): resource group, network, NSG, NICs, VMs.

Everything of a run lives in its own resource group, so deleting the group removes any
leftover. A cluster (nodes > 1) shares a proximity placement group and an availability set
aligned to it, which keeps InfiniBand sizes on one fabric.

Azure has no "terminate on power-off": a VM that halts itself stays allocated and keeps
billing. So each VM has a system-assigned identity and, scoped to the VM alone, the built-in
role Virtual Machine Contributor; the dead man's switch and the max_duration backstop use it
to have Azure Resource Manager deallocate the VM before they power it off
(`cloudinit.AzureDeallocation`). A deallocated VM bills no compute; its OS disk and its
Standard public address (billed while it exists) bill until `destroy`. Granting the role
takes `Microsoft.Authorization/roleAssignments/write`, which Contributor lacks: the engine
turns that refusal into one line naming the role to grant (`pulumi_engine`).
"""

from __future__ import annotations

import base64

import pulumi
import pulumi_azure_native as azure

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import StackError
from taskstack.stacks.cloudinit import user_data
from taskstack.stacks.programs import NODES_OUTPUT

# Images as `publisher:offer:sku:version`. The HPC image carries the NVIDIA driver and the
# InfiniBand stack; the container toolkit comes from the user data when missing.
_GPU_IMAGE = "microsoft-dsvm:ubuntu-hpc:2204:latest"
_UBUNTU_IMAGE = {
    "x86_64": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-gen2:latest",
    "arm64": "Canonical:0001-com-ubuntu-server-jammy:22_04-lts-arm64:latest",
}

# Azure's built-in role "Virtual Machine Contributor" (the same id in every tenant): it
# holds Microsoft.Compute/virtualMachines/*, deallocate included.
_VM_CONTRIBUTOR_ROLE = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"

# Sizes without accelerated networking (Azure docs, "Accelerated Networking overview").
_NO_ACCELERATED_NETWORKING = ("Standard_A", "Standard_B1", "Standard_B2", "Basic_")


def declare(plan: ClusterPlan) -> None:
    """Declare the plan's resources in the running Pulumi program and export `nodes`."""
    group = azure.resources.ResourceGroup(
        f"{plan.run_name}-rg", location=plan.region, tags=plan.tags
    )
    security_group = _security_group(plan, group=group)
    subnet_id = _subnet(plan, group=group)
    availability_set = _availability_set(plan, group=group) if plan.placement_group else None

    nodes = []
    for node in plan.nodes:
        public_ip = _public_ip(plan, rank=node.rank, group=group)
        nic = _nic(
            plan,
            rank=node.rank,
            group=group,
            subnet_id=subnet_id,
            security_group=security_group,
            public_ip=public_ip,
        )
        vm = _vm(plan, rank=node.rank, group=group, nic=nic, availability_set=availability_set)
        _self_deallocation(plan, rank=node.rank, vm=vm)
        nodes.append(
            {
                "rank": node.rank,
                "instance_id": vm.vm_id,
                "public_ip": public_ip.ip_address if public_ip else None,
                "private_ip": nic.ip_configurations.apply(
                    lambda configs: configs[0].private_ip_address if configs else None
                ),
            }
        )
    pulumi.export(NODES_OUTPUT, nodes)


def _security_group(
    plan: ClusterPlan, *, group: azure.resources.ResourceGroup
) -> azure.network.NetworkSecurityGroup:
    """SSH from the configured CIDR; between the run's nodes, everything."""
    rules = [
        _inbound_rule("ssh", priority=100, protocol="Tcp", source=plan.network.ssh_cidr, port="22")
    ]
    if plan.node_count > 1:
        subnet = plan.network.subnet_cidr
        rules.append(
            _inbound_rule(
                "intra-run", priority=110, protocol="*", source=subnet, port="*", to=subnet
            )
        )
    return azure.network.NetworkSecurityGroup(
        f"{plan.run_name}-nsg",
        resource_group_name=group.name,
        location=plan.region,
        security_rules=rules,
        tags=plan.tags,
    )


def _inbound_rule(
    name: str, *, priority: int, protocol: str, source: str, port: str, to: str = "*"
) -> azure.network.SecurityRuleArgs:
    return azure.network.SecurityRuleArgs(
        name=name,
        priority=priority,
        direction="Inbound",
        access="Allow",
        protocol=protocol,
        source_address_prefix=source,
        source_port_range="*",
        destination_address_prefix=to,
        destination_port_range=port,
    )


def _subnet(plan: ClusterPlan, *, group: azure.resources.ResourceGroup) -> pulumi.Input[str]:
    """The backend's subnet (a resource id), or a virtual network with one subnet for the run."""
    if plan.network.subnet_id:
        return plan.network.subnet_id

    vnet = azure.network.VirtualNetwork(
        f"{plan.run_name}-vnet",
        resource_group_name=group.name,
        location=plan.region,
        address_space=azure.network.AddressSpaceArgs(address_prefixes=[plan.network.vpc_cidr]),
        tags=plan.tags,
    )
    subnet = azure.network.Subnet(
        f"{plan.run_name}-subnet",
        resource_group_name=group.name,
        virtual_network_name=vnet.name,
        address_prefix=plan.network.subnet_cidr,
    )
    return subnet.id


def _availability_set(
    plan: ClusterPlan, *, group: azure.resources.ResourceGroup
) -> azure.compute.AvailabilitySet:
    placement = azure.compute.ProximityPlacementGroup(
        f"{plan.run_name}-ppg",
        resource_group_name=group.name,
        location=plan.region,
        proximity_placement_group_type="Standard",
        tags=plan.tags,
    )
    return azure.compute.AvailabilitySet(
        f"{plan.run_name}-avset",
        resource_group_name=group.name,
        location=plan.region,
        proximity_placement_group=azure.compute.SubResourceArgs(id=placement.id),
        # "Aligned" is required for VMs with managed disks.
        sku=azure.compute.SkuArgs(name="Aligned"),
        platform_fault_domain_count=1,
        platform_update_domain_count=1,
        tags=plan.tags,
    )


def _public_ip(
    plan: ClusterPlan, *, rank: int, group: azure.resources.ResourceGroup
) -> azure.network.PublicIPAddress | None:
    if not plan.network.public_ips:
        return None
    return azure.network.PublicIPAddress(
        f"{plan.nodes[rank].name}-ip",
        resource_group_name=group.name,
        location=plan.region,
        public_ip_allocation_method="Static",
        sku=azure.network.PublicIPAddressSkuArgs(name="Standard"),
        tags=plan.node_tags(rank),
    )


def _nic(
    plan: ClusterPlan,
    *,
    rank: int,
    group: azure.resources.ResourceGroup,
    subnet_id: pulumi.Input[str],
    security_group: azure.network.NetworkSecurityGroup,
    public_ip: azure.network.PublicIPAddress | None,
) -> azure.network.NetworkInterface:
    return azure.network.NetworkInterface(
        f"{plan.nodes[rank].name}-nic",
        resource_group_name=group.name,
        location=plan.region,
        enable_accelerated_networking=not plan.instance_type.startswith(
            _NO_ACCELERATED_NETWORKING
        ),
        network_security_group=azure.network.NetworkSecurityGroupArgs(id=security_group.id),
        ip_configurations=[
            azure.network.NetworkInterfaceIPConfigurationArgs(
                name="primary",
                primary=True,
                subnet=azure.network.SubnetArgs(id=subnet_id),
                private_ip_allocation_method="Dynamic",
                public_ip_address=azure.network.PublicIPAddressArgs(id=public_ip.id)
                if public_ip
                else None,
            )
        ],
        tags=plan.node_tags(rank),
    )


def _vm(
    plan: ClusterPlan,
    *,
    rank: int,
    group: azure.resources.ResourceGroup,
    nic: azure.network.NetworkInterface,
    availability_set: azure.compute.AvailabilitySet | None,
) -> azure.compute.VirtualMachine:
    name = plan.nodes[rank].name
    return azure.compute.VirtualMachine(
        name,
        vm_name=name,
        resource_group_name=group.name,
        location=plan.region,
        hardware_profile=azure.compute.HardwareProfileArgs(vm_size=plan.instance_type),
        storage_profile=_storage_profile(plan),
        os_profile=_os_profile(plan, computer_name=name),
        network_profile=azure.compute.NetworkProfileArgs(
            network_interfaces=[
                azure.compute.NetworkInterfaceReferenceArgs(
                    id=nic.id, primary=True, delete_option="Delete"
                )
            ]
        ),
        availability_set=azure.compute.SubResourceArgs(id=availability_set.id)
        if availability_set
        else None,
        # The identity the node's switch deallocates the VM with (`_self_deallocation`).
        identity=azure.compute.VirtualMachineIdentityArgs(
            type=azure.compute.ResourceIdentityType.SYSTEM_ASSIGNED
        ),
        priority="Spot" if plan.spot else "Regular",
        eviction_policy="Delete" if plan.spot else None,
        # -1: pay up to the on-demand price, never evicted for price alone.
        billing_profile=azure.compute.BillingProfileArgs(
            max_price=plan.max_price if plan.max_price is not None else -1
        )
        if plan.spot
        else None,
        tags=plan.node_tags(rank),
    )


def _self_deallocation(
    plan: ClusterPlan, *, rank: int, vm: azure.compute.VirtualMachine
) -> azure.authorization.RoleAssignment:
    """Virtual Machine Contributor for the VM's own identity, on that VM only."""
    return azure.authorization.RoleAssignment(
        f"{plan.nodes[rank].name}-deallocate",
        scope=vm.id,
        principal_id=vm.identity.apply(
            lambda identity: identity.principal_id if identity else None
        ),
        # A fresh identity may not have replicated yet; the type spares the lookup that
        # would fail (Azure RBAC docs, "Assign Azure roles using the REST API").
        principal_type=azure.authorization.PrincipalType.SERVICE_PRINCIPAL,
        role_definition_id=vm.id.apply(_vm_contributor_role),
        description=f"taskstack run {plan.run_name}: the node deallocates itself",
    )


def _vm_contributor_role(vm_id: str) -> str:
    """The role's id in the VM's subscription (`/subscriptions/<id>` heads the VM's id)."""
    subscription = "/".join(vm_id.split("/")[:3])
    return (
        f"{subscription}/providers/Microsoft.Authorization/roleDefinitions/{_VM_CONTRIBUTOR_ROLE}"
    )


def _storage_profile(plan: ClusterPlan) -> azure.compute.StorageProfileArgs:
    return azure.compute.StorageProfileArgs(
        image_reference=_image_reference(plan),
        os_disk=azure.compute.OSDiskArgs(
            create_option="FromImage",
            disk_size_gb=plan.disk_gb,
            delete_option="Delete",
            managed_disk=azure.compute.ManagedDiskParametersArgs(
                storage_account_type="Premium_LRS"
            ),
        ),
    )


def _os_profile(plan: ClusterPlan, *, computer_name: str) -> azure.compute.OSProfileArgs:
    """Key-only SSH for the plan's user; the first-boot script as cloud-init custom data."""
    key = azure.compute.SshPublicKeyArgs(
        path=f"/home/{plan.ssh_user}/.ssh/authorized_keys", key_data=plan.ssh_public_key
    )
    return azure.compute.OSProfileArgs(
        computer_name=computer_name,
        admin_username=plan.ssh_user,
        custom_data=base64.b64encode(user_data(plan).encode()).decode(),
        linux_configuration=azure.compute.LinuxConfigurationArgs(
            disable_password_authentication=True,
            ssh=azure.compute.SshConfigurationArgs(public_keys=[key]),
        ),
    )


def _image_reference(plan: ClusterPlan) -> azure.compute.ImageReferenceArgs:
    urn = plan.image or (_GPU_IMAGE if plan.nvidia else _UBUNTU_IMAGE[plan.arch])
    parts = urn.split(":")
    if len(parts) != 4:
        raise StackError(f"Azure image `{urn}` is not `publisher:offer:sku:version`")
    publisher, offer, sku, version = parts
    return azure.compute.ImageReferenceArgs(
        publisher=publisher, offer=offer, sku=sku, version=version
    )
