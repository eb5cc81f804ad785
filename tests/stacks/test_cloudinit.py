"""The first-boot script: valid shell, Docker always, the NVIDIA toolkit on NVIDIA nodes."""

from __future__ import annotations

import os
import shutil
import socket
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
    TPU_NODE_ATTRIBUTE,
    WATCHDOG_PATH,
    AzureDeallocation,
    GcpSelfDeletion,
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
        make_plan("g2-standard-4", max_duration="1h"),
    ],
    ids=["gpu", "cpu", "tpu", "azure", "gcp"],
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
    aws = user_data(make_plan(cpu_offer("aws", "c5.xlarge", "us-east-1")))

    assert watchdog_script(grace=600, azure=AzureDeallocation()) in azure
    assert "command -v curl" in azure
    assert "deallocate" not in gcp and "169.254.169.254" not in gcp
    assert "metadata.google.internal" not in azure + aws


def test_gcp_instances_and_tpu_vms_delete_themselves_through_their_own_api() -> None:
    instance = user_data(make_plan("g2-standard-4"))
    tpu = user_data(make_plan(catalog_offer("v5litepod-8")))

    assert watchdog_script(grace=600, gcp=GcpSelfDeletion()) in instance
    assert watchdog_script(grace=600, gcp=GcpSelfDeletion(tpu=True)) in tpu
    assert "command -v curl" in instance and "command -v curl" in tpu
    # The real endpoints by default; the tests below point them at a loopback server.
    assert "metadata=http://metadata.google.internal\n" in instance
    assert "api=https://compute.googleapis.com\n" in instance
    assert "api=https://tpu.googleapis.com\n" in tpu


def test_a_switch_is_for_one_cloud() -> None:
    with pytest.raises(ValueError, match="not both"):
        watchdog_script(grace=60, azure=AzureDeallocation(), gcp=GcpSelfDeletion())


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


class _StandIn:
    """A cloud's metadata server and API on one loopback port, as far as the switch uses
    them: each request is recorded in `requests` and appended to `log`, as is the power-off
    of the script under test, in the order they happen. Subclasses answer."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.requests: list[_Request] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, request: _Request) -> tuple[int, str]:
        raise NotImplementedError

    def _record(self, request: _Request) -> tuple[int, str]:
        self.requests.append(request)
        with self.log.open("a") as log:
            log.write(f"{request.method} {request.path}\n")
        return self.answer(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._serve()

            def do_DELETE(self) -> None:
                self._serve()

            def _serve(self) -> None:
                url = urlsplit(self.path)
                request = _Request(
                    method=self.command,
                    path=url.path,
                    query=dict(parse_qsl(url.query)),
                    headers={key.lower(): value for key, value in self.headers.items()},
                )
                status, body = stand_in._record(request)
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test reads `requests`."""

        return Handler


class _Azure(_StandIn):
    """IMDS and Resource Manager. Like IMDS, it refuses metadata requests without
    `Metadata: true`; Resource Manager answers `deallocate` with 202, or 403 when
    `arm_refuses`."""

    def __init__(self, log: Path, *, identity: bool = True, arm_refuses: bool = False) -> None:
        self.identity = identity
        self.arm_refuses = arm_refuses
        super().__init__(log)

    def answer(self, request: _Request) -> tuple[int, str]:
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


# --- the GCP path, against a loopback metadata server and Compute and TPU APIs --------------

PROJECT, ZONE = "proj-1", "us-central1-a"
GCP_TOKEN = "ya29.c.loopback-token-of-the-runs-service-account"
INSTANCE_PATH = f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/demo-0"
TPU_NODE = f"projects/{PROJECT}/locations/{ZONE}/nodes/demo"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"


