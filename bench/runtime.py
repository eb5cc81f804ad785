"""Runtime over SSH: taskstack's SSH transport against plain `ssh HOST ...` on one test host.

Three rows, each the median of REPEAT runs on the same network-namespace test host
(OpenSSH + Docker, see tests/testbed/hosts.py):
- SSH-ready to first log line: from a running sshd to the container's first output line.
  taskstack opens a fresh asyncssh connection, prepares the node's folder, `docker create`,
  `docker start --attach` on the node and follows its log file; the baseline is
  `ssh HOST docker run --rm IMAGE echo`.
- log throughput: MB/s of container output reaching this machine, as lines, timed from
  the first line to the last on both sides. taskstack
  follows the node's log file over asyncssh; the baseline reads the stdout of
  `ssh HOST docker run --rm IMAGE ...` producing the same bytes.
- stream throughput: MB/s of `cat FILE` on the node read as lines through asyncssh,
  against OpenSSH's `ssh HOST cat FILE` (the transport alone, no Docker).
Needs root and the testbed's Debian packages; reports why where it cannot run.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import row

REPEAT = 3
LOG_BYTES = 16 * 2**20
STREAM_BYTES = 64 * 2**20
# 100-byte lines of printable text, produced inside the busybox container.
_GENERATE = f"head -c {LOG_BYTES} /dev/zero | tr '\\0' x | fold -w 99"


def run() -> list[dict]:
    """Measure the three rows on one fresh test host; the host is removed at the end."""
    from tests.testbed.hosts import Testbed, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"no test hosts here: {reason}")

    testbed = Testbed(Path(f"/tmp/tstb-{os.getpid()}"))
    try:
        testbed.open()
        host = testbed.create_host()
        return [
            _first_line_row(host),
            _log_throughput_row(host),
            _stream_throughput_row(host),
        ]
    finally:
        testbed.close()


def _first_line_row(host) -> dict:
    ours = _median(lambda: asyncio.run(_ours_first_line(host)))
    baseline = _median(lambda: _ssh_first_line(host))
    return row(
        "SSH-ready to first log line",
        taskstack=ours,
        baseline=baseline,
        unit="s",
        how="fresh connection, prepare, docker create + start --attach, tail -f vs "
        "`ssh HOST docker run --rm busybox echo`",
    )


def _log_throughput_row(host) -> dict:
    ours = _median(lambda: asyncio.run(_ours_log_rate(host)))
    baseline = _median(lambda: _ssh_rate(host, ["docker", "run", "--rm", *_busybox(_GENERATE)]))
    return row(
        "container log throughput",
        taskstack=ours,
        baseline=baseline,
        unit="MB/s",
        how=f"{LOG_BYTES >> 20} MiB of 100-byte lines, first to last line; taskstack: container "
        "with a tty, its log file tailed over asyncssh; baseline: stdout of `ssh HOST docker "
        "run` without a tty (ratio above 1: taskstack faster)",
    )


def _stream_throughput_row(host) -> dict:
    path = host.directory / "stream.txt"
    line = b"y" * 99 + b"\n"
    path.write_bytes(line * (STREAM_BYTES // len(line)))
    ours = _median(lambda: asyncio.run(_ours_stream_rate(host, path)))
    baseline = _median(lambda: _ssh_rate(host, ["cat", str(path)]))
    return row(
        "SSH line stream throughput",
        taskstack=ours,
        baseline=baseline,
        unit="MB/s",
        how=f"`cat` of {STREAM_BYTES >> 20} MiB read as lines via asyncssh vs "
        "`ssh HOST cat` (ratio above 1: taskstack faster)",
    )


async def _ours_first_line(host) -> float:
    from taskstack.runtime.remote import RemoteTransport
    from taskstack.runtime.spec import JobSpec
    from taskstack.runtime.ssh import SSHPool
    from tests.testbed.busybox import IMAGE

    spec = JobSpec(run_name="bench-first", image=IMAGE, commands=("echo hello",))
    start = time.perf_counter()
    async with SSHPool() as pool:
        transport = RemoteTransport(host.node(), pool=pool, run_name=spec.run_name, nodes=1)
        try:
            await transport.prepare(snapshot=None, hostfile="")
            await transport.start(spec, env={})
            async for _ in transport.lines():
                elapsed = time.perf_counter() - start
                break
        finally:
            await transport.stop(grace=1)
    return elapsed


def _ssh_first_line(host) -> float:
    argv = host.ssh_argv("docker", "run", "--rm", *_busybox("echo hello"))
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.perf_counter() - start
    process.wait()
    return elapsed


async def _ours_log_rate(host) -> float:
    from taskstack.runtime.remote import RemoteTransport
    from taskstack.runtime.spec import JobSpec
    from taskstack.runtime.ssh import SSHPool
    from tests.testbed.busybox import IMAGE

    spec = JobSpec(run_name="bench-logs", image=IMAGE, commands=(_GENERATE,))
    async with SSHPool() as pool:
        transport = RemoteTransport(host.node(), pool=pool, run_name=spec.run_name, nodes=1)
        try:
            await transport.prepare(snapshot=None, hostfile="")
            await transport.start(spec, env={})
            start, received = None, 0
            async for line in transport.lines():
                start = start or time.perf_counter()
                received += len(line) + 1
            elapsed = time.perf_counter() - (start or 0)
        finally:
            await transport.stop(grace=1)
    _check_size(received, LOG_BYTES * 100 // 99)  # fold adds one \n per 99 bytes
    return received / elapsed / 1e6


async def _ours_stream_rate(host, path: Path) -> float:
    from taskstack.runtime.ssh import SSHPool

    async with SSHPool() as pool:
        connection = await pool.connect(host.node())
        start = time.perf_counter()
        process = await connection.start(f"cat {path}")
        received = 0
        async for line in process.lines():
            received += len(line) + 1
        elapsed = time.perf_counter() - start
    _check_size(received, path.stat().st_size)
    return received / elapsed / 1e6


def _ssh_rate(host, command: list[str]) -> float:
    process = subprocess.Popen(
        host.ssh_argv(*command), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    # Timed from the first line on, like taskstack's side: start-up is the first row's.
    first = process.stdout.readline()
    start = time.perf_counter()
    # The same unit of work on both sides: whole lines, counted the same way.
    received = len(first) + sum(len(line) for line in process.stdout)
    elapsed = time.perf_counter() - start
    if process.wait() != 0:
        raise RuntimeError(f"`{' '.join(command[:3])}` failed on the test host")
    return received / elapsed / 1e6


def _busybox(script: str) -> list[str]:
    from tests.testbed.busybox import IMAGE

    # Quoted for the remote shell that OpenSSH hands the command to.
    return ["--entrypoint", "/bin/sh", IMAGE, "-c", shlex.quote(script)]


def _check_size(received: int, expected: int) -> None:
    # A tty turns each \n into \r\n; lines() strips the \r, so the counts agree.
    if abs(received - expected) > expected // 100:
        raise RuntimeError(f"received {received} bytes, expected about {expected}")


def _median(measure) -> float:
    return statistics.median(measure() for _ in range(REPEAT))
