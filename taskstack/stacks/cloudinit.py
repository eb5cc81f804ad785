"""The first-boot script every cloud node runs: Docker, the NVIDIA toolkit, the dead man's
switch and a power-off backstop.

It is a shell script because every target takes one as is: cloud-init runs a `#!` user
data once (AWS `user_data`, Azure `custom_data`, GCP `user-data` metadata on Ubuntu images)
and TPU VMs run it as their `startup-script` on every boot, so each step is idempotent.
When it is done it writes `READY_FILE`; the runtime waits for that file before it runs
containers. The text depends on the plan only, so rendering twice gives the same script.

The switch and the backstop end in one script (`WATCHDOG_PATH`; `... now` skips the wait).
What a power-off ends depends on the cloud: AWS terminates the instance
(`instance_initiated_shutdown_behavior`). GCP would only stop an instance (its disk bills
on) and would not stop a TPU node at all, so there the script first deletes the node
through the Compute or TPU API (`GcpSelfDeletion`); instances with max_duration are also
deleted by GCP itself (`scheduling.maxRunDuration`), ahead of the node's backstop. Azure
would keep a powered-off VM allocated and billed, so there the script first asks Azure
Resource Manager to deallocate the VM (`AzureDeallocation`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from taskstack.compiler.plan import ClusterPlan

READY_FILE = "/var/lib/taskstack/ready"
HEARTBEAT_FILE = "/var/lib/taskstack/heartbeat"
"""Touched over SSH by `dstack apply` while it runs (`runtime.heartbeat`); same path there."""
WATCHDOG_PATH = "/usr/local/sbin/taskstack-watchdog"
BOOT_ALLOWANCE_SECONDS = 900
"""The first beat comes once the apply reaches the node: first boot (Docker, drivers) and
`up` may take this long before it, on top of the grace."""
WATCHDOG_CHECK_SECONDS = 15
NATIVE_LIMIT_HEAD_START_SECONDS = 300
"""Where the cloud enforces the run limit itself and deletes the VM (GCP instances), the
node's own backstop fires this much later: a node whose own deletion was refused would
power off and only be stopped, and the cloud's timer, which counts running time, would
never delete it."""
TPU_NODE_ATTRIBUTE = "taskstack-tpu-node"
"""TPU VM metadata that `programs/gcp.py` sets to the node's resource name
(`projects/P/locations/Z/nodes/N`); a host's switch reads it to delete the node."""


@dataclass(frozen=True)
class AzureDeallocation:
    """How an Azure node has itself deallocated before it powers off.

    A guest power-off leaves an Azure VM stopped but allocated, billed as if it ran. So the
    script asks Azure Resource Manager to deallocate the VM, as the VM's system-assigned
    identity (`programs/azure.py` gives it Virtual Machine Contributor on the VM itself):
    a token and the VM's resource id from the instance metadata service (IMDS), then
    `POST <id>/deallocate`. It powers off at once if that is refused, or after
    `settle_seconds` if Azure has not stopped the VM by then. POSIX sh and curl, which
    Ubuntu's Azure images ship (the first-boot script installs it if missing); no jq, so the
    token is cut out of IMDS's one-line JSON with sed. Tests point the URLs at a loopback
    server.
    """

    imds_url: str = "http://169.254.169.254"
    arm_url: str = "https://management.azure.com"
    settle_seconds: int = 300


@dataclass(frozen=True)
class GcpSelfDeletion:
    """How a GCP node has itself deleted before it powers off.

    A guest power-off only stops a compute instance (its boot disk bills on) and does not
    stop a TPU node at all (the slice bills on). So the script deletes the node, as the
    run's service account that `programs/gcp.py` puts on the node and allows to delete it:
    an access token from the metadata server, then `DELETE` on the Compute API for an
    instance (project, zone and name from the metadata server) or on the TPU API for a TPU
    VM (the node's resource name from the `TPU_NODE_ATTRIBUTE` metadata). It powers off at
    once if that is refused, or after `settle_seconds` if the node still runs by then.
    POSIX sh, curl and sed, as for Azure. Tests point the URLs at a loopback server.
    """

    tpu: bool = False
    metadata_url: str = "http://metadata.google.internal"
    compute_url: str = "https://compute.googleapis.com"
    tpu_url: str = "https://tpu.googleapis.com"
    settle_seconds: int = 300


def user_data(plan: ClusterPlan) -> str:
    """The script for the plan's nodes (all nodes of a run run the same script)."""
    steps = [_HEADER, _docker(plan.ssh_user)]
    if plan.nvidia:
        steps.append(_NVIDIA_TOOLKIT)
    azure = AzureDeallocation() if plan.cloud == "azure" else None
    gcp = GcpSelfDeletion(tpu=plan.tpu is not None) if plan.cloud == "gcp" else None
    if azure is not None or gcp is not None:
        steps.append(_CURL)
    steps.append(
        _dead_mans_switch(plan.heartbeat_grace, ssh_user=plan.ssh_user, azure=azure, gcp=gcp)
    )
    backstop = _backstop_seconds(plan)
    if backstop is not None:
        steps.append(_backstop(backstop))
    steps.append(_READY)
    return "\n".join(steps)


