"""The AWS program (pulumi-aws): network, security group, key pair, placement, instances.

Every resource passes `region=plan.region` (pulumi-aws 7 takes a region per resource), so the
default provider, configured by the engine (credentials, endpoints), serves any region.
EFA types launch from a launch template that declares one EFA interface per network card;
several cards rule out an auto-assigned public address, so those nodes get an Elastic IP on
their primary interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from taskstack.compiler.plan import ClusterPlan
from taskstack.stacks.cloudinit import user_data
from taskstack.stacks.images import aws_image_lookup
from taskstack.stacks.programs import NODES_OUTPUT


@dataclass(frozen=True)
class _Network:
    vpc_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    gateway: aws.ec2.InternetGateway | None


@dataclass(frozen=True)
class _Shared:
    """What every node of the run launches with."""

    network: _Network
    security_group: aws.ec2.SecurityGroup
    key_name: pulumi.Input[str]
    ami: pulumi.Input[str]
    placement: aws.ec2.PlacementGroup | None
    template: aws.ec2.LaunchTemplate | None


def declare(plan: ClusterPlan) -> None:
    """Declare the plan's resources in the running Pulumi program and export `nodes`."""
    shared = _shared(plan)

    nodes = []
    for node in plan.nodes:
        instance = aws.ec2.Instance(node.name, _instance_args(plan, rank=node.rank, shared=shared))
        public_ip = _public_ip(plan, rank=node.rank, instance=instance, network=shared.network)
        nodes.append(
            {
                "rank": node.rank,
                "instance_id": instance.id,
                "public_ip": public_ip,
                "private_ip": instance.private_ip,
            }
        )
    pulumi.export(NODES_OUTPUT, nodes)


def _shared(plan: ClusterPlan) -> _Shared:
    """The run's network, security group, key pair, image, placement and EFA template."""
    network = _network(plan)
    security_group = _security_group(plan, vpc_id=network.vpc_id)
    key_pair = aws.ec2.KeyPair(
        f"{plan.run_name}-key",
        public_key=plan.ssh_public_key,
        region=plan.region,
        tags=plan.tags,
    )
    template = (
        _efa_launch_template(plan, subnet_id=network.subnet_id, security_group=security_group)
        if plan.efa_interfaces
        else None
    )
    return _Shared(
        network=network,
        security_group=security_group,
        key_name=key_pair.key_name,
        ami=_ami(plan),
        placement=_placement_group(plan) if plan.placement_group else None,
        template=template,
    )


def _network(plan: ClusterPlan) -> _Network:
    """The backend's VPC and subnet, or a VPC, subnet, gateway and default route for the run."""
    settings = plan.network
    if settings.subnet_id:
        vpc_id = (
            settings.vpc_id
            or aws.ec2.get_subnet_output(id=settings.subnet_id, region=plan.region).vpc_id
        )
        return _Network(vpc_id=vpc_id, subnet_id=settings.subnet_id, gateway=None)

    vpc = aws.ec2.Vpc(
        f"{plan.run_name}-vpc",
        cidr_block=settings.vpc_cidr,
        enable_dns_hostnames=True,
        enable_dns_support=True,
        region=plan.region,
        tags=plan.tags,
    )
    subnet = aws.ec2.Subnet(
        f"{plan.run_name}-subnet",
        vpc_id=vpc.id,
        cidr_block=settings.subnet_cidr,
        availability_zone=plan.zone,
        map_public_ip_on_launch=settings.public_ips,
        region=plan.region,
        tags=plan.tags,
    )
    gateway = aws.ec2.InternetGateway(
        f"{plan.run_name}-igw", vpc_id=vpc.id, region=plan.region, tags=plan.tags
    )
    aws.ec2.Route(
        f"{plan.run_name}-default-route",
        route_table_id=vpc.main_route_table_id,
        destination_cidr_block="0.0.0.0/0",
        gateway_id=gateway.id,
        region=plan.region,
    )
    return _Network(vpc_id=vpc.id, subnet_id=subnet.id, gateway=gateway)


def _security_group(plan: ClusterPlan, *, vpc_id: pulumi.Input[str]) -> aws.ec2.SecurityGroup:
    """SSH from the configured CIDR; between the run's nodes, everything (NCCL, EFA need it)."""
    ingress = [
        aws.ec2.SecurityGroupIngressArgs(
            description="SSH",
            protocol="tcp",
            from_port=22,
            to_port=22,
            cidr_blocks=[plan.network.ssh_cidr],
        )
    ]
    if plan.node_count > 1:
        ingress.append(
            aws.ec2.SecurityGroupIngressArgs(
                description="all traffic between the run's nodes",
                protocol="-1",
                from_port=0,
                to_port=0,
                self=True,
            )
        )

    # EFA also needs egress to the group itself; "everything anywhere" covers that.
    egress = [
        aws.ec2.SecurityGroupEgressArgs(
            protocol="-1", from_port=0, to_port=0, cidr_blocks=["0.0.0.0/0"]
        )
    ]
    return aws.ec2.SecurityGroup(
        f"{plan.run_name}-sg",
        description=f"taskstack run {plan.run_name}",
        vpc_id=vpc_id,
        ingress=ingress,
        egress=egress,
        region=plan.region,
        tags=plan.tags,
    )


