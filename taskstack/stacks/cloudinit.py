"""The first-boot script every cloud node runs: Docker, the NVIDIA toolkit, a power-off backstop.

It is a shell script because every target takes one as is: cloud-init runs a `#!` user
data once (AWS `user_data`, Azure `custom_data`, GCP `user-data` metadata on Ubuntu images)
and TPU VMs run it as their `startup-script` on every boot, so each step is idempotent.
When it is done it writes `READY_FILE`; the runtime waits for that file before it runs
containers. The text depends on the plan only, so rendering twice gives the same script.
"""

from __future__ import annotations

from taskstack.compiler.plan import ClusterPlan

READY_FILE = "/var/lib/taskstack/ready"


def user_data(plan: ClusterPlan) -> str:
    """The script for the plan's nodes (all nodes of a run run the same script)."""
    steps = [_HEADER, _docker(plan.ssh_user)]
    if plan.nvidia:
        steps.append(_NVIDIA_TOOLKIT)
    if plan.max_duration is not None:
        steps.append(_backstop(plan.max_duration + plan.heartbeat_grace))
    steps.append(_READY)
    return "\n".join(steps)


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


def _backstop(seconds: int) -> str:
    # A last resort if taskstack itself is gone: the node powers off after max_duration
    # plus the heartbeat grace. The clouds are told to end billing on power-off (AWS
    # terminates, GCP deletes); a later heartbeat check shortens this.
    return f"""
if ! systemctl list-timers --all | grep -q taskstack-backstop; then
  systemd-run --unit=taskstack-backstop --on-active={seconds}s /bin/systemctl poweroff
fi
"""


_READY = f"""
touch {READY_FILE}
"""