def run_limit_seconds(plan: ClusterPlan) -> int | None:
    """How long a node may run: max_duration plus the heartbeat grace (None: no limit)."""
    if plan.max_duration is None:
        return None
    return plan.max_duration + plan.heartbeat_grace


_HEADER = """#!/bin/bash
# taskstack first-boot setup; safe to run again.
set -euo pipefail
exec >>/var/log/taskstack-init.log 2>&1
export DEBIAN_FRONTEND=noninteractive
mkdir -p /var/lib/taskstack

apt_install() {
  # cloud-init and unattended-upgrades may hold the dpkg lock for a while after boot.
  for _ in $(seq 60); do
    apt-get update -q && apt-get install -y -q "$@" && return 0
    sleep 5
  done
  return 1
}
"""


def _docker(ssh_user: str) -> str:
    return f"""
if ! command -v docker >/dev/null; then
  apt_install docker.io
fi
systemctl enable --now docker
usermod -aG docker {ssh_user} || true
"""


# NVIDIA's install guide for the container toolkit on apt: their signing key, their
# repository list, then `nvidia-ctk` registers the runtime with Docker. Deep-learning images
# ship it already; the check keeps their version.
_NVIDIA_TOOLKIT = """
if ! command -v nvidia-ctk >/dev/null; then
  apt_install curl gnupg
  repo=https://nvidia.github.io/libnvidia-container
  keyring=/usr/share/keyrings/nvidia-container-toolkit.gpg
  curl -fsSL "$repo/gpgkey" | gpg --batch --yes --dearmor -o "$keyring"
  curl -fsSL "$repo/stable/deb/nvidia-container-toolkit.list" \\
    | sed "s#deb https://#deb [signed-by=$keyring] https://#" \\
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt_install nvidia-container-toolkit
fi
nvidia-ctk runtime configure --runtime=docker
systemctl restart docker
"""


def watchdog_script(
    *,
    grace: int,
    heartbeat: str = HEARTBEAT_FILE,
    poweroff: str = "systemctl poweroff",
    check_seconds: float = WATCHDOG_CHECK_SECONDS,
    azure: AzureDeallocation | None = None,
    gcp: GcpSelfDeletion | None = None,
) -> str:
    """The dead man's switch: a POSIX sh loop that runs `poweroff` once `heartbeat` is older
    than `grace` seconds, then exits; run with the argument `now`, it skips the wait (the
    max_duration backstop runs it so).

    Nodes install it with `poweroff` powering the machine off; AWS is told to end the
    billing on a power-off (`instance_initiated_shutdown_behavior = terminate`), and on the
    clouds that cannot be told so, `azure` has the VM deallocated first and `gcp` has the
    node deleted first. Tests install the same script with a command they can observe.
    """
    if azure is not None and gcp is not None:
        raise ValueError("a node is on Azure or on GCP: pass `azure` or `gcp`, not both")
    release = ""
    if azure is not None:
        release = _azure_deallocation(azure)
    if gcp is not None:
        release = _gcp_self_deletion(gcp)
    return f"""#!/bin/sh
# taskstack dead man's switch: `dstack apply` touches the heartbeat while it runs.
heartbeat={shlex.quote(heartbeat)}
if [ "${{1:-}}" = now ]; then
  echo "taskstack: max_duration is up; powering off" >&2
else
  while :; do
    now=$(date +%s)
    beat=$(stat -c %Y "$heartbeat" 2>/dev/null || echo 0)
    if [ $((now - beat)) -gt {int(grace)} ]; then
      break
    fi
    sleep {check_seconds:g}
  done
  echo "taskstack: no heartbeat for {int(grace)} s; powering off" >&2
fi
{release}{poweroff}
"""


def _azure_deallocation(azure: AzureDeallocation) -> str:
    settings = f"""imds={shlex.quote(azure.imds_url)}
arm={shlex.quote(azure.arm_url)}
settle={int(azure.settle_seconds)}
"""
    return settings + _AZURE_DEALLOCATE


# REST API versions: IMDS's managed-identity token (2018-02-01), IMDS's instance metadata
# (2021-02-01, which has `resourceId` as text) and Microsoft.Compute's VMs (2024-07-01).
_AZURE_DEALLOCATE = r"""resource=https%3A%2F%2Fmanagement.azure.com%2F
imds_get() {
  # IMDS answers on its link-local address only, never through a proxy.
  curl -sS --fail --retry 3 --noproxy '*' --max-time 10 -H 'Metadata: true' "$imds/metadata/$1"
}
deallocate() {
  answer=$(imds_get "identity/oauth2/token?api-version=2018-02-01&resource=$resource") || return 1
  token=$(printf '%s' "$answer" | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
  vm=$(imds_get "instance/compute/resourceId?api-version=2021-02-01&format=text") || return 1
  [ -n "$token" ] && [ -n "$vm" ] || return 1
  curl -sS --fail --retry 3 --max-time 60 -X POST --data '' -o /dev/null \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    "$arm$vm/deallocate?api-version=2024-07-01"
}
if deallocate; then
  echo "taskstack: Azure is deallocating this VM" >&2
  sleep "$settle"
  echo "taskstack: the VM still runs $settle s later" >&2
else
  echo "taskstack: Azure did not deallocate this VM; it stays allocated until destroyed" >&2
fi
"""


