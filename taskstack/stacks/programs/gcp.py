"""The GCP program (pulumi-gcp): network, firewall, placement policy, instances or a TPU VM.

GPUs are part of the machine type for A2, A3 and G2 and attached as guest accelerators
to N1. A TPU slice is one `gcp.tpu.V2Vm`; its hosts (the API's network endpoints) are the
run's nodes, ranked in the order the API lists them. Labels cannot hold `:`, so the run and
rank tags become `taskstack-run` and `taskstack-rank` here.

What a node's dead man's switch or max_duration backstop leaves billed. The node first
deletes itself (`cloudinit.GcpSelfDeletion`), as the run's service account, then powers off:
- an instance: deleted, and its auto-delete boot disk and ephemeral address with it, so
  nothing stays billed. Should the deletion be refused, the power-off only stops it
  (TERMINATED: no compute or GPU charges) and its boot disk bills until `destroy`; with
  max_duration GCP deletes the instance itself (`maxRunDuration` with `DELETE`), ahead of
  the node's own backstop. Spot instances are deleted on preemption too.
- a TPU VM: the TPU node is deleted, and the whole slice with it, so nothing stays billed.
  Should the deletion be refused, the slice bills until `destroy`: a host's power-off does
  not stop the node, and the TPU API has no run limit (its scheduling config holds only
  spot, preemptible and reserved).
What a run keeps until `destroy` besides (network, subnet, firewall rules, placement
policy, service account, IAM grants) is not billed.

The grants, as narrow as we found GCP lets us express them:
- an instance: `roles/compute.instanceAdmin.v1`, the narrowest predefined role we know
  of with `compute.instances.delete`, on that instance alone (an instance-level IAM
  binding) and on its boot disk alone, which the deletion removes with it.
- a TPU VM: `roles/tpu.editor` on the whole project, the narrowest predefined TPU role
  with `tpu.nodes.delete` (IAM docs, "Cloud TPU roles and permissions"). TPU nodes have no IAM
  policy of their own, and the TPU API is not among the services that recognize IAM
  conditions on the resource name (IAM docs, "Resource attributes for IAM Conditions").
  So the nodes of a TPU run may create and delete any TPU node of the project,
  and so may any code on them that asks the metadata server for a token. What would
  narrow it: a custom role with `tpu.nodes.delete` alone, made once outside the runs
  (a deleted custom role's id stays taken for weeks, so one per run cannot be).

Applying this takes more than creating VMs: creating service accounts, acting as them
(`iam.serviceAccounts.actAs`), and setting IAM policies on instances and disks and, for TPU
VMs, on the project (`resourcemanager.projects.setIamPolicy`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pulumi
import pulumi_gcp as gcp

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import StackError
from taskstack.stacks.cloudinit import TPU_NODE_ATTRIBUTE, run_limit_seconds, user_data
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

# What the nodes' service account may do (see the module docstring for the breadth). The
# token's scope lets IAM alone decide, as Compute Engine's docs advise for service accounts.
_INSTANCE_ROLE = "roles/compute.instanceAdmin.v1"
_TPU_ROLE = "roles/tpu.editor"
_SCOPES = ["cloud-platform"]

# Service account ids: 6-30 characters, a lowercase letter first, no dash last.
_ACCOUNT_PREFIX = "taskstack-"
_ACCOUNT_ID_MAX = 30


def declare(plan: ClusterPlan) -> None:
    """Declare the plan's resources in the running Pulumi program and export `nodes`."""
    zone = _zone(plan)
    network, subnetwork = _network(plan)
    _firewalls(plan, network=network)
    account = _service_account(plan)

    nodes: pulumi.Input[list[dict[str, object]]]
    if plan.tpu is not None:
        nodes = _tpu_vm(plan, zone=zone, network=network, subnetwork=subnetwork, account=account)
    else:
        policy = _placement_policy(plan) if plan.placement_group else None
        nodes = [
            _instance(
                plan,
                rank=node.rank,
                zone=zone,
                subnetwork=subnetwork,
                policy=policy,
                account=account,
            )
            for node in plan.nodes
        ]
    pulumi.export(NODES_OUTPUT, nodes)


def labels(tags: dict[str, str]) -> dict[str, str]:
    """Tags as GCP labels: lowercase letters, digits, `-` and `_` only."""
    return {_label_text(k): _label_text(v) for k, v in tags.items()}


def service_account_id(run_name: str) -> str:
    """The run's service account id: `taskstack-RUN`, or, where that does not fit GCP's
    rules, the run name cut short and a hash of it (`taskstack-long-run-na-1a2b3c4d`)."""
    whole = _ACCOUNT_PREFIX + run_name
    if whole[-1].isalnum() and len(whole) <= _ACCOUNT_ID_MAX:
        return whole
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
    room = _ACCOUNT_ID_MAX - len(_ACCOUNT_PREFIX) - len(digest) - 1
    return f"{_ACCOUNT_PREFIX}{run_name[:room].rstrip('-')}-{digest}"


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


