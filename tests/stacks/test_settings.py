"""Settings: `config.yml`, environment overrides, errors with key and line, secrets masked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from taskstack.errors import ConfigError
from taskstack.home import taskstack_home
from taskstack.settings import backends_in_use, config_path, load_settings

FULL = """\
engine: terraform
backends:
  aws:
    regions: [us-east-1, us-west-2]
    profile: research
    secret_access_key: abc-very-secret
    vpc_cidr: 10.200.0.0/16
    subnet_cidr: 10.200.1.0/24
    ssh_cidr: 203.0.113.0/24
    public_ips: false
  gcp:
    project: my-project
    credentials_file: /keys/sa.json
state:
  pulumi:
    url: s3://state-bucket/taskstack
    passphrase: hunter2-passphrase
  terraform:
    backend: s3
    options:
      bucket: tf-state
      region: us-east-1
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_file_only_the_local_backend_is_in_use(tmp_path: Path) -> None:
    settings = load_settings(path=tmp_path / "absent.yml", environ={})

    assert settings.engine == "pulumi"
    assert settings.backends_in_use() == ["local"]
    assert settings.pulumi_backend_url() == f"file://{taskstack_home() / 'pulumi'}"
    assert settings.state.terraform.backend == "local"


def test_the_generated_passphrase_is_private_and_stays_the_same(tmp_path: Path) -> None:
    settings = load_settings(path=tmp_path / "absent.yml", environ={})

    first = settings.pulumi_passphrase().get_secret_value()
    second = settings.pulumi_passphrase().get_secret_value()

    assert first == second and len(first) >= 32
    mode = (taskstack_home() / "pulumi-passphrase").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_a_full_file_is_read(tmp_path: Path) -> None:
    settings = load_settings(path=_write(tmp_path, FULL), environ={})

    aws = settings.backends.aws
    assert settings.engine == "terraform"
    assert settings.backends_in_use() == ["aws", "gcp"]
    assert aws is not None and aws.regions == ["us-east-1", "us-west-2"]
    assert aws.public_ips is False and aws.subnet_cidr == "10.200.1.0/24"
    assert settings.pulumi_backend_url() == "s3://state-bucket/taskstack"
    assert settings.state.terraform.options == {"bucket": "tf-state", "region": "us-east-1"}


def test_secrets_never_show_in_a_repr(tmp_path: Path) -> None:
    settings = load_settings(path=_write(tmp_path, FULL), environ={})

    shown = repr(settings) + str(settings) + settings.model_dump_json()

    assert "abc-very-secret" not in shown
    assert "hunter2-passphrase" not in shown
    assert settings.pulumi_passphrase().get_secret_value() == "hunter2-passphrase"


def test_a_backend_named_without_options_is_in_use_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(path=_write(tmp_path, "backends:\n  aws:\n"), environ={})

    assert settings.backends_in_use() == ["aws"]
    assert settings.backends.aws is not None
    assert settings.backends.aws.vpc_cidr == "10.200.0.0/16"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "backends:\n  aws:\n    regoins: [us-east-1]\n",
            r"config.yml:3: unknown key `backends.aws.regoins`",
        ),
        ("engine: terraform\nstate:\n  kind: s3\n", r"config.yml:3: unknown key `state.kind`"),
        ("engine: chef\n", r"config.yml:1: `engine`: Input should be 'pulumi' or 'terraform'"),
        ("backends:\n  aws:\n    public_ips: maybe\n", r"config.yml:3: `backends.aws.public_ips`"),
        ("engine: [unclosed\n", r"config.yml:2: not valid YAML"),
        ("- aws\n", r"config.yml:1: the settings must be a mapping"),
    ],
)
def test_errors_name_the_file_the_line_and_the_key(tmp_path: Path, text: str, message: str):
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError, match=message):
        load_settings(path=path, environ={})


def test_environment_variables_override_the_file(tmp_path: Path) -> None:
    environ = {
        "TASKSTACK_ENGINE": "pulumi",
        "TASKSTACK_STATE_URL": "gs://ci-state",
        "TASKSTACK_STATE_PASSPHRASE": "from-ci",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "TASKSTACK_AWS_PUBLIC_IPS": "true",
        "TASKSTACK_AWS_SUBNET_ID": "subnet-1",
        "TASKSTACK_TF_BACKEND": "gcs",
        "TASKSTACK_TF_BACKEND_CONFIG": '{"bucket": "ci-tf"}',
        "GOOGLE_CLOUD_PROJECT": "ci-project",
    }

    settings = load_settings(path=_write(tmp_path, FULL), environ=environ)

    aws = settings.backends.aws
    assert settings.engine == "pulumi"
    assert settings.pulumi_backend_url() == "gs://ci-state"
    assert settings.pulumi_passphrase().get_secret_value() == "from-ci"
    assert aws is not None and aws.regions == ["eu-west-1"]
    assert aws.endpoint_url == "http://127.0.0.1:5000"
    assert aws.public_ips is True and aws.subnet_id == "subnet-1"
    assert aws.profile == "research"
    assert settings.state.terraform.backend == "gcs"
    assert settings.state.terraform.options == {"bucket": "ci-tf"}
    assert settings.backends.gcp is not None and settings.backends.gcp.project == "ci-project"


