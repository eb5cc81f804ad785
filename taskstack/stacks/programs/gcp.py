"""The GCP program (pulumi-gcp): network, firewall, placement policy, instances or a TPU VM.

GPUs are part of the machine type for A2, A3 and G2 and attached as guest accelerators
to N1. A TPU slice is one `gcp.tpu.V2Vm`; its hosts (the API's network endpoints) are the
run's nodes, ranked in the order the API lists them. Labels cannot hold `:`, so the run and
rank tags become `taskstack-run` and `taskstack-rank` here.

What a node's power-off (the dead man's switch, the max_duration backstop) leaves billed:
- an instance is stopped (TERMINATED): no more compute or GPU charges, and its external
  address is ephemeral, so released; its boot disk bills until `destroy` deletes the
  instance. With max_duration, GCP deletes the instance itself, disk included
  (`maxRunDuration` with `DELETE`), ahead of the node's own backstop; spot instances are
  deleted on preemption too.
- a TPU VM: a host's power-off does not stop or delete the TPU node, and the TPU API has
  no run limit (its scheduling config holds only spot, preemptible and reserved), so the
  slice bills until `destroy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import StackError
from taskstack.stacks.cloudinit import run_limit_seconds, user_data
from taskstack.stacks.programs import NODES_OUTPUT

# Canonical's accelerator images carry the NVIDIA driver; the container toolkit comes from
# the user data.
_GPU_IMAGE = "projects/ubuntu-os-accelerator-images/global/images/family/"
_GPU_FAMILY = {
    "x86_64": "ubuntu-accelerator-2204-amd64-with-nvidia-550",
    "arm64": "ubuntu-accelerator-2204-arm64-with-nvidia-550",
}
_UBUNTU_IMAGE = "projects/ubuntu-os-cloud/global/images/family/"
_UBUNTU_FAMILY = {"x86_64": "ubuntu-2204-lts", "arm64": "ubuntu-2204-lts-arm64"}

# The accelerator type of a GPU attached to an N1 machine, by gpuhunt's GPU name.
_N1_ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
}

# TPU VM software per generation (Cloud TPU docs, "TPU VM images").
_TPU_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

# Newer series boot from Hyperdisk only.
_HYPERDISK_SERIES = frozenset({"a4", "c4", "c4a", "c4d", "n4", "h4d", "x4"})


def declare(plan: ClusterPlan) -> None:
    """Declare the plan's resources in the running Pulumi program and export `nodes`."""
    zone = _zone(plan)
    network, subnetwork = _network(plan)
    _firewalls(plan, network=network)

    nodes: pulumi.Input[list[dict[str, object]]]
    if plan.tpu is not None:
        nodes = _tpu_vm(plan, zone=zone, network=network, subnetwork=subnetwork)
    else:
        policy = _placement_policy(plan) if plan.placement_group else None
        nodes = [
            _instance(plan, rank=node.rank, zone=zone, subnetwork=subnetwork, policy=policy)
            for node in plan.nodes
        ]
    pulumi.export(NODES_OUTPUT, nodes)


def labels(tags: dict[str, str]) -> dict[str, str]:
    """Tags as GCP labels: lowercase letters, digits, `-` and `_` only."""
    return {_label_text(k): _label_text(v) for k, v in tags.items()}


