from __future__ import annotations

import asyncio
import socket

import pytest

from taskstack.errors import ConfigError
from taskstack.runtime.ports import check_ports_free, forward_port, port_is_free, port_urls
from taskstack.runtime.spec import PortMapping


@pytest.fixture
def taken_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_taken_port_names_the_port_and_a_way_out(taken_port: int) -> None:
    mapping = PortMapping(local_port=taken_port, container_port=taken_port)

    with pytest.raises(
        ConfigError, match=rf"^port {taken_port} on 127.0.0.1 is taken; pick"
    ) as err:
        check_ports_free([mapping], host_network=False)

    assert f":{taken_port}`" in str(err.value)  # `-p FREE:CONTAINER`


def test_on_the_host_network_the_container_port_must_be_free_too(taken_port: int) -> None:
    mapping = PortMapping(local_port=_free_port(), container_port=taken_port)

    check_ports_free([mapping], host_network=False)  # a container would own its port
    with pytest.raises(ConfigError, match=rf"port {taken_port} on 127.0.0.1 is taken; the local"):
        check_ports_free([mapping], host_network=True)


def test_free_ports_pass_and_give_urls() -> None:
    port = _free_port()
    mapping = PortMapping(local_port=port, container_port=port)

    check_ports_free([mapping], host_network=True)

    assert port_is_free(port)
    assert port_urls([mapping]) == [f"http://127.0.0.1:{port}"]


def test_forwarder_pipes_bytes_both_ways() -> None:
    async def scenario() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"echo:" + await reader.readline())
            await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        target_port = target.sockets[0].getsockname()[1]
        local_port = _free_port()
        forwarder = await forward_port(local_port, target_port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
            writer.write(b"ping\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
            return answer
        finally:
            forwarder.close()
            target.close()

    assert asyncio.run(scenario()) == b"echo:ping\n"
