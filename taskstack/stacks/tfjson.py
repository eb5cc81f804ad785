"""A `ClusterPlan` rendered as Terraform JSON configuration (`main.tf.json`).

The document declares the same resources as the Pulumi program of the plan's cloud: network
(or the existing one the settings name), a security group, the run's key pair, the image
lookup, a placement group, EFA interfaces, spot options, and one instance per node tagged with
the run name and its rank. Its `nodes` output lists `{rank, instance_id, public_ip,
private_ip}` in rank order. Credentials never enter the document: the engine hands them to
Terraform through the environment.

Only AWS renders today; `render` dispatches on `plan.cloud`, so a GCP or Azure renderer is
one more function beside `_aws_document` with the same inputs.
"""

from __future__ import annotations

from typing import Any

from taskstack.compiler.plan import RUN_TAG, ClusterPlan
from taskstack.errors import ConfigError
from taskstack.settings import AwsSettings
from taskstack.stacks.images import aws_image_lookup

# Providers taskstack renders for, with the version range it was tested with.
PROVIDERS = {"aws": {"source": "hashicorp/aws", "version": ">= 5.60, < 6.0"}}


def render(
    plan: ClusterPlan,
    *,
    user_data: str | None = None,
    aws: AwsSettings | None = None,
    backend: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Terraform JSON document for `plan`.

    Args:
        plan: the frozen plan of the run.
        user_data: cloud-init for every node (None: the image boots as it is).
        aws: backend settings that shape the provider block (profile, endpoint override).
        backend: a `{"<type>": {...}}` backend block for the `terraform` block, if any.
    """
    if plan.cloud != "aws":
        raise ConfigError(
            f"the Terraform engine renders AWS plans only; run {plan.run_name} is on "
            f"{plan.cloud}: use `--engine pulumi`"
        )
    document = _aws_document(plan, user_data=user_data, aws=aws or AwsSettings())
    if backend:
        document["terraform"]["backend"] = backend
    return document


# --- AWS ---------------------------------------------------------------------------------


def _aws_document(plan: ClusterPlan, *, user_data: str | None, aws: AwsSettings) -> dict:
    resources: dict[str, dict[str, Any]] = {}
    data: dict[str, dict[str, Any]] = {}

    vpc_id, subnet_id = _aws_network(plan, resources=resources, data=data)
    _aws_security_group(plan, vpc_id=vpc_id, resources=resources)
    _aws_key_pair(plan, resources=resources)
    image = plan.image or _aws_image_lookup(plan, data=data)
    if plan.placement_group:
        _add(resources, "aws_placement_group", "cluster", _placement_group(plan))
    if plan.efa_interfaces:
        _aws_efa_launch_template(plan, subnet_id=subnet_id, resources=resources)

    outputs = []
    for node in plan.nodes:
        instance = _aws_instance(plan, rank=node.rank, image=image, subnet_id=subnet_id)
        instance["user_data"] = user_data
        instance["user_data_replace_on_change"] = True
        _add(resources, "aws_instance", f"node_{node.rank}", instance)
        outputs.append(_aws_node_output(plan, rank=node.rank, resources=resources))

    document: dict[str, Any] = {
        "terraform": {"required_providers": {"aws": PROVIDERS["aws"]}},
        "provider": {"aws": _aws_provider(plan, aws)},
        "resource": resources,
        "output": {"nodes": {"value": outputs}},
    }
    if data:
        document["data"] = data
    return document


def _aws_provider(plan: ClusterPlan, aws: AwsSettings) -> dict[str, Any]:
    provider: dict[str, Any] = {"region": plan.region}
    if aws.profile:
        provider["profile"] = aws.profile
    if aws.endpoint_url:
        # An emulator answers every API at one URL and has no account or instance metadata.
        # Few retries: the provider would retry an API the emulator lacks for 10+ minutes
        # (TESTBED.md), but one is too few: moto's server drops kept-alive connections now
        # and then ("use of closed network connection", seen on the testbed).
        services = ("ec2", "sts", "iam", "s3")
        provider.update(
            {
                "skip_credentials_validation": True,
                "skip_requesting_account_id": True,
                "skip_region_validation": True,
                "skip_metadata_api_check": "true",  # a string in provider v5
                "s3_use_path_style": True,
                "max_retries": 3,
                "endpoints": [{service: aws.endpoint_url for service in services}],
            }
        )
    return provider


def _aws_network(plan: ClusterPlan, *, resources: dict, data: dict) -> tuple[str, str]:
    """The VPC and subnet ids as expressions: the existing ones, or new ones for the run."""
    network = plan.network
    if network.subnet_id:
        vpc_id = network.vpc_id
        if vpc_id is None:
            _add(data, "aws_subnet", "given", {"id": network.subnet_id})
            vpc_id = "${data.aws_subnet.given.vpc_id}"
        return vpc_id, network.subnet_id

    vpc_id = _aws_new_vpc(plan, resources=resources)
    # No `map_public_ip_on_launch`: the instances ask for their public IPs themselves, and
    # the subnet attribute costs a fixed ~10 s wait (measured against moto, TESTBED.md).
    subnet = {
        "vpc_id": vpc_id,
        "cidr_block": network.subnet_cidr,
        "availability_zone": plan.zone,
        "tags": _tags(plan, name=f"{plan.run_name}-subnet"),
    }
    _add(resources, "aws_subnet", "net", subnet)
    return vpc_id, "${aws_subnet.net.id}"


def _aws_new_vpc(plan: ClusterPlan, *, resources: dict) -> str:
    """A VPC with an internet gateway and a default route through it, in its main table."""
    tags = _tags(plan, name=plan.run_name)
    _add(resources, "aws_vpc", "net", {"cidr_block": plan.network.vpc_cidr, "tags": tags})
    _add(resources, "aws_internet_gateway", "net", {"vpc_id": "${aws_vpc.net.id}", "tags": tags})
    route = {
        "route_table_id": "${aws_vpc.net.main_route_table_id}",
        "destination_cidr_block": "0.0.0.0/0",
        "gateway_id": "${aws_internet_gateway.net.id}",
    }
    _add(resources, "aws_route", "internet", route)
    return "${aws_vpc.net.id}"


def _aws_security_group(plan: ClusterPlan, *, vpc_id: str, resources: dict) -> None:
    """SSH from `ssh_cidr`; every protocol between the run's nodes when there are several."""
    ingress = [_rule(description="SSH", protocol="tcp", port=22, cidr=plan.network.ssh_cidr)]
    if plan.node_count > 1:
        # NCCL and EFA need all traffic between the nodes (EFA: to and from the group itself).
        ingress.append(_rule(description="between the nodes of the run", protocol="-1", self=True))
    egress = [
        _rule(description="anywhere", protocol="-1", cidr="0.0.0.0/0"),
    ]
    group = {
        "name": f"taskstack-{plan.run_name}",
        "description": f"taskstack run {plan.run_name}",
        "vpc_id": vpc_id,
        "ingress": ingress,
        "egress": egress,
        "tags": _tags(plan, name=plan.run_name),
    }
    _add(resources, "aws_security_group", "nodes", group)


def _rule(
    *, description: str, protocol: str, port: int = 0, cidr: str | None = None, self: bool = False
) -> dict[str, Any]:
    # JSON syntax gives inline rules no defaults: every attribute must be present (TESTBED.md).
    return {
        "description": description,
        "protocol": protocol,
        "from_port": port,
        "to_port": port,
        "cidr_blocks": [cidr] if cidr else None,
        "ipv6_cidr_blocks": None,
        "prefix_list_ids": None,
        "security_groups": None,
        "self": True if self else None,
    }


def _aws_key_pair(plan: ClusterPlan, *, resources: dict) -> None:
    key = {
        "key_name": f"taskstack-{plan.run_name}",
        "public_key": plan.ssh_public_key,
        "tags": _tags(plan, name=plan.run_name),
    }
    _add(resources, "aws_key_pair", "run", key)


def _aws_image_lookup(plan: ClusterPlan, *, data: dict) -> str:
    owner, pattern = aws_image_lookup(plan)
    lookup = {
        "most_recent": True,
        "owners": [owner],
        "filter": [
            {"name": "name", "values": [pattern]},
            {"name": "architecture", "values": [plan.arch]},
        ],
    }
    _add(data, "aws_ami", "image", lookup)
    return "${data.aws_ami.image.id}"


def _placement_group(plan: ClusterPlan) -> dict[str, Any]:
    return {
        "name": f"taskstack-{plan.run_name}",
        "strategy": "cluster",
        "tags": _tags(plan, name=plan.run_name),
    }


def _aws_efa_launch_template(plan: ClusterPlan, *, subnet_id: str, resources: dict) -> None:
    """Every EFA interface of the type at launch, one per network card.

    AWS wants the first on card 0 as device 0 and each further one as device 1 of its own card
    (EC2 User Guide, "Maximize network bandwidth"). A type's EFA count equals its network
    cards for every multi-card EFA type (p4d 4, p5 32). Interfaces are made at launch through a
    launch template, so they are deleted with the instance.
    """
    single = plan.efa_interfaces == 1
    interfaces = [
        {
            "network_card_index": card,
            "device_index": 0 if card == 0 else 1,
            "interface_type": "efa",
            "subnet_id": subnet_id,
            "security_groups": ["${aws_security_group.nodes.id}"],
            "delete_on_termination": "true",
            # AWS auto-assigns a public address only to an instance with one interface.
            "associate_public_ip_address": "true" if single and plan.network.public_ips else None,
        }
        for card in range(plan.efa_interfaces)
    ]
    template = {
        "name": f"taskstack-{plan.run_name}",
        "network_interfaces": interfaces,
        "tags": _tags(plan, name=plan.run_name),
    }
    _add(resources, "aws_launch_template", "efa", template)


def _aws_instance(plan: ClusterPlan, *, rank: int, image: str, subnet_id: str) -> dict:
    tags = {**plan.node_tags(rank), RUN_TAG: plan.run_name, "Name": plan.nodes[rank].name}
    instance: dict[str, Any] = {
        "ami": image,
        "instance_type": plan.instance_type,
        "availability_zone": plan.zone,
        "key_name": "${aws_key_pair.run.key_name}",
        # A node that powers itself off (max_duration, lost heartbeat) is deleted, not kept.
        "instance_initiated_shutdown_behavior": "terminate",
        "root_block_device": [
            {"volume_size": plan.disk_gb, "volume_type": "gp3", "delete_on_termination": True}
        ],
        "tags": tags,
        "volume_tags": tags,
    }
    if plan.efa_interfaces:
        # The launch template carries the interfaces; subnet and group live on them.
        template = {"id": "${aws_launch_template.efa.id}", "version": "$Latest"}
        instance["launch_template"] = [template]
    else:
        instance["subnet_id"] = subnet_id
        instance["vpc_security_group_ids"] = ["${aws_security_group.nodes.id}"]
        instance["associate_public_ip_address"] = plan.network.public_ips
    if plan.placement_group:
        instance["placement_group"] = "${aws_placement_group.cluster.id}"
    if plan.spot:
        instance["instance_market_options"] = [_spot_options(plan)]
    return instance


def _spot_options(plan: ClusterPlan) -> dict[str, Any]:
    spot = {
        "spot_instance_type": "one-time",
        "instance_interruption_behavior": "terminate",
        "max_price": None if plan.max_price is None else f"{plan.max_price:.4f}",
    }
    return {"market_type": "spot", "spot_options": [spot]}


def _aws_node_output(plan: ClusterPlan, *, rank: int, resources: dict) -> dict[str, Any]:
    instance = f"aws_instance.node_{rank}"
    public_ip: str | None = f"${{{instance}.public_ip}}"
    if not plan.network.public_ips:
        public_ip = None
    elif plan.efa_interfaces > 1:
        # With several network cards AWS assigns no public IP at launch: an Elastic IP does.
        eip = {
            "domain": "vpc",
            "network_interface": f"${{{instance}.primary_network_interface_id}}",
            "tags": plan.node_tags(rank),
        }
        if "aws_internet_gateway" in resources:
            eip["depends_on"] = ["aws_internet_gateway.net"]
        _add(resources, "aws_eip", f"node_{rank}", eip)
        public_ip = f"${{aws_eip.node_{rank}.public_ip}}"
    return {
        "rank": rank,
        "instance_id": f"${{{instance}.id}}",
        "public_ip": public_ip,
        "private_ip": f"${{{instance}.private_ip}}",
    }


# --- helpers -------------------------------------------------------------------------------


def _tags(plan: ClusterPlan, *, name: str | None = None) -> dict[str, str]:
    tags = {**plan.tags, RUN_TAG: plan.run_name}
    if name:
        tags["Name"] = name
    return tags


def _add(section: dict, kind: str, name: str, body: dict[str, Any]) -> None:
    section.setdefault(kind, {})[name] = body
