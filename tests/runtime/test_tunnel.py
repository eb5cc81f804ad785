"""Port forwards through SSH to a busybox httpd in a container on a real test host."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from taskstack.errors import SSHError
from taskstack.runtime.spec import PortMapping
from taskstack.runtime.ssh import SSHPool
from taskstack.runtime.tunnel import Tunnel, forwarded
from tests.testbed.busybox import IMAGE
from tests.testbed.hosts import TestHost, free_local_port, http_get_local

HTTPD = (
    "docker run -d --name tunnel-httpd -p 127.0.0.1:8080:8080 --entrypoint /bin/sh "
    f"{IMAGE} -c 'echo hello-from-node > /www/index.html && exec httpd -f -p 8080 -h /www'"
)


@pytest.fixture
def httpd(test_hosts: list[TestHost]):
    host = test_hosts[0]
    host.docker("rm", "-f", "tunnel-httpd")
    yield host
    host.docker("rm", "-f", "tunnel-httpd")


def test_forward_reaches_the_container_port_on_127_0_0_1_only(httpd: TestHost):
    local_port = free_local_port()
    mapping = PortMapping(local_port=local_port, container_port=8080)

    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(httpd.node())
            await connection.run(HTTPD)
            async with forwarded(connection, [mapping]) as tunnel:
                body = await asyncio.to_thread(http_get_local, f"http://127.0.0.1:{local_port}/")
                return tunnel.urls, body, _listening_addresses(local_port)

    urls, body, listening = asyncio.run(scenario())

    assert urls == (f"http://127.0.0.1:{local_port}",)
    assert body == "hello-from-node\n"
    assert listening == {"127.0.0.1"}
    assert _listening_addresses(local_port) == set()  # closed when the block ended


def test_a_taken_local_port_is_an_ssh_error_and_nothing_stays_open(test_hosts: list[TestHost]):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = free_local_port()
        ports = [
            PortMapping(local_port=free, container_port=8080),
            PortMapping(local_port=busy, container_port=8081),
        ]

        async def scenario():
            async with SSHPool() as pool:
                tunnel = Tunnel()
                await tunnel.open(await pool.connect(test_hosts[0].node()), ports)

        with pytest.raises(SSHError, match=f"cannot forward 127.0.0.1:{busy} to port 8081"):
            asyncio.run(scenario())

    assert _listening_addresses(free) == set()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP listener on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(_decode_address(address))
    return found


def _decode_address(hex_address: str) -> str:
    if len(hex_address) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
    return hex_address  # IPv6: any value shows a listener beyond 127.0.0.1
