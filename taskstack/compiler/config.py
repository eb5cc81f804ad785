"""Task configs (`.dstack.yml`, `type: task`) as dstack 0.22.5 reads them.

    task = load_task(Path(".dstack.yml"))          # or parse_task(text, source="...")
    task.resources.gpu.count.min, task.nodes, task.env, task.ports, task.retry
    env = resolve_env(task, cli_env=["HF_TOKEN"], environ=os.environ)

Every field dstack accepts in a task is accepted here with the same meaning and defaults;
unknown keys and the fields of dev environments and services are errors. Values arrive
normalized: `env` is a mapping (None marks a variable to supply at apply time), `ports` are
`PortSpec`s, `retry` is a `RetrySpec` or None, `max_duration` is seconds or None (off),
`spot_policy` defaults to `on-demand`.

Every problem is one `ConfigError` line: ``FILE:LINE: `field`: what is wrong; the fix``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from taskstack.compiler.resources import ConfigProblem, ResourcesSpec
from taskstack.compiler.source import SHOWN_CHARS, YamlDocument, cut, load_yaml, shown
from taskstack.errors import ConfigError

PythonVersion = Literal["3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]
SpotPolicy = Literal["spot", "on-demand", "auto"]
RetryEvent = Literal["no-capacity", "interruption", "error"]
CreationPolicy = Literal["reuse", "reuse-or-create"]
StartupOrder = Literal["any", "master-first", "workers-first"]
StopCriteria = Literal["all-done", "master-done"]
# The backend names dstack knows; taskstack provisions only some of them, which offers decide.
BackendType = Literal[
    "amddevcloud", "aws", "azure", "cloudrift", "crusoe", "cudo", "datacrunch",
    "digitalocean", "dstack", "gcp", "hotaisle", "jarvislabs", "kubernetes", "lambda",
    "local", "nebius", "oci", "remote", "runpod", "tensordock", "vastai", "verda", "vultr",
]  # fmt: skip

ALL_RETRY_EVENTS: tuple[RetryEvent, ...] = ("no-capacity", "interruption", "error")
DEFAULT_RETRY_DURATION = 3600
MAX_TASK_FILE_BYTES = 1 << 20
"""A task file is a few kilobytes; past a mebibyte it is the wrong file or a hostile one."""
RUN_NAME_RULE = "^[a-z][a-z0-9-]{1,40}$"
"""dstack's rule for resource names, run names included (`validate_dstack_resource_name`)."""
PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")

