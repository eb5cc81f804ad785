"""Settings: which clouds are in use, with what credentials, which engine, and where state lives.

They come from `config.yml` in the state folder (`~/.taskstack/config.yml`, or under
`$TASKSTACK_HOME`). Environment variables override the file, so a CI job can run with no file
at all:

    TASKSTACK_BACKENDS          comma-separated backends in use, e.g. `aws` or `aws,gcp`
    TASKSTACK_ENGINE            `pulumi` or `terraform`
    TASKSTACK_STATE_URL         Pulumi backend URL (`file://`, `s3://`, `gs://`, `azblob://`)
    TASKSTACK_STATE_PASSPHRASE  passphrase of Pulumi's secrets provider
                                (`PULUMI_CONFIG_PASSPHRASE` is read too)
    TASKSTACK_TF_BACKEND        Terraform backend type: `local`, `s3`, `gcs`, `azurerm`
    TASKSTACK_TF_BACKEND_CONFIG the Terraform backend block's settings, as a JSON object
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
    AWS_REGION (or AWS_DEFAULT_REGION), AWS_ENDPOINT_URL
    TASKSTACK_AWS_VPC_ID, TASKSTACK_AWS_SUBNET_ID, TASKSTACK_AWS_VPC_CIDR,
    TASKSTACK_AWS_SUBNET_CIDR, TASKSTACK_AWS_SSH_CIDR, TASKSTACK_AWS_PUBLIC_IPS,
    TASKSTACK_AWS_IMAGE, TASKSTACK_AWS_SSH_USER
    GOOGLE_CLOUD_PROJECT, GOOGLE_APPLICATION_CREDENTIALS
    AZURE_SUBSCRIPTION_ID
    TASKSTACK_NODE_LOST_AFTER   seconds a running cloud node may stay unreachable over SSH
                                before it counts as lost (retry's `interruption`)
    TASKSTACK_HEARTBEAT_GRACE   seconds without `dstack apply`'s heartbeat before a cloud
                                node ends itself (the dead man's switch)

An environment variable fills a value of a backend that is in use; it never turns a backend
on by itself (an `AWS_PROFILE` left in a shell must not send runs to AWS). Secrets are
`SecretStr`: they never reach a `repr`, a log or a preview.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from taskstack.errors import ConfigError
from taskstack.home import taskstack_home

if TYPE_CHECKING:
    from taskstack.compiler.plan import NetworkPlan

BackendName = Literal["aws", "gcp", "azure"]
EngineName = Literal["pulumi", "terraform"]

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AwsSettings(_Settings):
    """The AWS backend: where runs go and how taskstack signs in."""

    regions: list[str] = Field(default=[], description="Regions offers may use; empty = all")
    profile: str | None = Field(default=None, description="A profile of ~/.aws/config")
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    vpc_id: str | None = Field(default=None, description="Existing VPC; None creates one per run")
    subnet_id: str | None = Field(default=None, description="Existing subnet in `vpc_id`")
    vpc_cidr: str = Field(default="10.200.0.0/16", description="CIDR of a VPC a run creates")
    subnet_cidr: str = Field(default="10.200.0.0/24", description="CIDR of its subnet")
    ssh_cidr: str = Field(default="0.0.0.0/0", description="Who may reach the nodes over SSH")
    public_ips: bool = Field(default=True, description="False: connect to the private IPs")
    image: str | None = Field(
        default=None, description="An AMI to boot instead of the looked-up Ubuntu image"
    )
    ssh_user: str | None = Field(
        default=None, description="The login user of `image` (e.g. `ec2-user`); `ubuntu` if unset"
    )
    endpoint_url: str | None = Field(
        default=None,
        description="One endpoint for every AWS API (an emulator such as moto); the engines "
        "then skip the account and metadata checks",
    )


class GcpSettings(_Settings):
    """The GCP backend."""

    project: str | None = None
    credentials_file: Path | None = Field(default=None, description="Service account JSON key")
    regions: list[str] = []


class AzureSettings(_Settings):
    """The Azure backend."""

    subscription_id: str | None = None
    regions: list[str] = []


class BackendsSettings(_Settings):
    """The clouds in use; a cloud absent here is not used."""

    aws: AwsSettings | None = None
    gcp: GcpSettings | None = None
    azure: AzureSettings | None = None


class PulumiStateSettings(_Settings):
    """Where the Pulumi engine keeps stacks, and the passphrase of their secrets."""

    url: str | None = Field(
        default=None, description="`file://`, `s3://`, `gs://` or `azblob://`; None = local"
    )
    passphrase: SecretStr | None = Field(
        default=None, description="None = a generated one kept in the state folder"
    )


class TerraformStateSettings(_Settings):
    """The Terraform backend block every run's working directory is initialised with."""

    backend: Literal["local", "s3", "gcs", "azurerm"] = "local"
    options: dict[str, Any] = Field(
        default={}, description="The backend block's arguments, e.g. `bucket`, `region`"
    )