def _placement_group(plan: ClusterPlan) -> aws.ec2.PlacementGroup:
    return aws.ec2.PlacementGroup(
        f"{plan.run_name}-placement", strategy="cluster", region=plan.region, tags=plan.tags
    )


def _efa_launch_template(
    plan: ClusterPlan, *, subnet_id: pulumi.Input[str], security_group: aws.ec2.SecurityGroup
) -> aws.ec2.LaunchTemplate:
    """One EFA interface per network card, created with the instance.

    The primary interface sits on card 0 at device index 0, every further one on its own card
    at device index 1 (EC2 user guide, "Maximize network bandwidth on accelerated instances").
    """
    single = plan.efa_interfaces == 1
    interfaces = [
        aws.ec2.LaunchTemplateNetworkInterfaceArgs(
            network_card_index=card,
            device_index=0 if card == 0 else 1,
            interface_type="efa",
            subnet_id=subnet_id,
            security_groups=[security_group.id],
            delete_on_termination="true",
            # AWS auto-assigns a public address only to an instance with one interface.
            associate_public_ip_address="true" if single and plan.network.public_ips else None,
        )
        for card in range(plan.efa_interfaces)
    ]
    return aws.ec2.LaunchTemplate(
        f"{plan.run_name}-efa",
        network_interfaces=interfaces,
        region=plan.region,
        tags=plan.tags,
    )


def _ami(plan: ClusterPlan) -> pulumi.Input[str]:
    if plan.image:
        return plan.image
    # The same owner and pattern as the Terraform renderer's `data "aws_ami"` block.
    owner, pattern = aws_image_lookup(plan)
    return aws.ec2.get_ami_output(
        most_recent=True,
        owners=[owner],
        filters=[
            aws.ec2.GetAmiFilterArgs(name="name", values=[pattern]),
            aws.ec2.GetAmiFilterArgs(name="architecture", values=[plan.arch]),
        ],
        region=plan.region,
    ).id


def _instance_args(plan: ClusterPlan, *, rank: int, shared: _Shared) -> aws.ec2.InstanceArgs:
    tags = {**plan.node_tags(rank), "Name": plan.nodes[rank].name}
    args = aws.ec2.InstanceArgs(
        ami=shared.ami,
        instance_type=plan.instance_type,
        key_name=shared.key_name,
        user_data=user_data(plan),
        user_data_replace_on_change=True,
        # A node that powers itself off (the backstop in the user data) stops billing.
        instance_initiated_shutdown_behavior="terminate",
        root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
            volume_size=plan.disk_gb,
            volume_type="gp3",
            delete_on_termination=True,
        ),
        # The zone is the created subnet's; an existing subnet decides it by itself.
        availability_zone=plan.zone if shared.network.gateway else None,
        placement_group=shared.placement.name if shared.placement else None,
        instance_market_options=_market_options(plan),
        region=plan.region,
        tags=tags,
        volume_tags=tags,
    )
    if shared.template is not None:
        # The interfaces (and with them subnet and security group) come from the template.
        args.launch_template = aws.ec2.InstanceLaunchTemplateArgs(
            id=shared.template.id, version="$Latest"
        )
    else:
        args.subnet_id = shared.network.subnet_id
        args.vpc_security_group_ids = [shared.security_group.id]
        args.associate_public_ip_address = plan.network.public_ips
    return args


def _market_options(plan: ClusterPlan) -> aws.ec2.InstanceInstanceMarketOptionsArgs | None:
    if not plan.spot:
        return None
    return aws.ec2.InstanceInstanceMarketOptionsArgs(
        market_type="spot",
        spot_options=aws.ec2.InstanceInstanceMarketOptionsSpotOptionsArgs(
            instance_interruption_behavior="terminate",
            spot_instance_type="one-time",
            # None keeps AWS's default cap, the on-demand price.
            max_price=None if plan.max_price is None else f"{plan.max_price:.4f}",
        ),
    )


def _public_ip(
    plan: ClusterPlan, *, rank: int, instance: aws.ec2.Instance, network: _Network
) -> pulumi.Input[str] | None:
    """The node's public address; several network cards need an Elastic IP for one."""
    if not plan.network.public_ips:
        return None
    if plan.efa_interfaces <= 1:
        return instance.public_ip

    eip = aws.ec2.Eip(
        f"{plan.nodes[rank].name}-eip",
        domain="vpc",
        network_interface=instance.primary_network_interface_id,
        region=plan.region,
        tags=plan.node_tags(rank),
        opts=pulumi.ResourceOptions(depends_on=[network.gateway] if network.gateway else []),
    )
    return eip.public_ip