def _label_text(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned[:63]


def _zone(plan: ClusterPlan) -> str:
    if plan.zone is None:
        raise StackError(
            f"offer `{plan.instance_type}` in `{plan.region}` names no zone; GCP instances "
            "need one"
        )
    return plan.zone


def _network_tag(plan: ClusterPlan) -> str:
    return f"taskstack-{plan.run_name}"


def _network(plan: ClusterPlan) -> tuple[pulumi.Input[str], pulumi.Input[str]]:
    """The backend's network and subnet, or a custom-mode network with one subnet for the run."""
    settings = plan.network
    if settings.subnet_id:
        if not settings.vpc_id:
            raise StackError(
                f"`subnet_id: {settings.subnet_id}` needs the `vpc_id` of its GCP network "
                "(the firewall rules attach to the network)"
            )
        return settings.vpc_id, settings.subnet_id

    network = gcp.compute.Network(
        f"{plan.run_name}-net",
        auto_create_subnetworks=False,
        project=plan.project,
    )
    subnetwork = gcp.compute.Subnetwork(
        f"{plan.run_name}-subnet",
        network=network.id,
        ip_cidr_range=settings.subnet_cidr,
        region=plan.region,
        project=plan.project,
    )
    return network.id, subnetwork.id


def _firewalls(plan: ClusterPlan, *, network: pulumi.Input[str]) -> None:
    """SSH from the configured CIDR; between the run's nodes, everything."""
    tag = _network_tag(plan)
    gcp.compute.Firewall(
        f"{plan.run_name}-ssh",
        network=network,
        allows=[gcp.compute.FirewallAllowArgs(protocol="tcp", ports=["22"])],
        source_ranges=[plan.network.ssh_cidr],
        target_tags=[tag],
        project=plan.project,
    )
    if plan.node_count > 1:
        gcp.compute.Firewall(
            f"{plan.run_name}-internal",
            network=network,
            allows=[gcp.compute.FirewallAllowArgs(protocol="all")],
            source_tags=[tag],
            target_tags=[tag],
            project=plan.project,
        )


def _placement_policy(plan: ClusterPlan) -> gcp.compute.ResourcePolicy:
    return gcp.compute.ResourcePolicy(
        f"{plan.run_name}-placement",
        region=plan.region,
        group_placement_policy=gcp.compute.ResourcePolicyGroupPlacementPolicyArgs(
            collocation="COLLOCATED", vm_count=plan.node_count
        ),
        project=plan.project,
    )


def _instance(
    plan: ClusterPlan,
    *,
    rank: int,
    zone: str,
    subnetwork: pulumi.Input[str],
    policy: gcp.compute.ResourcePolicy | None,
) -> dict[str, object]:
    name = plan.nodes[rank].name
    access = [gcp.compute.InstanceNetworkInterfaceAccessConfigArgs()]
    instance = gcp.compute.Instance(
        name,
        name=name,
        zone=zone,
        machine_type=plan.instance_type,
        boot_disk=_boot_disk(plan),
        network_interfaces=[
            gcp.compute.InstanceNetworkInterfaceArgs(
                subnetwork=subnetwork,
                access_configs=access if plan.network.public_ips else None,
            )
        ],
        guest_accelerators=_guest_accelerators(plan),
        scheduling=_scheduling(plan),
        resource_policies=policy.self_link if policy else None,
        metadata={
            "ssh-keys": f"{plan.ssh_user}:{plan.ssh_public_key}",
            "user-data": user_data(plan),
        },
        tags=[_network_tag(plan)],
        labels=labels(plan.node_tags(rank)),
        project=plan.project,
    )
    interface = instance.network_interfaces[0]
    return {
        "rank": rank,
        "instance_id": instance.instance_id,
        "public_ip": interface.access_configs[0].nat_ip if plan.network.public_ips else None,
        "private_ip": interface.network_ip,
    }


def _boot_disk(plan: ClusterPlan) -> gcp.compute.InstanceBootDiskArgs:
    return gcp.compute.InstanceBootDiskArgs(
        auto_delete=True,
        initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
            image=_image(plan), size=plan.disk_gb, type=_disk_type(plan)
        ),
    )


def _image(plan: ClusterPlan) -> str:
    if plan.image:
        return plan.image
    if plan.nvidia:
        return _GPU_IMAGE + _GPU_FAMILY[plan.arch]
    return _UBUNTU_IMAGE + _UBUNTU_FAMILY[plan.arch]


def _disk_type(plan: ClusterPlan) -> str:
    series = plan.instance_type.split("-")[0]
    return "hyperdisk-balanced" if series in _HYPERDISK_SERIES else "pd-balanced"


def _guest_accelerators(
    plan: ClusterPlan,
) -> list[gcp.compute.InstanceGuestAcceleratorArgs] | None:
    """N1 machines get their GPUs attached; the accelerator-optimized series have them built in."""
    if plan.gpu is None or not plan.instance_type.startswith("n1-"):
        return None
    accelerator = _N1_ACCELERATORS.get(plan.gpu.name)
    if accelerator is None:
        raise StackError(f"GPU `{plan.gpu.name}` cannot be attached to `{plan.instance_type}`")
    return [gcp.compute.InstanceGuestAcceleratorArgs(type=accelerator, count=plan.gpu.count)]


