"""The first-boot script every cloud node runs: Docker, the NVIDIA toolkit, the dead man's
switch and a power-off backstop.

It is a shell script because every target takes one as is: cloud-init runs a `#!` user
data once (AWS `user_data`, Azure `custom_data`, GCP `user-data` metadata on Ubuntu images)
and TPU VMs run it as their `startup-script` on every boot, so each step is idempotent.
When it is done it writes `READY_FILE`; the runtime waits for that file before it runs
containers. The text depends on the plan only, so rendering twice gives the same script.
"""

from __future__ import annotations

import shlex

from taskstack.compiler.plan import ClusterPlan

READY_FILE = "/var/lib/taskstack/ready"
HEARTBEAT_FILE = "/var/lib/taskstack/heartbeat"
"""Touched over SSH by `dstack apply` while it runs (`runtime.heartbeat`); same path there."""
WATCHDOG_PATH = "/usr/local/sbin/taskstack-watchdog"
BOOT_ALLOWANCE_SECONDS = 900
"""The first beat comes once the apply reaches the node: first boot (Docker, drivers) and
`up` may take this long before it, on top of the grace."""
WATCHDOG_CHECK_SECONDS = 15


def user_data(plan: ClusterPlan) -> str:
    """The script for the plan's nodes (all nodes of a run run the same script)."""
    steps = [_HEADER, _docker(plan.ssh_user)]
    if plan.nvidia:
        steps.append(_NVIDIA_TOOLKIT)
    steps.append(_dead_mans_switch(plan.heartbeat_grace, ssh_user=plan.ssh_user))
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


def watchdog_script(
    *,
    grace: int,
    heartbeat: str = HEARTBEAT_FILE,
    poweroff: str = "systemctl poweroff",
    check_seconds: float = WATCHDOG_CHECK_SECONDS,
) -> str:
    """The dead man's switch: a POSIX sh loop that runs `poweroff` once `heartbeat` is older
    than `grace` seconds, then exits.

    Nodes install it with `poweroff` powering the machine off; the clouds are told to end
    the billing on a power-off (AWS `instance_initiated_shutdown_behavior = terminate`).
    Tests install the same script with a command they can observe.
    """
    return f"""#!/bin/sh
# taskstack dead man's switch: `dstack apply` touches the heartbeat while it runs.
heartbeat={shlex.quote(heartbeat)}
while :; do
  now=$(date +%s)
  beat=$(stat -c %Y "$heartbeat" 2>/dev/null || echo 0)
  if [ $((now - beat)) -gt {int(grace)} ]; then
    break
  fi
  sleep {check_seconds:g}
done
echo "taskstack: no heartbeat for {int(grace)} s; powering off" >&2
{poweroff}
"""


def _dead_mans_switch(grace: int, *, ssh_user: str) -> str:
    # The first beat is dated ahead by the boot allowance; the SSH user owns the file so
    # the apply can touch it without sudo. A transient unit: it starts once per boot.
    script = watchdog_script(grace=grace)
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


def _backstop(seconds: int) -> str:
    # max_duration armed on the node: it powers off after max_duration plus the heartbeat
    # grace even while an apply keeps beating (one that hangs must not run forever).
    return f"""
if ! systemctl list-timers --all | grep -q taskstack-backstop; then
  systemd-run --unit=taskstack-backstop --on-active={seconds}s /bin/systemctl poweroff
fi
"""


_READY = f"""
touch {READY_FILE}
"""