class _Gcp(_StandIn):
    """The metadata server and the Compute and TPU APIs. Like the metadata server, it
    refuses requests without `Metadata-Flavor: Google` (403) and has no token for a VM
    without a service account (404); the APIs answer DELETE with an operation, or with 403
    when `api_refuses`. A TPU host's own name and project are not its node's."""

    def __init__(
        self, log: Path, *, service_account: bool = True, api_refuses: bool = False
    ) -> None:
        self.service_account = service_account
        self.api_refuses = api_refuses
        super().__init__(log)

    def answer(self, request: _Request) -> tuple[int, str]:
        if request.path.startswith("/computeMetadata/v1/"):
            return self._metadata(request)
        if request.method == "DELETE" and request.path in (INSTANCE_PATH, f"/v2/{TPU_NODE}"):
            if self.api_refuses:
                return 403, '{"error":{"code":403,"status":"PERMISSION_DENIED"}}'
            return 200, '{"name":"operation-1","status":"RUNNING"}'
        return 404, '{"error":{"code":404,"status":"NOT_FOUND"}}'

    def _metadata(self, request: _Request) -> tuple[int, str]:
        if request.headers.get("metadata-flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        if request.path == TOKEN_PATH:
            if not self.service_account:
                return 404, "service account not found"
            return 200, f'{{"access_token":"{GCP_TOKEN}","expires_in":3599,"token_type":"Bearer"}}'
        values = {
            "project/project-id": PROJECT,
            "instance/zone": f"projects/123456789012/zones/{ZONE}",
            "instance/name": "demo-0",
            f"instance/attributes/{TPU_NODE_ATTRIBUTE}": TPU_NODE,
        }
        key = request.path.removeprefix("/computeMetadata/v1/")
        if key not in values:
            return 404, "not found"
        return 200, values[key]


@pytest.fixture
def gcp(tmp_path: Path) -> Iterator[Callable[..., _Gcp]]:
    servers: list[_Gcp] = []

    def start(**behaviour: bool) -> _Gcp:
        servers.append(_Gcp(tmp_path / "happened.log", **behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _run_gcp_switch(
    server: _Gcp,
    tmp_path: Path,
    *,
    tpu: bool = False,
    settle_seconds: int = 0,
    proxy: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """The switch of a GCP node whose heartbeat has stopped, with a loopback GCP."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (GCP's Ubuntu and TPU VM images have it)")
    stale = tmp_path / "heartbeat"
    stale.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    deletion = GcpSelfDeletion(
        tpu=tpu,
        metadata_url=server.url,
        compute_url=server.url,
        tpu_url=server.url,
        settle_seconds=settle_seconds,
    )
    script = watchdog_script(
        grace=60,
        heartbeat=str(stale),
        poweroff=f"echo poweroff >> {server.log}",
        check_seconds=0.1,
        gcp=deletion,
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    if proxy is not None:
        env["http_proxy"] = proxy
    return subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_gcp_instance_asks_for_a_token_and_deletes_itself_before_powering_off(
    gcp: Callable[..., _Gcp], tmp_path: Path
) -> None:
    server = gcp()

    done = _run_gcp_switch(server, tmp_path)

    assert done.returncode == 0, done.stderr
    token, *metadata, delete = server.requests
    assert (token.method, token.path) == ("GET", TOKEN_PATH)
    assert all(r.headers["metadata-flavor"] == "Google" for r in [token, *metadata])
    assert [r.path.removeprefix("/computeMetadata/v1/") for r in metadata] == [
        "project/project-id",
        "instance/zone",
        "instance/name",
    ]
    assert (delete.method, delete.path) == ("DELETE", INSTANCE_PATH)
    assert delete.headers["authorization"] == f"Bearer {GCP_TOKEN}"
    assert "metadata-flavor" not in delete.headers
    assert server.log.read_text().splitlines()[-2:] == [f"DELETE {INSTANCE_PATH}", "poweroff"]
    assert "GCP is deleting this instance" in done.stderr
    assert GCP_TOKEN not in done.stdout + done.stderr


def test_a_tpu_vm_host_deletes_the_node_the_programs_metadata_names(
    gcp: Callable[..., _Gcp], tmp_path: Path
) -> None:
    server = gcp()

    done = _run_gcp_switch(server, tmp_path, tpu=True)

    assert done.returncode == 0, done.stderr
    assert [(r.method, r.path) for r in server.requests] == [
        ("GET", TOKEN_PATH),
        ("GET", f"/computeMetadata/v1/instance/attributes/{TPU_NODE_ATTRIBUTE}"),
        ("DELETE", f"/v2/{TPU_NODE}"),
    ]
    assert server.requests[-1].headers["authorization"] == f"Bearer {GCP_TOKEN}"
    assert server.log.read_text().splitlines()[-1] == "poweroff"
    assert "GCP is deleting this TPU node" in done.stderr


@pytest.mark.parametrize("tpu", [False, True], ids=["instance", "tpu"])
def test_a_gcp_node_powers_off_at_once_when_the_api_refuses(
    gcp: Callable[..., _Gcp], tmp_path: Path, tpu: bool
) -> None:
    server = gcp(api_refuses=True)

    # A settle of 10 minutes would outlast the run's timeout: refused, it must not wait.
    done = _run_gcp_switch(server, tmp_path, tpu=tpu, settle_seconds=600)

    assert done.returncode == 0, done.stderr
    assert server.requests[-1].method == "DELETE"
    assert server.log.read_text().splitlines()[-1] == "poweroff"
    kind = "TPU node" if tpu else "instance"
    assert f"GCP did not delete this {kind}" in done.stderr


def test_a_gcp_node_without_a_service_account_powers_off_without_calling_an_api(
    gcp: Callable[..., _Gcp], tmp_path: Path
) -> None:
    server = gcp(service_account=False)

    done = _run_gcp_switch(server, tmp_path, settle_seconds=600)

    assert done.returncode == 0, done.stderr
    assert [request.path for request in server.requests] == [TOKEN_PATH]
    assert server.log.read_text().splitlines()[-1] == "poweroff"


def test_the_metadata_server_is_asked_past_a_proxy_and_the_api_through_it(
    gcp: Callable[..., _Gcp], tmp_path: Path
) -> None:
    server = gcp()
    with socket.socket() as closed:  # a loopback port nothing listens on: a dead proxy
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"

    done = _run_gcp_switch(server, tmp_path, proxy=proxy, settle_seconds=600)

    assert done.returncode == 0, done.stderr
    assert [request.method for request in server.requests] == ["GET"] * 4
    assert server.log.read_text().splitlines()[-1] == "poweroff"
