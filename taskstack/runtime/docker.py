"""The `docker` command lines that run a job's container on a node.

`docker_run()` turns a `JobSpec` and a node's place in the run into a `DockerRun`: the argv
(which names every variable but holds no value) and the values themselves. `DockerRun.script()`
renders both as a POSIX shell script that the SSH transport feeds to `sh -s` on stdin, so
variable values travel only inside the SSH channel and never appear on a command line, in
`ps`, or in a log. `docker_login()` does the same for a registry password
(`--password-stdin`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from taskstack.errors import ConfigError, RunError
from taskstack.runtime.spec import JobSpec, RegistryAuth

BASE_IMAGE = "dstackai/base"
# dstack's base image tag is `VERSION-{base|devel}-ubuntuUBUNTU` (dstack's
# `get_default_image`); `devel` carries nvcc. Values from dstack's `version.py`.
BASE_IMAGE_VERSION = "0.14"
BASE_IMAGE_UBUNTU = "24.04"

REPO_DIR = "/workflow"
"""Where the working directory appears in the container (dstack's legacy repo dir)."""
HOSTFILE_PATH = "/dstack/mpi/hostfile"
"""Where the MPI hostfile appears in the container (`DSTACK_MPI_HOSTFILE`)."""
RUN_LABEL = "taskstack.run"
RANK_LABEL = "taskstack.rank"

# dstack runs commands with /bin/sh for custom images and bash for its base image.
_SHELL = "/bin/sh"
# AWS EFA adapters appear as InfiniBand verbs devices; NCCL's EFA plugin opens them.
_EFA_DEVICE = "/dev/infiniband"
# ROCm needs the kernel fusion driver and the render nodes (AMD's ROCm Docker guide).
_AMD_DEVICES = ("/dev/kfd", "/dev/dri")
_RUN_PREFIX = ("docker", "run", "--detach")
_NAME_INVALID = re.compile(r"[^a-zA-Z0-9_.-]+")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_image(*, nvcc: bool = False) -> str:
    """dstack's base image for tasks that set `python` (or nothing) instead of `image`;
    `nvcc: true` picks the variant with the CUDA compiler."""
    variant = "devel" if nvcc else "base"
    return f"{BASE_IMAGE}:{BASE_IMAGE_VERSION}-{variant}-ubuntu{BASE_IMAGE_UBUNTU}"


def container_name(run_name: str, rank: int) -> str:
    """A container name Docker accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`) for a run's node."""
    stem = _NAME_INVALID.sub("-", run_name).lstrip("_.-") or "run"
    return f"{stem}-{rank}"


@dataclass(frozen=True)
class DockerRun:
    """A `docker run` for one node: `argv` names each variable (`-e NAME`), `env` holds the
    values. Never log `env`; `repr` leaves the values out."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    name: str

    @property
    def create_argv(self) -> tuple[str, ...]:
        """The same container as `docker create`: made, not started (see `script`)."""
        return ("docker", "create", *self.argv[len(_RUN_PREFIX) :])

    def exports(self) -> str:
        """Shell lines that export every value, to precede `argv` or `create_argv` in a
        script fed to `sh -s` (never on a command line).

        `docker run -e NAME` copies NAME from the docker client's own environment, which
        is how values reach the container without being written on a command line.
        """
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.env.items())

    def script(self, *, create: bool = False) -> str:
        """A shell script that exports the values and execs `argv` (or `create_argv`)."""
        argv = self.create_argv if create else self.argv
        return f"{self.exports()}exec {shlex.join(argv)}\n"


@dataclass(frozen=True)
class Placement:
    """Where a container runs: its node's rank, the run's size and the node's folders."""

    rank: int
    nodes: int
    workdir: str | None = None
    """The node's folder holding the working-directory snapshot, mounted at `REPO_DIR`."""
    hostfile: str | None = None
    """The node's MPI hostfile, mounted read-only at `HOSTFILE_PATH`."""
    efa: bool = False
    """The node has EFA adapters (`/dev/infiniband`); passed through on multi-node runs."""


def docker_run(spec: JobSpec, placement: Placement, env: Mapping[str, str]) -> DockerRun:
    """The detached `docker run` of `spec` on one node, with `env` (task env and system
    variables).

    Multi-node runs use host networking (ranks reach each other at their private IPs, as
    NCCL and MPI expect) and get the EFA devices; single-node runs publish the task's
    ports on the node's loopback only, where the SSH tunnel picks them up.
    """
    if spec.image is None:
        raise RunError("docker_run needs an image; resolve `python`/`nvcc` to default_image()")
    _check_env_names(env)
    name = container_name(spec.run_name, placement.rank)
    multinode = placement.nodes > 1

    # A terminal merges stdout and stderr at the source, in the order the task wrote them:
    # Docker logs the two pipes separately and `docker logs` can reorder them. dstack's
    # runner also runs jobs in a terminal.
    argv = [*_RUN_PREFIX, "--tty", "--name", name]
    argv += _labels(spec, placement)
    argv += _resources(spec, efa=multinode and placement.efa)
    argv += _network(spec, multinode=multinode)
    argv += _mounts(placement)
    argv += [option for variable in env for option in ("-e", variable)]
    argv += _process(spec)
    argv.append(spec.image)
    argv += _command(spec)
    return DockerRun(argv=tuple(argv), env=dict(env), name=name)


def docker_login(image: str, auth: RegistryAuth) -> tuple[str, bytes]:
    """The `docker login` command for the registry of `image`, and the stdin that carries
    the password (`--password-stdin`): the password is never on a command line."""
    argv = ["docker", "login", "--username", auth.username, "--password-stdin"]
    registry = registry_of(image)
    if registry is not None:
        argv.append(registry)
    return shlex.join(argv), auth.password.get_secret_value().encode()


def registry_of(image: str) -> str | None:
    """The registry host of an image reference; None for Docker Hub.

    As Docker parses references: the first path component is a registry only when it has
    a dot or a port, or is `localhost`.
    """
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def shell_command(commands: tuple[str, ...]) -> str:
    """The task's commands as one shell line that stops at the first failing command.

    Joined by `&&` as dstack does; a command ending in `&` is wrapped in braces so it
    still runs in the background instead of breaking the chain.
    """
    parts = []
    for command in commands:
        command = command.strip()
        parts.append(f"{{ {command} }}" if command.endswith("&") else command)
    return " && ".join(parts)


def docker_error(*outputs: str) -> str:
    """docker's reason for a failure, on one line: the last line it wrote (its first ones
    are progress, such as "Unable to find image ... locally"); the first output that has
    any is read."""
    for output in outputs:
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "no output"


def shell_path(shell: str) -> str:
    """The program behind a task's `shell`: `sh` and `bash` by their usual paths."""
    return {"sh": "/bin/sh", "bash": "/bin/bash"}.get(shell, shell)


def _labels(spec: JobSpec, placement: Placement) -> list[str]:
    return [
        "--label",
        f"{RUN_LABEL}={spec.run_name}",
        "--label",
        f"{RANK_LABEL}={placement.rank}",
    ]


def _resources(spec: JobSpec, *, efa: bool) -> list[str]:
    options: list[str] = []
    if spec.shm_size_gb is not None:
        options += ["--shm-size", _shm_size(spec.shm_size_gb)]
    if spec.gpus_per_node > 0:
        options += _gpu_options(spec.gpu_vendor)
    if spec.privileged:
        options.append("--privileged")
    if efa:
        # Only where the device exists: docker refuses to start with a missing device.
        options += ["--device", _EFA_DEVICE]
    return options


def _gpu_options(vendor: str | None) -> list[str]:
    if vendor is not None and vendor.lower() == "amd":
        devices = [option for device in _AMD_DEVICES for option in ("--device", device)]
        return [*devices, "--group-add", "video", "--security-opt", "seccomp=unconfined"]
    # NVIDIA is the default vendor for a GPU count without a name, as in dstack.
    return ["--gpus", "all"]


def _network(spec: JobSpec, *, multinode: bool) -> list[str]:
    if multinode:
        return ["--network", "host"]
    published = [
        option
        for mapping in spec.ports
        for option in ("-p", f"127.0.0.1:{mapping.container_port}:{mapping.container_port}")
    ]
    return published


def _mounts(placement: Placement) -> list[str]:
    options: list[str] = []
    if placement.workdir is not None:
        options += ["-v", f"{placement.workdir}:{REPO_DIR}"]
    if placement.hostfile is not None:
        options += ["-v", f"{placement.hostfile}:{HOSTFILE_PATH}:ro"]
    return options


def _process(spec: JobSpec) -> list[str]:
    options = ["-w", _working_dir(spec.working_dir)]
    if spec.user is not None:
        options += ["-u", spec.user]
    if spec.entrypoint is not None:
        # docker's --entrypoint takes one program; its arguments go after the image.
        options += ["--entrypoint", shlex.split(spec.entrypoint)[0]]
    else:
        options += ["--entrypoint", shell_path(spec.shell) if spec.shell else _SHELL]
    return options


def _command(spec: JobSpec) -> list[str]:
    if spec.entrypoint is not None:
        # dstack's docker-like form: entrypoint words, then the commands as its arguments.
        return [*shlex.split(spec.entrypoint)[1:], *spec.commands]
    return ["-c", shell_command(spec.commands)]


def _working_dir(working_dir: str | None) -> str:
    # A relative working_dir is relative to the repo dir, as in dstack before 0.20.
    if working_dir is None:
        return REPO_DIR
    if working_dir.startswith("/"):
        return working_dir
    return f"{REPO_DIR}/{working_dir}".rstrip("/").removesuffix("/.")


def _shm_size(gigabytes: float) -> str:
    megabytes = round(gigabytes * 1024)
    return f"{megabytes}m"


def _check_env_names(env: Mapping[str, str]) -> None:
    for name in env:
        if not _ENV_NAME.match(name):
            raise ConfigError(
                f"environment variable name `{name}` is not valid; use letters, digits and _"
            )