_DEV_ENVIRONMENT_FIELDS = {"ide", "version", "init", "inactivity_duration"}
_SERVICE_FIELDS = {
    "port", "gateway", "strip_prefix", "model", "https", "auth", "scaling",
    "rate_limits", "probes", "replicas",
}  # fmt: skip
_RUN_NAME = re.compile(RUN_NAME_RULE)
_ENV_ITEM = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)(=.*)?$", re.DOTALL)
_PORT_TEXT = re.compile(r"^(?:(\d+|\*):)?(\d+)$")
_DURATION_TEXT = re.compile(r"(\d+) *([smhdw])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TRUE_WORDS = {"true", "yes", "on", "y", "t", "1"}
_FALSE_WORDS = {"false", "no", "off", "n", "f", "0"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- Durations -------------------------------------------------------------------------


def parse_duration(value: Any) -> int:
    """Seconds from `90`, `"90"`, `30m`, `2h`, `1d`, `1w` (lowercase units, as dstack)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigProblem(f"{shown(value)} is not a duration; write seconds or e.g. 30m, 2h, 1d")
    if isinstance(value, str):
        value = _duration_text(value)
    if value < 0:
        raise ConfigProblem(f"duration {value} is negative; write e.g. 30m, 2h, 1d")
    return int(value)


def _duration_text(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    # Matched as dstack matches: no leading blanks, lowercase units only (`2H` is an error).
    match = _DURATION_TEXT.match(text)
    if match is None:
        raise ConfigProblem(
            f"cannot read {shown(text)} as a duration; write seconds or a number with "
            "s, m, h, d or w, e.g. 30m, 2h, 1d"
        )
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _parse_off_duration(value: Any) -> int | Literal["off"] | None:
    # `off` and `false` switch the limit off; `true` and omission mean the default.
    if value == "off" or value is False:
        return "off"
    if value is None or value is True:
        return None
    return parse_duration(value)


Duration = Annotated[int, BeforeValidator(parse_duration)]


# --- Parts of a task -------------------------------------------------------------------


class PortSpec(_Model):
    """A port of the task: `container_port` reached at 127.0.0.1:`local_port`.

    `local_port` None (`"*:8080"`) means any free local port.
    """

    local_port: int | None = Field(
        default=None, gt=0, le=65535, description="The local port; None for any free port"
    )
    container_port: int = Field(gt=0, le=65535, description="The port the task listens on")

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigProblem(f"{shown(value)} is not a port; write 8080, '8080:80' or '*:8080'")
        if isinstance(value, int):
            return {"local_port": value, "container_port": value}
        if isinstance(value, str):
            return _parse_port_text(value)
        return value


def _parse_port_text(text: str) -> dict[str, Any]:
    match = _PORT_TEXT.match(text.strip())
    if match is None:
        # dstack crashes on "8080:" with a TypeError; here it is a plain config error.
        raise ConfigProblem(
            f"{shown(text)} is not a port mapping; write 8080, '8080:80' (local:container) "
            "or '*:8080' (any free local port)"
        )
    local, container = match.groups()
    if local is None:
        local = container
    return {"local_port": None if local == "*" else int(local), "container_port": int(container)}


class RetrySpec(_Model):
    """When and for how long a failed run is resubmitted."""

    on_events: list[RetryEvent] = Field(
        default_factory=lambda: list(ALL_RETRY_EVENTS),
        description="The events to retry on: `no-capacity`, `interruption`, `error`; "
        "all of them when omitted",
    )
    duration: Duration = Field(
        default=DEFAULT_RETRY_DURATION,
        description="How long to keep retrying, e.g. `4h` or `1d`; 1h when omitted",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        filled = {key: item for key, item in value.items() if item is not None}
        if filled.get("on_events") == []:
            raise ConfigProblem(
                "is empty; list events (no-capacity, interruption, error) "
                "or omit it to retry on all of them",
                path=("on_events",),
            )
        return filled


class RegistryAuth(_Model):
    """Credentials for pulling a private image; the password never appears in a repr or log."""

    username: str = Field(description="The registry user name")
    password: SecretStr = Field(description="The registry password or token")


class UtilizationPolicy(_Model):
    """Stop the run when a GPU stays under-used for a whole time window."""

    min_gpu_utilization: int = Field(ge=0, le=100, description="The minimum GPU use, percent")
    time_window: Duration = Field(description="The window to measure over, at least 5m")

    @field_validator("time_window")
    @classmethod
    def _at_least_five_minutes(cls, value: int) -> int:
        if value < 300:
            raise ConfigProblem(f"time_window {value}s is under 5m; use 5m or more")
        return value


class Schedule(_Model):
    """Start the run on a cron schedule (UTC)."""

    cron: list[str] = Field(description="One cron expression or a list of them")

    @field_validator("cron", mode="before")
    @classmethod
    def _check_cron(cls, value: Any) -> Any:
        crons = [value] if isinstance(value, str) else value
        if isinstance(crons, list) and not crons:
            raise ConfigProblem("no cron expression given; write one, e.g. '0 3 * * *'")
        for cron in crons if isinstance(crons, list) else []:
            if isinstance(cron, str) and len(cron.split()) != 5:
                raise ConfigProblem(
                    f"{shown(cron)} is not a cron expression; it has five fields, e.g. '0 3 * * *'"
                )
        return crons


class VolumeMount(_Model):
    """A network volume (or one of several, by name) mounted at `path`."""

    name: str | list[str] = Field(description="The volume name, or names to pick from")
    path: str = Field(description="The absolute path inside the container")


class InstanceMount(_Model):
    """A directory of the instance mounted at `path`."""

    instance_path: str = Field(description="The path on the instance")
    path: str = Field(description="The absolute path inside the container")
    optional: bool = Field(default=False, description="Skip the mount where it is unsupported")


def _parse_mount(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    source, sep, target = value.rpartition(":")
    if not sep or not source or not target:
        raise ConfigProblem(
            f"{shown(value)} is not a mount; write 'volume-name:/path' or '/host:/path'"
        )
    if source.startswith(("/", "~")):
        return {"instance_path": source, "path": target}
    return {"name": source, "path": target}


class RepoSpec(_Model):
    """A Git repo checked out into the run."""

    local_path: str | None = Field(default=None, description="A repo on this machine")
    url: str | None = Field(default=None, description="A remote repo URL")
    branch: str | None = Field(default=None, description="The branch to check out")
    hash: str | None = Field(default=None, description="The commit to check out")
    path: str = Field(default=".", description="Where the repo goes inside the container")
    if_exists: Literal["error", "skip"] = Field(
        default="error", description="What to do when `path` is not empty: `error` or `skip`"
    )

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _parse_repo_text(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RepoSpec:
        if (self.local_path is None) == (self.url is None):
            raise ConfigProblem("give exactly one of `local_path` and `url`")
        return self


def _parse_repo_text(text: str) -> dict[str, str]:
    # `git@host:org/repo.git` and `https://...` are URLs; their first colon is not a separator.
    is_url = "://" in text or re.match(r"^[^/:]+@[^:]+:", text) is not None
    head, sep, tail = text.rpartition(":")
    if sep and tail.startswith("/") and not tail.startswith("//") and head:
        location, path = head, tail
    else:
        location, path = text, "."
    return {"url" if is_url else "local_path": location, "path": path}


class FileMapping(_Model):
    """A local file or folder copied into the container."""

    local_path: str = Field(description="The path on this machine")
    path: str = Field(description="The path inside the container")

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            local, sep, path = value.partition(":")
            return {"local_path": local, "path": path if sep else local}
        return value


class FleetRef(_Model):
    """A fleet of another project."""

    project: str | None = Field(default=None, description="The project owning the fleet")
    name: str = Field(description="The fleet name")


class InstanceSelector(_Model):
    """An existing fleet instance to place the run on."""

    name: str | None = Field(default=None, description="The instance name")
    hostname: str | None = Field(default=None, description="The instance hostname or IP")
    fleet: str | FleetRef | None = Field(default=None, description="The fleet of `instance`")
    instance: int | None = Field(default=None, ge=0, description="The instance number")

    @model_validator(mode="before")
    @classmethod
    def _parse_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class NodeGroup(_Model):
    """One group of a heterogeneous multi-node task (`groups:`)."""

    name: str | None = Field(default=None, description="The group name; its index if omitted")
    nodes: int = Field(default=1, ge=1, description="The number of nodes in this group")
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="What each node of this group needs"
    )
    commands: list[str] = Field(default_factory=list, description="The commands of this group")
    ports: list[PortSpec] = Field(default_factory=list, description="The ports of this group")


# --- The task --------------------------------------------------------------------------


class TaskConfig(_Model):
    """A `type: task` configuration, normalized (see the module docstring)."""

    type: Literal["task"] = Field(default="task", description="Always `task`")
    name: str | None = Field(
        default=None, description="The run name; a random one is generated when omitted"
    )
    image: str | None = Field(default=None, description="The Docker image to run")
    user: str | None = Field(
        default=None, description="The user in the container, `name_or_id[:group]`"
    )
    privileged: bool = Field(default=False, description="Run the container privileged")
    entrypoint: str | None = Field(default=None, description="The Docker entrypoint")
    working_dir: str | None = Field(
        default=None, description="The absolute working directory inside the container"
    )
    home_dir: str = Field(default="/root", description="Deprecated by dstack; has no effect")
    registry_auth: RegistryAuth | None = Field(
        default=None, description="Credentials for pulling a private `image`"
    )
    python: PythonVersion | None = Field(
        default=None, description="The Python version of the default image; not with `image`"
    )
    nvcc: bool | None = Field(
        default=None, description="Use the default image with the CUDA compiler (nvcc)"
    )
    single_branch: bool | None = Field(
        default=None, description="Clone only the current branch of a remote repo"
    )
    env: dict[str, str | None] = Field(
        default_factory=dict,
        description="Environment variables, a mapping or a list of `K=V` and bare `K`; "
        "None marks a variable to supply at apply time (`-e K=V` or the local environment)",
    )
    shell: str | None = Field(
        default=None, description="The shell running `commands`: `sh`, `bash` or a path"
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="What each node needs"
    )
    priority: int | None = Field(
        default=None, ge=0, le=100, description="The run priority, 0 to 100"
    )
    volumes: list[VolumeMount | InstanceMount] = Field(
        default_factory=list, description="Volumes to mount, `name:/path` or `/host:/path`"
    )
    docker: bool | None = Field(
        default=None, description="Run Docker inside the container; not with `image`"
    )
    repos: list[RepoSpec] = Field(
        default_factory=list, description="Git repos to check out (at most one)"
    )
    files: list[FileMapping] = Field(
        default_factory=list, description="Local files to copy in, `local:container`"
    )
    dstack: bool = Field(
        default=False, description="Make the dstack server reachable inside the run"
    )
    setup: list[str] = Field(default_factory=list, description="Deprecated by dstack; no effect")
    commands: list[str] = Field(default_factory=list, description="The shell commands to run")
    ports: list[PortSpec] = Field(
        default_factory=list, description="Ports to forward: 8080, `L:C` or `*:C`"
    )
    nodes: int = Field(default=1, ge=1, description="The number of nodes")
    groups: list[NodeGroup] | None = Field(
        default=None, description="Node groups of a heterogeneous task; not with `nodes`"
    )
    backends: list[BackendType] | None = Field(
        default=None, description="The backends to consider, e.g. `[aws, gcp]`"
    )
    regions: list[str] | None = Field(default=None, description="The regions to consider")
    availability_zones: list[str] | None = Field(
        default=None, description="The availability zones to consider"
    )
    instance_types: list[str] | None = Field(
        default=None, description="The instance types to consider, e.g. `[p4d.24xlarge]`"
    )
    reservation: str | None = Field(
        default=None, description="A capacity reservation to provision from"
    )
    spot_policy: SpotPolicy = Field(
        default="on-demand", description="`spot`, `on-demand` or `auto`; `on-demand` by default"
    )
    retry: RetrySpec | None = Field(
        default=None, description="Resubmit the run on failure; `true` or an object"
    )
    max_duration: int | None = Field(
        default=None, description="Stop the run after this many seconds; None is off"
    )
    stop_duration: int | Literal["off"] | None = Field(
        default=None, description="How long a graceful stop may take; 5m when omitted"
    )
    max_price: float | None = Field(
        default=None, gt=0, description="The maximum price per instance-hour, in dollars"
    )
    creation_policy: CreationPolicy | None = Field(
        default=None, description="`reuse` or `reuse-or-create` existing instances"
    )
    idle_duration: int | None = Field(
        default=None, description="How long an idle instance is kept, seconds; -1 is off"
    )
    utilization_policy: UtilizationPolicy | None = Field(
        default=None, description="Stop the run when its GPUs stay idle"
    )
    startup_order: StartupOrder | None = Field(
        default=None, description="`any`, `master-first` or `workers-first`"
    )
    stop_criteria: StopCriteria | None = Field(
        default=None, description="`all-done` or `master-done`: when a multi-node run ends"
    )
    schedule: Schedule | None = Field(default=None, description="Start the run on a schedule")
    fleets: list[str | FleetRef] | None = Field(
        default=None, description="The fleets to reuse instances from"
    )
    instances: list[InstanceSelector] | None = Field(
        default=None, min_length=1, description="The fleet instances to place the run on"
    )
    tags: dict[str, str] | None = Field(
        default=None, description="Tags for the run and its cloud resources"
    )
    backend_options: list[dict[str, Any]] | None = Field(
        default=None, description="Backend-specific options, each with the backend's `type`"
    )

    @model_validator(mode="before")
    @classmethod
    def _check_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            _reject_foreign_field(key)
        if data.get("nodes") is not None and data.get("groups") is not None:
            raise ConfigProblem(
                "`nodes` and `groups` exclude each other; give node counts inside `groups`",
                path=("groups",),
            )
        # dstack takes `nodes: null` and `spot_policy: null` as "the default"; other nulls are
        # left for the field types to accept (optional fields) or reject (lists, flags).
        return {
            key: value
            for key, value in data.items()
            if value is not None or key not in ("nodes", "spot_policy")
        }

    @field_validator("name")
    @classmethod
    def _run_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_run_name(value)

    @field_validator("python", mode="before")
    @classmethod
    def _python_version(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("image"):
            raise ConfigProblem(
                "`image` and `python` exclude each other; drop `python` (the image has its own)"
            )
        if isinstance(value, float):
            # YAML reads `python: 3.10` as the float 3.1; dstack takes it as "3.10".
            value = "3.10" if str(value) == "3.1" else str(value)
        if isinstance(value, str) and value not in PYTHON_VERSIONS:
            raise ConfigProblem(
                f"Python {value} is not offered; use one of {', '.join(PYTHON_VERSIONS)}"
            )
        return value

    @field_validator("docker", mode="before")
    @classmethod
    def _docker_alone(cls, value: Any, info: ValidationInfo) -> Any:
        if value is True:
            for other in ("image", "python", "nvcc"):
                if info.data.get(other):
                    raise ConfigProblem(
                        f"`{other}` and `docker` exclude each other; drop one of them"
                    )
        return value

    @field_validator("working_dir")
    @classmethod
    def _absolute_working_dir(cls, value: str | None) -> str | None:
        if value is not None and not PurePosixPath(value).is_absolute():
            raise ConfigProblem(
                f"{shown(value)} is relative; give an absolute path in the container, "
                "e.g. /workflow"
            )
        return value

    @field_validator("user")
    @classmethod
    def _unix_user(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\s:]+(:[^\s:]+)?", value):
            raise ConfigProblem(f"{shown(value)} is not a user; write `name_or_id[:group]`")
        return value

    @field_validator("shell")
    @classmethod
    def _known_shell(cls, value: str | None) -> str | None:
        if value is not None and value not in ("sh", "bash") and not value.startswith("/"):
            raise ConfigProblem(f"{shown(value)} is not a shell; use sh, bash or an absolute path")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        return _parse_env(value)

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        mounts = []
        for index, item in enumerate(value):
            try:
                mounts.append(_parse_mount(item))
            except ConfigProblem as problem:
                raise ConfigProblem(str(problem), path=(index,)) from None
        return mounts

    @field_validator("repos")
    @classmethod
    def _one_repo(cls, value: list[RepoSpec]) -> list[RepoSpec]:
        if len(value) > 1:
            raise ConfigProblem("only one repo is supported; keep one entry")
        return value

    @field_validator("retry", mode="before")
    @classmethod
    def _retry(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _word_to_bool(value, field_name="retry")
        if isinstance(value, int) and value in (0, 1):
            value = bool(value)
        if value is True:
            return {}
        return None if value is False else value

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, value: Any) -> Any:
        duration = _parse_off_duration(value)
        return None if duration == "off" else duration

    @field_validator("stop_duration", mode="before")
    @classmethod
    def _stop_duration(cls, value: Any) -> Any:
        return _parse_off_duration(value)

    @field_validator("idle_duration", mode="before")
    @classmethod
    def _idle_duration(cls, value: Any) -> Any:
        # dstack stores an idle duration that is off as -1.
        if value in ("off", False, -1):
            return -1
        return None if value is None or value is True else parse_duration(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for key in value:
            if not isinstance(key, str) or not key.strip():
                raise ConfigProblem(f"tag name {shown(key)} is empty or not text; use a word")
        return {key: _scalar_text(item, path=(key,), echo=True) for key, item in value.items()}

    @field_validator("backend_options")
    @classmethod
    def _backend_options(cls, value: list[dict[str, Any]] | None) -> Any:
        seen: set[str] = set()
        for index, option in enumerate(value or []):
            backend = option.get("type")
            if not isinstance(backend, str):
                raise ConfigProblem("each entry needs the backend's `type`", path=(index,))
            if backend in seen:
                raise ConfigProblem(f"backend {shown(backend)} appears twice", path=(index,))
            seen.add(backend)
        return value

    @model_validator(mode="after")
    def _check_task(self) -> TaskConfig:
        if self.groups is None:
            if not self.commands and not self.image:
                raise ConfigProblem(
                    "a task needs `commands` or `image`; add `commands:` with what to run",
                    path=("commands",),
                )
            return self
        _check_groups(self)
        # `nodes` is the total over the groups, so runtimes read one field; the model is
        # frozen, hence the direct write while it is being built.
        object.__setattr__(self, "nodes", sum(group.nodes for group in self.groups))
        return self


def _check_run_name(name: str) -> str:
    if _RUN_NAME.fullmatch(name) is None:
        raise ConfigProblem(
            f"{shown(name)} is not a run name; use 2 to 41 lowercase letters, digits and "
            f"dashes, starting with a letter (dstack's rule {RUN_NAME_RULE}), e.g. train-llm"
        )
    return name


def _reject_foreign_field(key: Any) -> None:
    if key in _DEV_ENVIRONMENT_FIELDS:
        raise ConfigProblem("belongs to dev environments, not tasks; remove it", path=(key,))
    if key in _SERVICE_FIELDS:
        raise ConfigProblem("belongs to services, not tasks; remove it", path=(key,))


def _check_groups(task: TaskConfig) -> None:
    assert task.groups is not None
    if not task.groups:
        raise ConfigProblem("is empty; list at least one group", path=("groups",))
    for field_name in ("commands", "ports", "entrypoint"):
        if getattr(task, field_name):
            raise ConfigProblem(
                f"top-level `{field_name}` is not allowed with `groups`; "
                "set commands and ports inside each group",
                path=(field_name,),
            )
    names = [group.name or str(index) for index, group in enumerate(task.groups)]
    for index, group in enumerate(task.groups):
        if names.count(names[index]) > 1:
            raise ConfigProblem(
                f"group name {shown(names[index])} repeats", path=("groups", index)
            )
        if not group.commands and not task.image:
            raise ConfigProblem(
                "this group has no `commands` and the task no `image`; add commands",
                path=("groups", index),
            )


def _parse_env(value: Any) -> Any:
    """A list of `K=V` / `K` or a mapping -> {K: V or None}; duplicates are errors."""
    if isinstance(value, dict):
        return {key: _scalar_text(item, path=(key,), echo=False) for key, item in value.items()}
    if not isinstance(value, list):
        raise ConfigProblem(
            f"{type(value).__name__} {shown(value)} is not a list or a mapping; "
            "write `env: [K=V, K]` or `env: {K: V}`"
        )
    env: dict[str, str | None] = {}
    for index, item in enumerate(value):
        match = _ENV_ITEM.match(item) if isinstance(item, str) else None
        if match is None:
            raise ConfigProblem(
                f"{shown(item)} is not `NAME=value` or `NAME`; a name starts with a letter or _ "
                "and has only letters, digits and _",
                path=(index,),
            )
        name, assignment = match.group(1), match.group(2)
        if name in env:
            raise ConfigProblem(f"variable {name} is listed twice; keep one", path=(index,))
        env[name] = assignment[1:] if assignment is not None else None
    return env


def _scalar_text(value: Any, *, path: tuple[str | int, ...], echo: bool) -> str:
    # Numbers become text as in dstack (`PORT: 8080` is "8080"); YAML booleans are ambiguous.
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    # Env values may be secrets: `echo=False` keeps the value out of the message.
    what = shown(value) if echo else f"a {type(value).__name__}"
    raise ConfigProblem(f"{what} is not text; quote the value", path=path)


def _word_to_bool(word: str, *, field_name: str) -> bool:
    if word.strip().lower() in _TRUE_WORDS:
        return True
    if word.strip().lower() in _FALSE_WORDS:
        return False
    raise ConfigProblem(
        f"{shown(word)} is not true or false; write `{field_name}: true` or an object"
    )


# --- Public API ------------------------------------------------------------------------


def load_task(path: Path) -> TaskConfig:
    """Read and validate a task file; any problem is a one-line `ConfigError`."""
    data = _read_task_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file (byte {exc.start} is not UTF-8); "
            "pass the task's YAML file with `-f`, e.g. `-f .dstack.yml`"
        ) from exc
    return parse_task(text, source=str(path))


def refuse_what_is_not_carried_out(task: TaskConfig, config_path: Path) -> None:
    """Refuse the fields taskstack does not carry out yet, rather than run without them
    (`dstack apply` and `dstack plan` both call this).

    An instance mount marked `optional` is dstack's own "skip where unsupported", so it
    is skipped.

    Raises:
        ConfigError: the task asks for volumes, files or repos.
    """
    required = [m for m in task.volumes if not getattr(m, "optional", False)]
    if required:
        raise ConfigError(
            f"{config_path}: `volumes`: taskstack does not mount volumes yet ({required[0].path} "
            "would be missing); remove `volumes`, or mark instance mounts `optional: true`"
        )
    if task.files:
        raise ConfigError(
            f"{config_path}: `files`: taskstack does not copy files into runs yet; put "
            f"{task.files[0].local_path} inside the working directory (it is uploaded "
            "whole) and remove `files`"
        )
    if task.repos:
        raise ConfigError(
            f"{config_path}: `repos`: taskstack does not check out repos yet; it uploads "
            "the working directory: apply from a clone of the repo and remove `repos`"
        )


def validate_run_name(name: str) -> str:
    """Return `name` if dstack accepts it as a run name; else a `ConfigError` naming `--name`.

    Run names become folder names under the state folder and cloud resource names, so the
    rule (dstack's resource-name rule) also keeps them from leaving that folder.
    """
    try:
        return _check_run_name(name)
    except ConfigProblem as problem:
        raise ConfigError(f"`--name`: {problem}") from None


def _read_task_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ConfigError(
                f"{path}: is a directory; pass the task file inside it, "
                f"e.g. `-f {path / '.dstack.yml'}`"
            )
        if size > MAX_TASK_FILE_BYTES:
            raise ConfigError(
                f"{path}: {size} bytes is over the {MAX_TASK_FILE_BYTES >> 20} MiB a task "
                "file may have; pass the task's own YAML file with `-f`"
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file; pass the task file with `-f`") from exc
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the file ({exc.strerror}); check its permissions"
        ) from exc


def parse_task(text: str, *, source: str = "<string>") -> TaskConfig:
    """Validate task YAML text; `source` names the file in error messages."""
    document = load_yaml(text, source=source)
    _check_document(document)
    try:
        return TaskConfig.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, document=document)) from exc


def normalized_json(task: TaskConfig) -> dict[str, Any]:
    """The config as `dstack validate --json` prints it (see the conformance README)."""
    retry = None
    if task.retry is not None:
        retry = {"on_events": list(task.retry.on_events), "duration": task.retry.duration}
    return {
        "type": task.type,
        "name": task.name,
        "image": task.image,
        "python": task.python,
        "commands": list(task.commands),
        "working_dir": task.working_dir,
        "privileged": task.privileged,
        "backends": None if task.backends is None else list(task.backends),
        "regions": None if task.regions is None else list(task.regions),
        "max_price": task.max_price,
        "nodes": task.nodes,
        "env": dict(task.env),
        "ports": [port.model_dump() for port in task.ports],
        "spot_policy": task.spot_policy,
        "retry": retry,
        "max_duration": "off" if task.max_duration is None else task.max_duration,
        "resources": task.resources.model_dump(mode="json"),
    }


def resolve_env(
    task: TaskConfig, *, cli_env: list[str], environ: Mapping[str, str]
) -> dict[str, str]:
    """The task's env with `-e K=V` / `-e K` applied; every unset variable in one error.

    `-e K` takes K from `environ`; a variable the task lists without a value is taken from
    `environ` too when `-e` does not give it, as dstack does.
    """
    values: dict[str, str | None] = dict(task.env)
    for item in cli_env:
        name, value = _parse_cli_env(item, environ=environ)
        values[name] = value

    missing = [name for name, value in values.items() if value is None and name not in environ]
    if missing:
        names = ", ".join(missing)
        raise ConfigError(
            f"`env`: no value for {names}; pass `-e {missing[0]}=...` or export it first"
        )
    return {name: value if value is not None else environ[name] for name, value in values.items()}


def _parse_cli_env(item: str, *, environ: Mapping[str, str]) -> tuple[str, str | None]:
    match = _ENV_ITEM.match(item)
    if match is None:
        raise ConfigError(f"{_typed_env(item)}: {_env_name_problem(item)}")
    name, assignment = match.group(1), match.group(2)
    if assignment is not None:
        return name, assignment[1:]
    return name, environ.get(name)


def _typed_env(item: str) -> str:
    """The `-e` item as typed, its value masked: it may be a secret."""
    if not item:
        return "`-e ''`"
    name, sep, value = item.partition("=")
    if len(name) > SHOWN_CHARS:
        name = f"{name[: SHOWN_CHARS - 1]}…"
    return f"`-e {name}{'=***' if value else sep}`"


def _env_name_problem(item: str) -> str:
    name = item.partition("=")[0]
    rule = "a name starts with a letter or _ and has only letters, digits and _"
    if not name:
        return f"no variable name before `=`; write `-e NAME=value` ({rule})"
    return f"{shown(name)} is not a variable name; {rule}"


# --- Errors ----------------------------------------------------------------------------


def _check_document(document: YamlDocument) -> None:
    data, source = document.data, document.source
    if data is None:
        raise ConfigError(f"{source}:1: the file is empty; start it with `type: task`")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}:1: the file is not a mapping of fields; start with `type: task`"
        )
    kind = data.get("type")
    line = document.line_of(("type",))
    if kind is None:
        raise ConfigError(f"{source}:1: `type`: missing; add `type: task` as the first line")
    if kind in ("dev-environment", "service"):
        raise ConfigError(
            f"{source}:{line}: `type`: {kind} configurations are not supported, only tasks; "
            "use `type: task`"
        )
    if kind != "task":
        raise ConfigError(
            f"{source}:{line}: `type`: {shown(kind)} is not a task; use `type: task`"
        )


def _describe(exc: ValidationError, *, document: YamlDocument) -> str:
    """The first validation error as ``FILE:LINE: `field`: problem; fix``."""
    errors = exc.errors(include_url=False)
    path, message = _located_message(errors[0])
    yaml_path = _yaml_path(path, document=document)
    line = document.line_of(yaml_path)
    # A bad range bound fails twice (min and max): count only distinct further problems.
    others = {_located_message(error)[1] for error in errors[1:]} - {message}
    more = f" ({len(others)} more problem{'s' if len(others) > 1 else ''} after this)"
    field = cut(_field_name(yaml_path))
    return f"{document.source}:{line}: `{field}`: {message}{more if others else ''}"


def _located_message(error: Any) -> tuple[tuple[Any, ...], str]:
    path = tuple(error["loc"])
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, ConfigProblem):
        return (*path, *problem.path), str(problem)
    return path, _pydantic_message(error, path=path)


def _pydantic_message(error: Any, *, path: tuple[Any, ...]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_field_message(path)
    if kind == "missing":
        return "is required; add it"
    message = str(error["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    # Values under `env` and `registry_auth` may be secrets: never echo them.
    if not (path and path[0] in ("env", "registry_auth")):
        message = f"{message}, got {shown(error['input'])}"
    return f"{message}; {_fix_for(kind, value=error['input'])}"


def _fix_for(kind: str, *, value: Any) -> str:
    if kind == "list_type":
        # No `[...]` example: a console with markup would eat it.
        return (
            f"write a list, e.g. put `- {value}` under it"
            if isinstance(value, str)
            else "write a list"
        )
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "change the value"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "write a whole number"
    if kind in ("float_parsing", "float_type"):
        return "write a number"
    if kind in ("bool_parsing", "bool_type"):
        return "write true or false"
    if kind in ("string_type",):
        return "quote the value"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "write a mapping of fields"
    if kind in ("enum", "literal_error"):
        return "use one of those"
    if kind == "too_short":
        return "add an entry or remove the field"
    return "fix the value"


def _unknown_field_message(path: tuple[Any, ...]) -> str:
    name = path[-1] if path else "?"
    if len(path) == 1:
        close = difflib.get_close_matches(str(name), TaskConfig.model_fields, n=1)
        if close:
            return f"unknown field; did you mean `{close[0]}`?"
    return "unknown field; remove it or check the spelling"


def _yaml_path(path: tuple[Any, ...], *, document: YamlDocument) -> tuple[Any, ...]:
    """`path` without the names pydantic adds for union members (`str`, `FleetRef`, ...)."""
    kept: tuple[Any, ...] = ()
    for part in path:
        in_file = (*kept, part) in document.lines
        if in_file or isinstance(part, int) or _looks_like_field(part):
            kept = (*kept, part)
    return kept


def _looks_like_field(part: Any) -> bool:
    return (
        isinstance(part, str)
        and part.isidentifier()
        and part[0].islower()
        and part not in ("str", "int", "float", "bool", "dict", "list")
    )


def _field_name(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "task"