def test_ci_can_choose_backends_without_a_file(tmp_path: Path) -> None:
    environ = {"TASKSTACK_BACKENDS": "aws", "AWS_ACCESS_KEY_ID": "AKIA1", "AWS_PROFILE": "ci"}

    settings = load_settings(path=tmp_path / "absent.yml", environ=environ)

    assert settings.backends_in_use() == ["aws"]
    assert settings.backends.aws is not None and settings.backends.aws.access_key_id == "AKIA1"


def test_credentials_in_the_environment_do_not_turn_a_backend_on(tmp_path: Path) -> None:
    environ = {"AWS_PROFILE": "left-in-a-shell", "AWS_ACCESS_KEY_ID": "AKIA1"}

    settings = load_settings(path=tmp_path / "absent.yml", environ=environ)

    assert settings.backends_in_use() == ["local"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TASKSTACK_BACKENDS": "aws,ibm"}, "TASKSTACK_BACKENDS: unknown backend `ibm`"),
        ({"TASKSTACK_TF_BACKEND_CONFIG": "bucket=x"}, "TASKSTACK_TF_BACKEND_CONFIG: expected"),
        (
            {"TASKSTACK_BACKENDS": "aws", "TASKSTACK_AWS_PUBLIC_IPS": "sometimes"},
            "TASKSTACK_AWS_PUBLIC_IPS: expected true or false",
        ),
        ({"TASKSTACK_ENGINE": "chef"}, r"\(or the environment\): `engine`"),
    ],
)
def test_bad_environment_values_name_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(path=tmp_path / "absent.yml", environ=environ)


def test_backends_in_use_reads_the_file_in_the_state_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("TASKSTACK_BACKENDS", "TASKSTACK_ENGINE"):
        monkeypatch.delenv(variable, raising=False)
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text("backends:\n  azure:\n    subscription_id: sub-1\n")

    assert backends_in_use() == ["azure"]


def test_the_aws_image_and_its_user_come_from_the_environment(tmp_path: Path) -> None:
    from taskstack.provision import MachineImage, machine_image

    environ = {
        "TASKSTACK_BACKENDS": "aws",
        "TASKSTACK_AWS_IMAGE": "ami-0123",
        "TASKSTACK_AWS_SSH_USER": "ec2-user",
    }

    settings = load_settings(path=tmp_path / "absent.yml", environ=environ)

    assert machine_image(settings, "aws") == MachineImage(image_id="ami-0123", ssh_user="ec2-user")
    assert machine_image(settings, "gcp") is None
    plain = load_settings(path=tmp_path / "absent.yml", environ={"TASKSTACK_BACKENDS": "aws"})
    assert machine_image(plain, "aws") is None


def test_the_network_plan_comes_from_the_aws_settings_only(tmp_path: Path) -> None:
    settings = load_settings(path=_write(tmp_path, FULL), environ={})

    network = settings.network_plan("aws")

    assert network is not None
    assert (network.subnet_cidr, network.ssh_cidr, network.public_ips) == (
        "10.200.1.0/24",
        "203.0.113.0/24",
        False,
    )
    assert settings.network_plan("gcp") is None


def test_how_nodes_are_watched_comes_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = _write(tmp_path, "nodes:\n  lost_after: 20\n  heartbeat_grace: 900\n")

    from_file = load_settings(path=path, environ={}).nodes
    overridden = load_settings(path=path, environ={"TASKSTACK_HEARTBEAT_GRACE": "300"}).nodes
    defaults = load_settings(path=tmp_path / "absent.yml", environ={}).nodes

    assert (from_file.lost_after, from_file.heartbeat_grace) == (20.0, 900)
    assert (overridden.lost_after, overridden.heartbeat_grace) == (20.0, 300)
    assert (defaults.lost_after, defaults.heartbeat_grace) == (60.0, 600)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TASKSTACK_HEARTBEAT_GRACE": "30"}, r"`nodes.heartbeat_grace`: .*120"),
        ({"TASKSTACK_NODE_LOST_AFTER": "soon"}, r"`nodes.lost_after`: .*number"),
    ],
)
def test_a_grace_the_heartbeat_cannot_keep_is_refused(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(path=tmp_path / "absent.yml", environ=environ)

    assert "\n" not in str(caught.value)


def test_the_settings_grace_reaches_the_plan_and_the_nodes_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskstack.stacks.cloudinit import user_data
    from taskstack.stacks.preview import preview_task

    monkeypatch.setenv("TASKSTACK_HEARTBEAT_GRACE", "900")
    task = tmp_path / "task.dstack.yml"
    task.write_text("type: task\nname: graced\ncommands: [nvidia-smi]\nresources: {gpu: T4}\n")

    plan = preview_task(task, backend="aws").plan

    assert plan.heartbeat_grace == 900
    assert "-gt 900" in user_data(plan)


@pytest.mark.parametrize("kind", ["binary", "directory"])
def test_a_settings_file_that_is_no_text_is_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "config.yml"
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.mkdir()

    with pytest.raises(ConfigError, match=r"config.yml: .*or remove it$") as caught:
        load_settings(path=path, environ={})

    assert "\n" not in str(caught.value)
