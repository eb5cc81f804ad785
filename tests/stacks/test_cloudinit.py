"""The first-boot script: valid shell, Docker always, the NVIDIA toolkit on NVIDIA nodes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from taskstack.stacks.cloudinit import (
    BOOT_ALLOWANCE_SECONDS,
    HEARTBEAT_FILE,
    READY_FILE,
    WATCHDOG_PATH,
    user_data,
    watchdog_script,
)
from tests.stacks.plans import catalog_offer, cpu_offer, make_plan


@pytest.mark.parametrize(
    "plan",
    [
        make_plan("g5.xlarge", max_duration="1h"),
        make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1")),
        make_plan(catalog_offer("v5litepod-8")),
    ],
    ids=["gpu", "cpu", "tpu"],
)
def test_script_is_valid_bash(plan) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")

    check = subprocess.run(["bash", "-n"], input=user_data(plan), text=True, capture_output=True)

    assert check.returncode == 0, check.stderr


def test_gpu_node_gets_docker_and_the_nvidia_toolkit_then_reports_ready() -> None:
    script = user_data(make_plan("g5.xlarge"))

    assert script.startswith("#!/bin/bash\n")
    assert "apt_install docker.io" in script
    assert "apt_install nvidia-container-toolkit" in script
    assert "nvidia-ctk runtime configure --runtime=docker" in script
    assert "usermod -aG docker ubuntu" in script
    assert script.rstrip().endswith(f"touch {READY_FILE}")


def test_cpu_and_tpu_nodes_skip_the_nvidia_toolkit() -> None:
    cpu = user_data(make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1")))
    tpu = user_data(make_plan(catalog_offer("v5litepod-8")))

    assert "nvidia" not in cpu
    assert "nvidia" not in tpu
    assert "docker.io" in cpu and "docker.io" in tpu


def test_power_off_backstop_only_with_max_duration() -> None:
    armed = user_data(make_plan("g5.xlarge", max_duration="2h"))
    unarmed = user_data(make_plan("g5.xlarge"))

    assert "--on-active=7800s /bin/systemctl poweroff" in armed
    assert "taskstack-backstop" not in unarmed


def test_every_node_installs_the_dead_mans_switch() -> None:
    script = user_data(make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1")))

    assert f"cat > {WATCHDOG_PATH} <<'TASKSTACK_WATCHDOG'" in script
    assert watchdog_script(grace=600) in script
    assert f"chown ubuntu {HEARTBEAT_FILE}" in script
    assert f"systemd-run --unit=taskstack-watchdog {WATCHDOG_PATH}" in script
    # The first beat is dated ahead: first boot must not count against the grace.
    assert f'touch -d "@$(( $(date +%s) + {BOOT_ALLOWANCE_SECONDS} ))" {HEARTBEAT_FILE}' in script


def test_the_switch_fires_once_the_heartbeat_is_older_than_the_grace(tmp_path) -> None:
    import time

    heartbeat, fired = tmp_path / "heartbeat", tmp_path / "powered-off"
    heartbeat.touch()
    script = watchdog_script(
        grace=2, heartbeat=str(heartbeat), poweroff=f"touch {fired}", check_seconds=0.2
    )
    started = time.monotonic()

    watchdog = subprocess.Popen(["sh", "-c", script])
    try:
        while time.monotonic() - started < 2.5:  # beats keep it quiet
            heartbeat.touch()
            time.sleep(0.2)
        quiet = not fired.exists()
        watchdog.wait(timeout=10)
    finally:
        watchdog.kill()
        watchdog.wait()
    silent_for = time.monotonic() - started - 2.5

    assert quiet
    assert fired.exists()
    assert 2 <= silent_for < 5  # grace 2 s, plus at most one second of `date` rounding


def test_same_plan_same_script() -> None:
    assert user_data(make_plan("p5.48xlarge", nodes=2)) == user_data(
        make_plan("p5.48xlarge", nodes=2)
    )
