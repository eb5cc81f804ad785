"""SSH to real test hosts: connect with backoff, host key pinning, commands, streaming, upload."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from taskstack.errors import SSHError
from taskstack.home import runs_dir
from taskstack.runtime.ssh import HostKeys, SSHPool
from tests.testbed.hosts import REQUIRE_ENV, Testbed, TestHost, skip_or_fail


def test_connect_pins_the_host_key_for_the_run(test_hosts: list[TestHost]):
    host = test_hosts[0]

    async def scenario():
        async with SSHPool(host_keys=HostKeys.for_run("pin-run")) as pool:
            first = await pool.connect(host.node())
            again = await pool.connect(host.node())
            result = await first.run("echo $DOCKER_HOST")
            return first is again, result.stdout.strip()

    reused, docker_host = asyncio.run(scenario())

    assert reused
    assert docker_host == f"unix://{host.docker_socket}"
    known_hosts = (runs_dir() / "pin-run" / "known_hosts").read_text()
    assert known_hosts == f"{host.address} {host.host_public_key()}\n"


def test_a_changed_host_key_is_refused_for_the_rest_of_the_run(
    testbed: Testbed,
    test_hosts: list[TestHost],
):
    host = test_hosts[1]

    async def connect(host_keys: HostKeys):
        async with SSHPool(host_keys=host_keys, deadline_seconds=5) as pool:
            await pool.connect(host.node())

    asyncio.run(connect(HostKeys.for_run("rotated")))
    testbed.rotate_host_key(host)

    with pytest.raises(SSHError, match="host key that differs from the one pinned"):
        asyncio.run(connect(HostKeys.for_run("rotated")))
    # A new run trusts the new key on first contact.
    asyncio.run(connect(HostKeys.for_run("another-run")))


def test_connect_waits_with_backoff_until_sshd_answers(
    testbed: Testbed,
    test_hosts: list[TestHost],
):
    host = test_hosts[0]
    testbed.stop_sshd(host)
    restart = threading.Timer(1.0, testbed.start_sshd, args=(host,))

    async def scenario():
        async with SSHPool(deadline_seconds=20) as pool:
            connection = await pool.connect(host.node())
            return (await connection.run("hostname -I")).stdout

    restart.start()
    try:
        addresses = asyncio.run(scenario())
    finally:
        restart.join()

    assert host.address in addresses.split()


def test_connect_gives_up_at_the_deadline(
    testbed: Testbed,
    test_hosts: list[TestHost],
):
    host = test_hosts[0]
    testbed.stop_sshd(host)

    async def scenario():
        async with SSHPool(deadline_seconds=1) as pool:
            await pool.connect(host.node(rank=2))

    try:
        with pytest.raises(SSHError, match=rf"node 2 \({host.address}\) did not answer SSH"):
            asyncio.run(scenario())
    finally:
        testbed.start_sshd(host)


def test_a_key_the_node_does_not_know_is_refused(test_hosts: list[TestHost], tmp_path: Path):
    stranger = tmp_path / "stranger"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True
    )

    async def scenario():
        async with SSHPool(deadline_seconds=5) as pool:
            await pool.connect(test_hosts[0].node(key_path=stranger))

    with pytest.raises(SSHError, match="refused the key"):
        asyncio.run(scenario())


def test_output_streams_line_by_line_with_stderr_and_exit_status(test_hosts: list[TestHost]):
    command = "echo oops >&2; for i in $(seq 1 2000); do echo line $i; done; printf tail; exit 3"

    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(test_hosts[0].node())
            process = await connection.start(command)
            lines = [line async for line in process.lines()]
            return lines, await process.wait()

    lines, status = asyncio.run(scenario())

    # stderr arrives on its own SSH stream: merged in arrival order, whole lines.
    assert "oops" in lines
    lines.remove("oops")
    assert lines == [f"line {i}" for i in range(1, 2001)] + ["tail"]
    assert status == 3


def test_an_unfinished_last_line_can_be_held_back(test_hosts: list[TestHost]):
    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(test_hosts[0].node())
            process = await connection.start("printf 'one\\ntwo\\npart'")
            lines = [line async for line in process.lines(final_partial=False)]
            return lines, process.complete_bytes

    lines, complete_bytes = asyncio.run(scenario())

    assert lines == ["one", "two"]
    assert complete_bytes == len("one\ntwo\n")


def test_a_failing_command_is_an_ssh_error_naming_the_program(test_hosts: list[TestHost]):
    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(test_hosts[0].node(rank=1))
            await connection.run("ls /nonexistent-folder")

    with pytest.raises(SSHError, match="`ls` on node 1 exited with 2"):
        asyncio.run(scenario())


def test_upload_extracts_a_tar_stream_with_progress(test_hosts: list[TestHost], tmp_path: Path):
    archive = tmp_path / "snapshot.tar"
    payload = bytes(range(256)) * 8192  # 2 MiB: several chunks
    _write_tar(archive, {"src/main.py": b"print('hi')\n", "data.bin": payload})
    dest = f"/tmp/taskstack-upload-{tmp_path.name}"
    progress: list[tuple[int, int]] = []

    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(test_hosts[0].node())
            await connection.upload_tar(archive, dest, on_progress=lambda *p: progress.append(p))
            main = await connection.run(f"cat {dest}/src/main.py")
            size = await connection.run(f"wc -c < {dest}/data.bin")
            await connection.run(f"rm -rf {dest}")
            return main.stdout, int(size.stdout)

    main, size = asyncio.run(scenario())

    assert main == "print('hi')\n"
    assert size == len(payload)
    total = archive.stat().st_size
    assert progress[-1] == (total, total) and len(progress) > 1
    assert not Path(dest).exists()  # test hosts share this machine's filesystem


def test_a_broken_archive_is_an_ssh_error(test_hosts: list[TestHost], tmp_path: Path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"this is not a tar archive" * 100)
    dest = Path(f"/tmp/taskstack-broken-{tmp_path.name}")

    async def scenario():
        async with SSHPool() as pool:
            connection = await pool.connect(test_hosts[0].node())
            await connection.upload_tar(archive, str(dest))

    try:
        with pytest.raises(SSHError, match="unpacking the working directory"):
            asyncio.run(scenario())
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_missing_testbed_skips_but_fails_when_ci_requires_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no sshd here"):
        skip_or_fail("no sshd here")

    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no sshd here .*forbids skipping"):
        skip_or_fail("no sshd here")