def _gcp_self_deletion(gcp: GcpSelfDeletion) -> str:
    if gcp.tpu:
        api, kind, where = gcp.tpu_url, "TPU node", _GCP_TPU_NODE
        left = "the whole slice stays billed until destroyed"
    else:
        api, kind, where = gcp.compute_url, "instance", _GCP_INSTANCE
        left = "it stops, and its boot disk stays billed until destroyed"
    settings = f"""metadata={shlex.quote(gcp.metadata_url)}
api={shlex.quote(api)}
settle={int(gcp.settle_seconds)}
"""
    return settings + _GCP_DELETE.format(where=where, kind=kind, left=left)


# Paths of the metadata server as in Compute Engine's "About VM metadata"; the token comes
# back as one line of JSON.
_GCP_DELETE = r"""metadata_get() {{
  # The metadata server answers on the VM's own link, never through a proxy.
  curl -sS --fail --retry 3 --noproxy '*' --max-time 10 -H 'Metadata-Flavor: Google' \
    "$metadata/computeMetadata/v1/$1"
}}
delete_self() {{
  answer=$(metadata_get instance/service-accounts/default/token) || return 1
  token=$(printf '%s' "$answer" | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
  [ -n "$token" ] || return 1
{where}  curl -sS --fail --retry 3 --max-time 60 -X DELETE -o /dev/null \
    -H "Authorization: Bearer $token" "$api/$node"
}}
if delete_self; then
  echo "taskstack: GCP is deleting this {kind}" >&2
  sleep "$settle"
  echo "taskstack: the {kind} still runs $settle s later" >&2
else
  echo "taskstack: GCP did not delete this {kind}; {left}" >&2
fi
"""

# An instance: the Compute API's path from the instance's own metadata (`instance/zone`
# is `projects/NUMBER/zones/ZONE`).
_GCP_INSTANCE = r"""  project=$(metadata_get project/project-id) || return 1
  zone=$(metadata_get instance/zone) || return 1
  name=$(metadata_get instance/name) || return 1
  [ -n "$project" ] && [ -n "$zone" ] && [ -n "$name" ] || return 1
  node="compute/v1/projects/$project/zones/${zone##*/}/instances/$name"
"""

# A TPU VM host's own metadata names the host VM, not the TPU node, so the program writes
# the node's resource name as metadata. Every host of a slice sends the DELETE: the first
# one wins; the later ones are refused (the node is already going) and power off at once.
_GCP_TPU_NODE = f"""  node=$(metadata_get instance/attributes/{TPU_NODE_ATTRIBUTE}) || return 1
  [ -n "$node" ] || return 1
  node="v2/$node"
"""


def _dead_mans_switch(
    grace: int,
    *,
    ssh_user: str,
    azure: AzureDeallocation | None,
    gcp: GcpSelfDeletion | None,
) -> str:
    # The first beat is dated ahead by the boot allowance; the SSH user owns the file so
    # the apply can touch it without sudo. A transient unit: it starts once per boot.
    script = watchdog_script(grace=grace, azure=azure, gcp=gcp)
    return f"""
cat > {WATCHDOG_PATH} <<'TASKSTACK_WATCHDOG'
{script}TASKSTACK_WATCHDOG
chmod 755 {WATCHDOG_PATH}
if ! systemctl is-active --quiet taskstack-watchdog; then
  touch -d "@$(( $(date +%s) + {BOOT_ALLOWANCE_SECONDS} ))" {HEARTBEAT_FILE}
  chown {ssh_user} {HEARTBEAT_FILE} || true
  systemd-run --unit=taskstack-watchdog {WATCHDOG_PATH}
fi
"""


def _backstop_seconds(plan: ClusterPlan) -> int | None:
    limit = run_limit_seconds(plan)
    if limit is None:
        return None
    if plan.cloud == "gcp" and plan.tpu is None:
        return limit + NATIVE_LIMIT_HEAD_START_SECONDS
    return limit


def _backstop(seconds: int) -> str:
    # max_duration armed on the node: it powers off after max_duration plus the heartbeat
    # grace even while an apply keeps beating (one that hangs must not run forever).
    return f"""
if ! systemctl list-timers --all | grep -q taskstack-backstop; then
  systemd-run --unit=taskstack-backstop --on-active={seconds}s {WATCHDOG_PATH} now
fi
"""


_CURL = """
if ! command -v curl >/dev/null; then
  apt_install curl
fi
"""


_READY = f"""
touch {READY_FILE}
"""