# TODO: a node could delete itself through the Compute (or TPU) API with a token of its
# service account from the metadata server, as Azure nodes deallocate themselves
# (stacks/cloudinit.py); that needs a service account per node allowed to delete that node,
# which this program does not declare. Until then a run whose apply died keeps its boot
# disks (instances) or its whole slice (TPU VMs) billed until `dstack destroy`.
def _scheduling(plan: ClusterPlan) -> gcp.compute.InstanceSchedulingArgs:
    """Spot provisioning, GPU maintenance, and deletion when max_duration runs out.

    A GCP VM that powers itself off is only stopped (its disk still bills), so the power-off
    backstop of the user data is doubled by `max_run_duration`, which deletes the VM. The
    timer counts running time only, so the node's backstop fires a little later
    (`cloudinit.NATIVE_LIMIT_HEAD_START_SECONDS`). A preempted spot VM is deleted too,
    rather than left stopped with its disk.
    """
    limit = run_limit_seconds(plan)
    deletes = plan.spot or limit is not None
    return gcp.compute.InstanceSchedulingArgs(
        provisioning_model="SPOT" if plan.spot else "STANDARD",
        preemptible=plan.spot,
        automatic_restart=not plan.spot,
        # GPU VMs cannot live-migrate.
        on_host_maintenance="TERMINATE" if plan.gpu or plan.spot else "MIGRATE",
        instance_termination_action="DELETE" if deletes else None,
        max_run_duration=gcp.compute.InstanceSchedulingMaxRunDurationArgs(seconds=limit)
        if limit is not None
        else None,
    )


def _tpu_vm(
    plan: ClusterPlan,
    *,
    zone: str,
    network: pulumi.Input[str],
    subnetwork: pulumi.Input[str],
) -> pulumi.Output[list[dict[str, object]]]:
    """One TPU VM for the whole slice; its hosts become the nodes, in the API's order.

    Nothing here ends the slice's billing before `destroy` (see the module docstring).
    """
    assert plan.tpu is not None
    vm = gcp.tpu.V2Vm(
        plan.run_name,
        name=plan.run_name,
        zone=zone,
        accelerator_type=plan.tpu.name,
        runtime_version=_TPU_RUNTIME[plan.tpu.generation],
        scheduling_config=gcp.tpu.V2VmSchedulingConfigArgs(spot=True) if plan.spot else None,
        network_config=gcp.tpu.V2VmNetworkConfigArgs(
            network=network,
            subnetwork=subnetwork,
            enable_external_ips=plan.network.public_ips,
        ),
        metadata={
            "ssh-keys": f"{plan.ssh_user}:{plan.ssh_public_key}",
            # TPU VM images do not read `user-data`; they run a startup script on each boot.
            "startup-script": user_data(plan),
        },
        tags=[_network_tag(plan)],
        labels=labels(plan.tags),
        project=plan.project,
    )
    public = plan.network.public_ips
    ranks = [node.rank for node in plan.nodes]
    # `Output.all` would hand back the endpoints as plain dicts; nesting keeps their types.
    return vm.id.apply(
        lambda vm_id: vm.network_endpoints.apply(
            lambda endpoints: _tpu_nodes(vm_id, endpoints or [], ranks=ranks, public=public)
        )
    )


def _tpu_nodes(
    vm_id: str, endpoints: Sequence[Any], *, ranks: list[int], public: bool
) -> list[dict[str, object]]:
    if len(endpoints) < len(ranks):
        raise StackError(f"TPU VM `{vm_id}` reports {len(endpoints)} hosts, the plan {len(ranks)}")
    nodes = []
    for rank in ranks:
        endpoint = endpoints[rank]
        configs = endpoint.access_configs or []
        nodes.append(
            {
                "rank": rank,
                "instance_id": f"{vm_id}/worker-{rank}",
                "public_ip": configs[0].external_ip if public and configs else None,
                "private_ip": endpoint.ip_address,
            }
        )
    return nodes
