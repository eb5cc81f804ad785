"""The local transport: each node of a run is a process group on this machine.

Every node runs `bash -c` with the task's commands joined by `&&` (dstack's meaning: the
first failing command ends the job), in its own copy of the working directory, with the
run's virtualenv first on `PATH`. The node is its own session and process group, so the
terminal's Ctrl+C reaches only taskstack, which then stops the nodes itself: SIGTERM to
the group, SIGKILL after a grace period, and a final sweep for any process that carries
the node's marker in its environment (that catches daemons that left the group).

The run's virtualenv is made with `--system-site-packages`: a task sees what this
machine's Python already has (torch, CUDA builds) without downloading it again, while
`pip install` in the task writes only into the run's virtualenv and never into the user's
Python. pip itself comes from the wheel that CPython bundles for `ensurepip`, unpacked
once under the state folder and put on the virtualenv's path by a `.pth` file, which
makes a virtualenv with a working `pip` in tens of milliseconds instead of seconds. The
nodes of a run share that virtualenv, so its `pip` command takes a lock first: two nodes
installing at once take turns (`python -m pip` bypasses the command and the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from taskstack.errors import RunError
from taskstack.home import taskstack_home
from taskstack.runtime.docker import shell_command, shell_path
from taskstack.runtime.ports import Remaps
from taskstack.runtime.spec import JobSpec, Node, PortMapping
from taskstack.runtime.workdir import extract_snapshot

log = logging.getLogger(__name__)

MARKER_VAR = "TASKSTACK_NODE"
"""Set on every local node process to `node_marker(...)`; finds its processes when stopping."""

# Variables of the user's shell that would point a task at the wrong Python.
_DROPPED_ENV = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "__PYVENV_LAUNCHER__")


class LocalTransport:
    """Runs one node's job as a process group on this machine (implements `Transport`)."""

    def __init__(self, node: Node, *, node_dir: Path, venv_dir: Path | None, marker: str) -> None:
        self.node = node
        self.node_dir = node_dir
        self.venv_dir = venv_dir
        self.workdir = node_dir / "workdir"
        self._process: asyncio.subprocess.Process | None = None
        self._marker = marker
        self._remaps = Remaps()

    async def prepare(self, *, snapshot: Path | None, hostfile: str) -> str:
        """Extract the snapshot into this node's own folder and write its hostfile there."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if snapshot is not None:
            await asyncio.to_thread(extract_snapshot, snapshot, self.workdir)

        hostfile_path = self.node_dir / "mpi_hostfile"
        hostfile_path.write_text(hostfile)
        return str(hostfile_path)

    async def start(self, spec: JobSpec, *, env: Mapping[str, str]) -> int | None:
        """Start `bash -c` with the commands in a new session; returns its process group id."""
        if spec.image is not None:
            raise RunError("the local process transport cannot run `image:`; use Docker")
        argv = _argv(spec)
        cwd = _cwd(self.workdir, spec.working_dir)

        self._process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=_process_env(env, venv_dir=self.venv_dir, marker=self._marker),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.info("node %d started: pid %d in %s", self.node.rank, self._process.pid, cwd)
        return self._process.pid

    async def lines(self) -> AsyncIterator[str]:
        """The node's merged stdout and stderr, line by line, as it is written."""
        async for line in read_lines(self._started()):
            yield line

    async def wait(self) -> int:
        """The exit code of the node's shell (negative: killed by that signal)."""
        return await self._started().wait()

    async def forward_ports(self, ports: Sequence[PortMapping]) -> None:
        """The task binds this machine's ports itself; only a remapped port needs a forwarder."""
        await self._remaps.open(ports)

    async def stop(self, *, grace: float) -> None:
        """SIGTERM the node's group, SIGKILL it after `grace`, then kill marked stragglers."""
        self._remaps.close()
        if self._process is None:
            return

        await asyncio.to_thread(stop_group, self._process.pid, marker=self._marker, grace=grace)
        # Reap the shell so no zombie outlives the run.
        with contextlib.suppress(ProcessLookupError):
            await self._process.wait()

    def _started(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RunError(f"node {self.node.rank} was not started")
        return self._process


def node_marker(run_name: str, run_id: str, rank: int) -> str:
    """The marker of one node of one run; `run_id` tells apart two runs of the same name."""
    return f"{run_name}/{run_id}/{rank}"


def stop_group(pgid: int, *, marker: str, grace: float) -> None:
    """Stop process group `pgid` and every process carrying `marker`; returns when all are gone.

    Safe to call when the group is already gone. Used by the transport and by `dstack stop`.
    """
    if _signal_group(pgid, signal.SIGTERM):
        if not _wait_group_gone(pgid, timeout=grace):
            log.warning("process group %d ignored SIGTERM for %.0fs; killing it", pgid, grace)
            _signal_group(pgid, signal.SIGKILL)
            _wait_group_gone(pgid, timeout=5.0)

    kill_marked(marker)


def kill_marked(marker: str) -> int:
    """SIGKILL every process carrying `marker`; returns how many there were.

    Daemons that started their own session escape the process group but keep the
    environment, so this finds what a group kill missed.
    """
    pids = marked_processes(marker)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def stop_marked(marker: str, *, grace: float) -> None:
    """SIGTERM every process carrying `marker`, and SIGKILL those alive after `grace`.

    This is how `dstack stop` reaches a run's processes from outside the apply process:
    by the marker, never by a stored pid that another process may have taken since.
    """
    for pid in marked_processes(marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while marked_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_marked(marker)


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment has `TASKSTACK_NODE=marker` (Linux /proc)."""
    if not marker:
        return []
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or another user's
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def create_run_venv(venv_dir: Path) -> Path:
    """Create the run's virtualenv at `venv_dir`, with a working `pip`; returns `venv_dir`.

    The virtualenv is built on the Python that runs taskstack (a task's `python:` version
    is honoured on the clouds, where it picks the image).
    """
    builder = venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True)
    builder.create(venv_dir)

    pip_dir = _unpacked_pip()
    if pip_dir is not None:
        site_packages = _site_packages(venv_dir)
        (site_packages / "_taskstack_pip.pth").write_text(f"{pip_dir}\n")
        for name in ("pip", "pip3"):
            _write_pip_shim(venv_dir / "bin" / name)
    return venv_dir


def _argv(spec: JobSpec) -> list[str]:
    if spec.entrypoint:
        # As in a container: the entrypoint's words, then each command as an argument.
        return [*shlex.split(spec.entrypoint), *spec.commands]
    if not spec.commands:
        raise RunError("the task has no `commands` to run on the local backend")
    # Found on taskstack's own PATH: the task's `env` may set a PATH without it.
    shell = spec.shell or "bash"
    return [shutil.which(shell) or shell_path(shell), "-c", shell_command(spec.commands)]


async def read_lines(process: asyncio.subprocess.Process) -> AsyncIterator[str]:
    """A child's stdout (created with `stdout=PIPE`), line by line, without line breaks."""
    stream = process.stdout
    assert stream is not None  # created with stdout=PIPE
    pending = b""
    # Read chunks rather than readline(): a task may print lines longer than any limit.
    while chunk := await stream.read(65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield _decode(line)
    if pending:
        yield _decode(pending)


def _cwd(workdir: Path, working_dir: str | None) -> Path:
    if working_dir is None:
        return workdir
    path = Path(working_dir)
    cwd = path if path.is_absolute() else workdir / path
    if not cwd.is_dir():
        raise RunError(f"`working_dir` {working_dir} does not exist in the working directory")
    return cwd


def _process_env(env: Mapping[str, str], *, venv_dir: Path | None, marker: str) -> dict[str, str]:
    """The user's environment, the run's virtualenv first on PATH, then the task's env.

    The local backend inherits the user's environment (HOME, locale, CUDA variables), as
    any program started from their shell would.
    """
    merged = {key: value for key, value in os.environ.items() if key not in _DROPPED_ENV}
    # Output reaches the log as it is printed, not when a buffer fills.
    merged["PYTHONUNBUFFERED"] = "1"
    merged.update(env)
    if venv_dir is not None:
        merged["VIRTUAL_ENV"] = str(venv_dir)
        merged["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{merged.get('PATH', os.defpath)}"
    merged[MARKER_VAR] = marker
    return merged


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


def _signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to the group; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The id now belongs to someone else's group: ours is gone.
        return False
    return True


def _wait_group_gone(pgid: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return True
        time.sleep(0.05)
    return not _group_alive(pgid)


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in the group."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # killpg succeeds while only unreaped zombies remain; they are dead already.
    return any(_state(pid) not in ("Z", "X", None) for pid in _group_members(pgid))


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid:
            members.append(int(entry.name))
    return members


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces; the state follows it.
    return stat.rsplit(")", 1)[1].split()[0]


def _unpacked_pip() -> Path | None:
    """pip from CPython's bundled `ensurepip` wheel, unpacked once under the state folder."""
    import ensurepip

    wheels = sorted((Path(ensurepip.__file__).parent / "_bundled").glob("pip-*.whl"))
    if not wheels:
        log.warning("this Python bundles no pip wheel; `pip` in tasks uses the system pip")
        return None
    wheel = wheels[-1]
    target = taskstack_home() / "cache" / wheel.stem
    if target.is_dir():
        return target

    # Unpack beside the target and rename: two runs starting at once both succeed.
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".pip-"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(scratch)
    try:
        scratch.rename(target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _site_packages(venv_dir: Path) -> Path:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return venv_dir / "lib" / version / "site-packages"


PIP_LOCK = ".pip.lock"
"""In the run's virtualenv: `pip` holds it, so the nodes of a run install one at a time."""

# The nodes of a local run share one virtualenv: two `pip install`s at once would write the
# same files. The `pip` command waits for the lock, then runs pip in the same process.
_PIP_SHIM = """\
#!{python}
import fcntl
import runpy
import sys

with open({lock!r}, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    sys.argv[0] = "pip"
    runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


def _write_pip_shim(path: Path) -> None:
    venv_dir = path.parent.parent
    path.write_text(
        _PIP_SHIM.format(python=venv_dir / "bin" / "python", lock=str(venv_dir / PIP_LOCK))
    )
    path.chmod(0o755)
