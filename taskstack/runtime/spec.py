"""What the runtime is handed: the nodes of a run and the job to run on each of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Node(_Frozen):
    """One node of a run, as an engine reported it (or this machine, on the local backend)."""

    rank: int
    address: str
    """Where taskstack connects: the public address, or the private one (`public_ips: false`)."""
    private_ip: str
    """What the other nodes use (`DSTACK_NODES_IPS`, `DSTACK_MASTER_NODE_IP`)."""
    user: str = "root"
    port: int = 22
    key_path: Path | None = None
    instance_id: str | None = None


class RegistryAuth(_Frozen):
    """Credentials for a private image registry; the password never reaches a log."""

    username: str
    password: SecretStr


class PortMapping(_Frozen):
    """A task port forwarded from 127.0.0.1:`local_port` to the container's port on node 0."""

    local_port: int
    container_port: int


class JobSpec(_Frozen):
    """The task as every node runs it; per-node system variables are added by the runtime."""

    run_name: str
    image: str | None
    """None runs the commands on the host itself (the local backend without `image:`)."""
    commands: tuple[str, ...]
    entrypoint: str | None = None
    user: str | None = None
    working_dir: str | None = None
    env: dict[str, str] = {}
    shm_size_gb: float | None = None
    gpus_per_node: int = 0
    gpu_vendor: str | None = None
    privileged: bool = False
    ports: tuple[PortMapping, ...] = ()
    registry_auth: RegistryAuth | None = None
    shell: str | None = None
    """The task's `shell` (`sh`, `bash` or an absolute path); None: the runtime's default."""
    repo_id: str = ""
    """`DSTACK_REPO_ID`: names the working directory the run was applied from."""
    max_duration: float | None = None
    """Seconds the job may run before every node is stopped; None means no limit."""