class StateSettings(_Settings):
    """State backends of both engines."""

    pulumi: PulumiStateSettings = PulumiStateSettings()
    terraform: TerraformStateSettings = TerraformStateSettings()


class NodesSettings(_Settings):
    """How `dstack apply` watches a run's cloud nodes, and they watch it."""

    lost_after: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a running node may stay unreachable over SSH before it is lost",
    )
    heartbeat_grace: int = Field(
        default=600,
        ge=120,
        description="Seconds without a heartbeat before a node ends itself; the apply beats "
        "every 30 s, so less than 120 would end nodes that a slow network only delayed",
    )


class Settings(_Settings):
    """Everything `config.yml` holds, after environment overrides."""

    engine: EngineName = "pulumi"
    backends: BackendsSettings = BackendsSettings()
    state: StateSettings = StateSettings()
    nodes: NodesSettings = NodesSettings()

    def backends_in_use(self) -> list[str]:
        """Clouds configured, in a fixed order; `["local"]` when none is."""
        names = [name for name in ("aws", "gcp", "azure") if getattr(self.backends, name)]
        return names or ["local"]

    def network_plan(self, backend: str) -> NetworkPlan | None:
        """The network a run on `backend` uses; None where the cloud's defaults apply.

        Only AWS has network settings today; the preview and the provisioner both ask here.
        """
        from taskstack.compiler.plan import NetworkPlan

        aws = self.backends.aws
        if backend != "aws" or aws is None:
            return None
        return NetworkPlan(
            vpc_id=aws.vpc_id,
            subnet_id=aws.subnet_id,
            vpc_cidr=aws.vpc_cidr,
            subnet_cidr=aws.subnet_cidr,
            ssh_cidr=aws.ssh_cidr,
            public_ips=aws.public_ips,
        )

    def cloud_environment(self) -> dict[str, str]:
        """Credentials of the backends in use as the variables engines read; for a child
        process's environment only, never a file or an argument."""
        env: dict[str, str] = {}
        aws = self.backends.aws
        if aws is not None:
            pairs = {
                "AWS_ACCESS_KEY_ID": aws.access_key_id,
                "AWS_SECRET_ACCESS_KEY": _reveal(aws.secret_access_key),
                "AWS_SESSION_TOKEN": _reveal(aws.session_token),
                "AWS_PROFILE": aws.profile,
            }
            env.update({key: value for key, value in pairs.items() if value})
        gcp = self.backends.gcp
        if gcp is not None and gcp.credentials_file:
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(gcp.credentials_file)
        return env

    def pulumi_backend_url(self) -> str:
        """The Pulumi backend URL: the configured one, or a folder in the state folder."""
        if self.state.pulumi.url:
            return self.state.pulumi.url
        folder = taskstack_home() / "pulumi"
        folder.mkdir(parents=True, exist_ok=True)
        return f"file://{folder}"

    def pulumi_passphrase(self) -> SecretStr:
        """The secrets passphrase: the configured one, or one generated once and kept (0600)."""
        if self.state.pulumi.passphrase is not None:
            return self.state.pulumi.passphrase
        return SecretStr(_local_passphrase())


