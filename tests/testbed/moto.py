"""One moto server for the whole test session, reset between the tests that use it.

`moto_server` starts `moto_server` on 127.0.0.1 at a free port once per session; each test
that asks for `moto` gets it freshly reset (`POST /moto-api/reset`). The server is stopped by
its PID when the session ends.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.terraform import testbed_required

_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class MotoServer:
    """A running moto server: its URL and the process that serves it."""

    url: str
    pid: int

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def client(self, service: str, region: str = "us-east-1"):
        """A boto3 client talking to this server."""
        import boto3

        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """The session's moto server (started on first use)."""
    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(binary).exists():
        reason = "moto_server is not installed (pip install 'moto[server]')"
        if testbed_required():
            pytest.fail(reason)
        pytest.skip(reason)

    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_CALL_RESET_API": "false"},
        )
    server = MotoServer(url=f"http://127.0.0.1:{port}", pid=process.pid)
    try:
        _wait_until_up(server, process, log_path)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


def aws_environ(moto: MotoServer) -> dict[str, str]:
    """The settings of a CI job pointed at `moto`, as environment variables: AWS through
    Terraform, test credentials, and the stacks' network inside the test subnet."""
    return {
        "TASKSTACK_BACKENDS": "aws",
        "TASKSTACK_ENGINE": "terraform",
        "AWS_ENDPOINT_URL": moto.url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "TASKSTACK_AWS_VPC_CIDR": "10.200.0.0/16",
        "TASKSTACK_AWS_SUBNET_CIDR": "10.200.0.0/24",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(server: MotoServer, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log_path.read_text()[-2000:]}")
        try:
            server.reset()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer within {_START_TIMEOUT:.0f} s")
