"""The first-boot script: valid shell, Docker always, the NVIDIA toolkit on NVIDIA nodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from taskstack.stacks.cloudinit import (
    BOOT_ALLOWANCE_SECONDS,
    HEARTBEAT_FILE,
    NATIVE_LIMIT_HEAD_START_SECONDS,
    READY_FILE,
    WATCHDOG_PATH,
    AzureDeallocation,
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
        make_plan("Standard_NC4as_T4_v3", max_duration="1h"),
    ],
    ids=["gpu", "cpu", "tpu", "azure"],
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

    assert f"--on-active=7800s {WATCHDOG_PATH} now" in armed
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


def test_the_backstop_runs_the_switch_now_and_gives_gcp_a_head_start() -> None:
    aws = user_data(make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1"), max_duration="1h"))
    gcp = user_data(make_plan("g2-standard-4", max_duration="1h"))
    tpu = user_data(make_plan(catalog_offer("v5litepod-8"), max_duration="1h"))

    assert f"--on-active=4200s {WATCHDOG_PATH} now" in aws
    assert f"--on-active={4200 + NATIVE_LIMIT_HEAD_START_SECONDS}s {WATCHDOG_PATH} now" in gcp
    # TPU VMs have no run limit of their own on GCP: the node's backstop is all there is.
    assert f"--on-active=4200s {WATCHDOG_PATH} now" in tpu


def test_only_azure_nodes_deallocate_themselves_before_powering_off() -> None:
    azure = user_data(make_plan("Standard_NC4as_T4_v3"))
    gcp = user_data(make_plan("g2-standard-4"))

    assert watchdog_script(grace=600, azure=AzureDeallocation()) in azure
    assert "command -v curl" in azure
    assert "deallocate" not in gcp and "169.254.169.254" not in gcp


def test_the_switch_run_with_now_powers_off_without_waiting(tmp_path) -> None:
    heartbeat, fired = tmp_path / "heartbeat", tmp_path / "powered-off"
    heartbeat.touch()  # a fresh beat: only `now` makes it fire
    script = watchdog_script(grace=600, heartbeat=str(heartbeat), poweroff=f"touch {fired}")

    done = subprocess.run(["sh", "-c", script, "taskstack-watchdog", "now"], timeout=10)

    assert done.returncode == 0
    assert fired.exists()


# --- the Azure path, against a loopback IMDS and Resource Manager ----------------------------

VM_ID = "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/demo-0"
TOKEN = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQuYXp1cmUuY29tLyJ9.c2ln"


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class _Azure:
    """IMDS and Resource Manager on one loopback port, as far as the switch uses them.

    Like IMDS, it refuses metadata requests without `Metadata: true`; Resource Manager
    answers `deallocate` with 202, or 403 when `arm_refuses`. Each request, and the power-off
    of the script under test, is appended to `log` in the order they happen.
    """

    def __init__(self, log: Path, *, identity: bool = True, arm_refuses: bool = False) -> None:
        self.log = log
        self.requests: list[_Request] = []
        self.identity = identity
        self.arm_refuses = arm_refuses
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, request: _Request) -> tuple[int, str]:
        with self.log.open("a") as log:
            log.write(f"{request.method} {request.path}\n")
        metadata = request.path.startswith("/metadata/")
        if metadata and request.headers.get("metadata") != "true":
            return 400, '{"error":"invalid_request","error_description":"no Metadata header"}'
        if request.path == "/metadata/identity/oauth2/token":
            if not self.identity:
                return 400, '{"error":"invalid_request","error_description":"Identity not found"}'
            return 200, f'{{"access_token":"{TOKEN}","expires_in":"86399","token_type":"Bearer"}}'
        if request.path == "/metadata/instance/compute/resourceId":
            return 200, VM_ID
        if request.method == "POST" and request.path == f"{VM_ID}/deallocate":
            if self.arm_refuses:
                return 403, '{"error":{"code":"AuthorizationFailed","message":"not allowed"}}'
            return 202, ""
        return 404, '{"error":{"code":"NotFound"}}'

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        azure = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._serve()

            def _serve(self) -> None:
                url = urlsplit(self.path)
                request = _Request(
                    method=self.command,
                    path=url.path,
                    query=dict(parse_qsl(url.query)),
                    headers={key.lower(): value for key, value in self.headers.items()},
                )
                azure.requests.append(request)
                status, body = azure.answer(request)
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads `requests`."""

        return Handler


@pytest.fixture
def azure(tmp_path: Path) -> Iterator[Callable[..., _Azure]]:
    servers: list[_Azure] = []

    def start(**behaviour: bool) -> _Azure:
        servers.append(_Azure(tmp_path / "happened.log", **behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _run_azure_switch(server: _Azure, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The switch of an Azure node whose heartbeat has stopped, with a loopback Azure."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (Azure's Ubuntu images have it)")
    stale = tmp_path / "heartbeat"
    stale.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    script = watchdog_script(
        grace=60,
        heartbeat=str(stale),
        poweroff=f"echo poweroff >> {server.log}",
        check_seconds=0.1,
        azure=AzureDeallocation(imds_url=server.url, arm_url=server.url, settle_seconds=0),
    )
    # No proxy of the machine's may stand between curl and the loopback server.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_azure_node_asks_for_a_token_and_deallocates_itself_before_powering_off(
    azure: Callable[..., _Azure], tmp_path: Path
) -> None:
    server = azure()

    done = _run_azure_switch(server, tmp_path)

    assert done.returncode == 0, done.stderr
    token, instance, deallocate = server.requests
    assert (token.method, token.path) == ("GET", "/metadata/identity/oauth2/token")
    assert token.headers["metadata"] == "true"
    assert token.query == {
        "api-version": "2018-02-01",
        "resource": "https://management.azure.com/",
    }
    assert instance.headers["metadata"] == "true"
    assert instance.query == {"api-version": "2021-02-01", "format": "text"}
    assert (deallocate.method, deallocate.path) == ("POST", f"{VM_ID}/deallocate")
    assert deallocate.query == {"api-version": "2024-07-01"}
    assert deallocate.headers["authorization"] == f"Bearer {TOKEN}"
    assert deallocate.headers["content-length"] == "0"
    assert server.log.read_text().splitlines()[-2:] == [f"POST {VM_ID}/deallocate", "poweroff"]
    assert "Azure is deallocating this VM" in done.stderr
    assert TOKEN not in done.stdout + done.stderr


def test_an_azure_node_still_powers_off_when_resource_manager_refuses(
    azure: Callable[..., _Azure], tmp_path: Path
) -> None:
    server = azure(arm_refuses=True)

    done = _run_azure_switch(server, tmp_path)

    assert done.returncode == 0, done.stderr
    assert [request.method for request in server.requests] == ["GET", "GET", "POST"]
    assert server.log.read_text().splitlines()[-1] == "poweroff"
    assert "did not deallocate this VM" in done.stderr


def test_an_azure_node_without_an_identity_powers_off_without_calling_resource_manager(
    azure: Callable[..., _Azure], tmp_path: Path
) -> None:
    server = azure(identity=False)

    done = _run_azure_switch(server, tmp_path)

    assert done.returncode == 0, done.stderr
    assert [request.path for request in server.requests] == ["/metadata/identity/oauth2/token"]
    assert server.log.read_text().splitlines()[-1] == "poweroff"