def config_path() -> Path:
    """Where the settings file lives."""
    return taskstack_home() / "config.yml"


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read `config.yml` (absent means defaults) and apply environment overrides.

    Raises:
        ConfigError: the file is not YAML, has an unknown key or a bad value; the message
            names the key and the file's line.
    """
    path = path or config_path()
    environ = os.environ if environ is None else environ

    text = _read_settings_file(path)
    raw, lines = _parse_yaml(text, path=path)
    merged = _apply_environment(raw, environ=environ, path=path)

    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(exc, lines=lines, path=path) from None


def backends_in_use() -> list[str]:
    """The clouds the current settings use; `["local"]` with no cloud configured."""
    return load_settings().backends_in_use()


# --- YAML with line numbers ----------------------------------------------------------------


def _read_settings_file(path: Path) -> str:
    """The settings file's text; "" when there is none."""
    if not path.exists():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file; write the settings as YAML there, or remove it"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot be read ({exc.strerror or exc}); make it a readable YAML file, "
            "or remove it"
        ) from exc


def _parse_yaml(text: str, *, path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The document as plain data, and the line of every mapping key by its key path."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None

    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the settings must be a mapping of keys to values")
    lines: dict[tuple[str, ...], int] = {}
    _collect_lines(node, prefix=(), lines=lines)
    return data, lines


def _collect_lines(node: Any, *, prefix: tuple[str, ...], lines: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*prefix, str(key_node.value))
            lines[key_path] = key_node.start_mark.line + 1
            _collect_lines(value_node, prefix=key_path, lines=lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*prefix, str(index))] = item.start_mark.line + 1
            _collect_lines(item, prefix=(*prefix, str(index)), lines=lines)


def _config_error(
    exc: ValidationError, *, lines: dict[tuple[str, ...], int], path: Path
) -> ConfigError:
    """The first problem as one line: file, line, dotted key, what is wrong."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc)

    # The line of the key itself, else of the closest parent the file has.
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"{path}:{line}" if line else f"{path} (or the environment)"
    if error["type"] == "extra_forbidden":
        return ConfigError(f"{where}: unknown key `{key}`; remove it or check its spelling")
    return ConfigError(f"{where}: `{key}`: {error['msg']}")


# --- Environment overrides -----------------------------------------------------------------


def _apply_environment(
    raw: dict[str, Any], *, environ: Mapping[str, str], path: Path
) -> dict[str, Any]:
    """The file's data with environment variables laid over it."""
    data = json.loads(json.dumps(raw))  # a deep copy of plain YAML data
    _set_if(data, ("engine",), environ.get("TASKSTACK_ENGINE"))
    _enable_backends(data, environ.get("TASKSTACK_BACKENDS"))
    _state_from_env(data, environ=environ)
    _set_if(data, ("nodes", "lost_after"), environ.get("TASKSTACK_NODE_LOST_AFTER"))
    _set_if(data, ("nodes", "heartbeat_grace"), environ.get("TASKSTACK_HEARTBEAT_GRACE"))

    backends = data.get("backends") or {}
    for name in ("aws", "gcp", "azure"):
        # `aws:` with nothing under it means "in use, with defaults".
        if name in backends and backends[name] is None:
            backends[name] = {}
    if isinstance(backends.get("aws"), dict):
        _aws_from_env(backends["aws"], environ=environ, path=path)
    if isinstance(backends.get("gcp"), dict):
        _set_if(backends["gcp"], ("project",), environ.get("GOOGLE_CLOUD_PROJECT"))
        creds = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        _set_if(backends["gcp"], ("credentials_file",), creds)
    if isinstance(backends.get("azure"), dict):
        sub = environ.get("AZURE_SUBSCRIPTION_ID")
        _set_if(backends["azure"], ("subscription_id",), sub)
    return data