def _service_account(plan: ClusterPlan) -> gcp.serviceaccount.Account:
    """The identity the run's nodes delete themselves with; it holds no role of its own."""
    return gcp.serviceaccount.Account(
        f"{plan.run_name}-sa",
        account_id=service_account_id(plan.run_name),
        display_name=f"taskstack run {plan.run_name}",
        description="The run's nodes delete themselves with it once their apply is gone",
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
    account: gcp.serviceaccount.Account,
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
        service_account=gcp.compute.InstanceServiceAccountArgs(
            email=account.email, scopes=_SCOPES
        ),
        metadata={
            "ssh-keys": f"{plan.ssh_user}:{plan.ssh_public_key}",
            "user-data": user_data(plan),
        },
        tags=[_network_tag(plan)],
        labels=labels(plan.node_tags(rank)),
        project=plan.project,
    )
    _instance_self_deletion(plan, name=name, zone=zone, instance=instance, account=account)
    interface = instance.network_interfaces[0]
    return {
        "rank": rank,
        "instance_id": instance.instance_id,
        "public_ip": interface.access_configs[0].nat_ip if plan.network.public_ips else None,
        "private_ip": interface.network_ip,
    }


def _instance_self_deletion(
    plan: ClusterPlan,
    *,
    name: str,
    zone: str,
    instance: gcp.compute.Instance,
    account: gcp.serviceaccount.Account,
) -> None:
    """The run's service account may delete this instance, and its boot disk, and no other.

    Deleting the instance deletes its auto-delete boot disk too; the grant on the disk keeps
    that from resting on the instance-level grant alone. A boot disk made from
    `initialize_params` is named after its instance (Compute Engine's default).
    """
    gcp.compute.InstanceIAMMember(
        f"{name}-delete-self",
        instance_name=instance.name,
        zone=zone,
        role=_INSTANCE_ROLE,
        member=account.member,
        project=plan.project,
    )
    gcp.compute.DiskIamMember(
        f"{name}-disk-delete-self",
        name=instance.name,
        zone=zone,
        role=_INSTANCE_ROLE,
        member=account.member,
        project=plan.project,
    )


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


def _scheduling(plan: ClusterPlan) -> gcp.compute.InstanceSchedulingArgs:
    """Spot provisioning, GPU maintenance, and deletion when max_duration runs out.

    The node's backstop deletes the VM through the Compute API; should that be refused, the
    VM would only power off and stop (its disk still bills). So the backstop is doubled by
    `max_run_duration`, which deletes the VM. The timer counts running time only, so the
    node's backstop fires a little later (`cloudinit.NATIVE_LIMIT_HEAD_START_SECONDS`). A
    preempted spot VM is deleted too, rather than left stopped with its disk.
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
    account: gcp.serviceaccount.Account,
) -> pulumi.Output[list[dict[str, object]]]:
    """One TPU VM for the whole slice; its hosts become the nodes, in the API's order.

    Its hosts run as the run's service account, which may delete TPU nodes
    (`_tpu_self_deletion`), and find their node's name in the `TPU_NODE_ATTRIBUTE` metadata.
    """
    assert plan.tpu is not None
    # The account's project is the provider's when the plan names none.
    node_name = account.project.apply(
        lambda project: f"projects/{project}/locations/{zone}/nodes/{plan.run_name}"
    )
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
            TPU_NODE_ATTRIBUTE: node_name,
        },
        service_account=gcp.tpu.V2VmServiceAccountArgs(email=account.email, scopes=_SCOPES),
        tags=[_network_tag(plan)],
        labels=labels(plan.tags),
        project=plan.project,
    )
    _tpu_self_deletion(plan, account=account)
    public = plan.network.public_ips
    ranks = [node.rank for node in plan.nodes]
    # `Output.all` would hand back the endpoints as plain dicts; nesting keeps their types.
    return vm.id.apply(
        lambda vm_id: vm.network_endpoints.apply(
            lambda endpoints: _tpu_nodes(vm_id, endpoints or [], ranks=ranks, public=public)
        )
    )


def _tpu_self_deletion(
    plan: ClusterPlan, *, account: gcp.serviceaccount.Account
) -> gcp.projects.IAMMember:
    """The run's service account may delete TPU nodes: all of the project's, as no narrower
    grant exists (the module docstring says why and what it opens)."""
    return gcp.projects.IAMMember(
        f"{plan.run_name}-delete-self",
        project=account.project,
        role=_TPU_ROLE,
        member=account.member,
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