def _enable_backends(data: dict[str, Any], value: str | None) -> None:
    """`TASKSTACK_BACKENDS` decides which clouds are in use, keeping the file's options."""
    if value is None:
        return
    wanted = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in ("aws", "gcp", "azure", "local")]
    if unknown:
        raise ConfigError(
            f"TASKSTACK_BACKENDS: unknown backend `{unknown[0]}`; use aws, gcp, azure or local"
        )
    current = data.get("backends") or {}
    data["backends"] = {name: current.get(name) or {} for name in wanted if name != "local"}


def _state_from_env(data: dict[str, Any], *, environ: Mapping[str, str]) -> None:
    _set_if(data, ("state", "pulumi", "url"), environ.get("TASKSTACK_STATE_URL"))
    passphrase = environ.get("TASKSTACK_STATE_PASSPHRASE") or environ.get(
        "PULUMI_CONFIG_PASSPHRASE"
    )
    _set_if(data, ("state", "pulumi", "passphrase"), passphrase)
    _set_if(data, ("state", "terraform", "backend"), environ.get("TASKSTACK_TF_BACKEND"))

    options = environ.get("TASKSTACK_TF_BACKEND_CONFIG")
    if options is None:
        return
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(
            'TASKSTACK_TF_BACKEND_CONFIG: expected a JSON object, e.g. {"bucket": "tf-state"}'
        )
    _set_if(data, ("state", "terraform", "options"), parsed)


_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "access_key_id",
    "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    "AWS_SESSION_TOKEN": "session_token",
    "AWS_PROFILE": "profile",
    "AWS_ENDPOINT_URL": "endpoint_url",
    "TASKSTACK_AWS_VPC_ID": "vpc_id",
    "TASKSTACK_AWS_SUBNET_ID": "subnet_id",
    "TASKSTACK_AWS_VPC_CIDR": "vpc_cidr",
    "TASKSTACK_AWS_SUBNET_CIDR": "subnet_cidr",
    "TASKSTACK_AWS_SSH_CIDR": "ssh_cidr",
    "TASKSTACK_AWS_IMAGE": "image",
    "TASKSTACK_AWS_SSH_USER": "ssh_user",
}


def _aws_from_env(aws: dict[str, Any], *, environ: Mapping[str, str], path: Path) -> None:
    for variable, key in _AWS_ENV.items():
        _set_if(aws, (key,), environ.get(variable))

    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        aws["regions"] = [region]

    public_ips = environ.get("TASKSTACK_AWS_PUBLIC_IPS")
    if public_ips is not None:
        if public_ips.lower() not in _BOOL_WORDS:
            raise ConfigError(
                f"TASKSTACK_AWS_PUBLIC_IPS: expected true or false, not {public_ips!r}"
            )
        aws["public_ips"] = _BOOL_WORDS[public_ips.lower()]


def _set_if(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    """Set a nested key when the environment gave a value, creating parents as needed."""
    if value is None or value == "":
        return
    for key in keys[:-1]:
        child = data.get(key)
        if not isinstance(child, dict):
            child = data[key] = {}
        data = child
    data[keys[-1]] = value


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _local_passphrase() -> str:
    """A passphrase for the local file backend, made once so its stacks stay readable."""
    path = taskstack_home() / "pulumi-passphrase"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()

    path.parent.mkdir(parents=True, exist_ok=True)
    passphrase = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(passphrase + "\n")
    return passphrase


# --- `dstack config check` -----------------------------------------------------------------


class CheckEntry(BaseModel):
    """One line of `dstack config check`: a setting, its shown (masked) value, what is missing."""

    model_config = ConfigDict(frozen=True)

    key: str
    value: str
    missing: str | None = None


def check_settings(path: Path | None = None) -> list[CheckEntry]:
    """What is set and what is missing, secrets masked; raises ConfigError on a bad file."""
    path = path or config_path()
    settings = load_settings(path)
    file_state = str(path) if path.exists() else f"{path} (absent: defaults and environment)"

    entries = [
        CheckEntry(key="file", value=file_state),
        _engine_entry(settings.engine, needed=settings.backends_in_use() != ["local"]),
        CheckEntry(key="backends", value=", ".join(settings.backends_in_use())),
    ]
    if settings.backends.aws is not None:
        entries += _aws_entries(settings.backends.aws)
    if settings.backends.gcp is not None:
        entries += _gcp_entries(settings.backends.gcp)
    if settings.backends.azure is not None:
        azure = settings.backends.azure
        missing = (
            None if azure.subscription_id else "set `subscription_id` or AZURE_SUBSCRIPTION_ID"
        )
        entries.append(
            CheckEntry(
                key="azure.subscription_id", value=azure.subscription_id or "", missing=missing
            )
        )
    nodes = settings.nodes
    entries += [
        CheckEntry(key="nodes.lost_after", value=f"{nodes.lost_after:g} s"),
        CheckEntry(key="nodes.heartbeat_grace", value=f"{nodes.heartbeat_grace} s"),
    ]
    return entries + _state_entries(settings)


def _engine_entry(engine: str, *, needed: bool) -> CheckEntry:
    import shutil

    if shutil.which(engine) is not None:
        return CheckEntry(key="engine", value=f"{engine} (CLI found)")
    if not needed:  # the local backend makes no stack
        return CheckEntry(key="engine", value=f"{engine} (CLI not found; no cloud in use)")
    other = "terraform" if engine == "pulumi" else "pulumi"
    return CheckEntry(
        key="engine",
        value=engine,
        missing=f"the {engine} CLI is not on PATH: install it or set `engine: {other}`",
    )


def _aws_entries(aws: AwsSettings) -> list[CheckEntry]:
    if aws.access_key_id and aws.secret_access_key is None:
        credentials, missing = _mask_id(aws.access_key_id), "AWS_SECRET_ACCESS_KEY is missing"
    elif aws.access_key_id:
        credentials, missing = f"key {_mask_id(aws.access_key_id)} + secret ****", None
    elif aws.profile:
        credentials, missing = f"profile {aws.profile}", None
    else:
        credentials, missing = "AWS default chain (~/.aws, instance role)", None
    network = (
        f"existing subnet {aws.subnet_id}"
        if aws.subnet_id
        else f"a VPC per run ({aws.vpc_cidr}, subnet {aws.subnet_cidr})"
    )
    entries = [
        CheckEntry(key="aws.regions", value=", ".join(aws.regions) or "all"),
        CheckEntry(key="aws.credentials", value=credentials, missing=missing),
        CheckEntry(key="aws.network", value=network),
        CheckEntry(key="aws.ssh_cidr", value=aws.ssh_cidr),
        CheckEntry(key="aws.public_ips", value=str(aws.public_ips).lower()),
    ]
    if aws.endpoint_url:
        entries.append(CheckEntry(key="aws.endpoint_url", value=aws.endpoint_url))
    return entries


def _gcp_entries(gcp: GcpSettings) -> list[CheckEntry]:
    project_missing = None if gcp.project else "set `project` or GOOGLE_CLOUD_PROJECT"
    creds = gcp.credentials_file
    creds_missing = (
        f"{creds} does not exist" if creds and not creds.expanduser().exists() else None
    )
    return [
        CheckEntry(key="gcp.project", value=gcp.project or "", missing=project_missing),
        CheckEntry(
            key="gcp.credentials_file",
            value=str(creds) if creds else "application default credentials",
            missing=creds_missing,
        ),
        CheckEntry(key="gcp.regions", value=", ".join(gcp.regions) or "all"),
    ]


_SECRET_OPTION_WORDS = ("key", "secret", "token", "password", "sas", "credential", "certificate")


def _is_secret_option(name: str) -> bool:
    """Whether a state backend option (or URL parameter) may hold a secret.

    `key` alone is where S3 and azurerm keep the state object, and `..._id` names a key
    rather than holding one: both are shown.
    """
    lowered = name.lower()
    if lowered == "key" or lowered.endswith("_id"):
        return False
    return any(word in lowered for word in _SECRET_OPTION_WORDS)


def _masked_url(url: str) -> str:
    """`url` with a password in it, and the values of secret-looking parameters, masked."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":****@", 1)
    given = parse_qsl(parts.query, keep_blank_values=True)
    query = [(name, "****" if _is_secret_option(name) else value) for name, value in given]
    if (netloc, query) == (parts.netloc, given):
        return url  # nothing to mask: shown as given
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/:")))


def _state_entries(settings: Settings) -> list[CheckEntry]:
    pulumi = settings.state.pulumi
    url = (
        _masked_url(pulumi.url)
        if pulumi.url
        else f"file://{taskstack_home() / 'pulumi'} (default)"
    )
    shared = pulumi.url is not None and not pulumi.url.startswith("file://")
    if pulumi.passphrase is not None:
        passphrase, missing = "****", None
    elif shared:
        passphrase = ""
        missing = "a shared state backend needs TASKSTACK_STATE_PASSPHRASE on every machine"
    else:
        passphrase, missing = f"generated, kept in {taskstack_home() / 'pulumi-passphrase'}", None

    terraform = settings.state.terraform
    options = {
        key: "****" if _is_secret_option(key) else value
        for key, value in terraform.options.items()
    }
    shown = terraform.backend + (f" {json.dumps(options, sort_keys=True)}" if options else "")
    return [
        CheckEntry(key="state.pulumi.url", value=url, missing=_pulumi_url_problem(pulumi.url)),
        CheckEntry(key="state.pulumi.passphrase", value=passphrase, missing=missing),
        CheckEntry(
            key="state.terraform", value=shown, missing=_terraform_state_problem(terraform)
        ),
    ]


_PULUMI_URL_SCHEMES = ("file", "s3", "gs", "azblob", "http", "https")
_TERRAFORM_STATE_NEEDS = {
    "s3": ("bucket",),
    "gcs": ("bucket",),
    "azurerm": ("storage_account_name", "container_name"),
}
_TERRAFORM_LOCAL_OPTIONS = ("path", "workspace_dir")


def _pulumi_url_problem(url: str | None) -> str | None:
    from urllib.parse import urlsplit

    if url is None:
        return None  # the default, under the state folder
    parts = urlsplit(url)
    if parts.scheme not in _PULUMI_URL_SCHEMES or not (parts.netloc or parts.path):
        schemes = ", ".join(f"{scheme}://" for scheme in _PULUMI_URL_SCHEMES[:4])
        return f"not a Pulumi state URL; give {schemes} or a Pulumi Cloud https:// URL"
    return None


def _terraform_state_problem(state: TerraformStateSettings) -> str | None:
    if state.backend == "local":
        extra = sorted(set(state.options) - set(_TERRAFORM_LOCAL_OPTIONS))
        if extra:
            return (
                f"the local backend takes only `path` and `workspace_dir`; remove "
                f"`{extra[0]}`, or choose s3, gcs or azurerm"
            )
        return None
    lacking = [
        name for name in _TERRAFORM_STATE_NEEDS[state.backend] if not state.options.get(name)
    ]
    if lacking:
        return f"the {state.backend} backend needs `{lacking[0]}` in `state.terraform.options`"
    return None


def _mask_id(value: str) -> str:
    return value[:4] + "****" if len(value) > 8 else "****"
