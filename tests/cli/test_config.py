"""`dstack config check`: what is set, what is missing, secrets masked, bad files in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import taskstack.cli.config  # noqa: F401  (registers the command)
from taskstack.cli.app import app
from taskstack.settings import config_path

runner = CliRunner()
WIDE = {"COLUMNS": "200"}

_SETTINGS_VARIABLES = (
    "TASKSTACK_BACKENDS",
    "TASKSTACK_ENGINE",
    "TASKSTACK_STATE_URL",
    "TASKSTACK_STATE_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_PROFILE",
    "GOOGLE_CLOUD_PROJECT",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in _SETTINGS_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def _write(text: str) -> None:
    config_path().parent.mkdir(parents=True, exist_ok=True)
    config_path().write_text(text, encoding="utf-8")


def test_complete_settings_are_shown_with_secrets_masked() -> None:
    _write(
        "engine: terraform\n"
        "backends:\n"
        "  aws:\n"
        "    regions: [us-east-1]\n"
        "    access_key_id: AKIAEXAMPLE12345\n"
        "    secret_access_key: wJalrXUtnFEMI-very-secret\n"
        "state:\n"
        "  pulumi:\n"
        "    url: s3://state/taskstack\n"
        "    passphrase: my-passphrase-value\n"
    )

    result = runner.invoke(app, ["config", "check"], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "AKIA****" in result.output
    assert "us-east-1" in result.output and "s3://state/taskstack" in result.output
    assert "nodes.heartbeat_grace" in result.output and "600 s" in result.output
    assert "settings complete" in result.output
    assert "wJalrXUtnFEMI" not in result.output
    assert "AKIAEXAMPLE12345" not in result.output
    assert "my-passphrase-value" not in result.output


@pytest.mark.parametrize(
    ("state", "shown", "hidden"),
    [
        (
            "  pulumi:\n    url: s3://robot:pw-SECRET-1@state/taskstack\n",
            ["s3://robot:****@state/taskstack"],
            ["pw-SECRET-1"],
        ),
        (
            "  pulumi:\n    url: azblob://state?storage_account=acct&account_key=AZ-SECRET-2\n",
            ["azblob://state?storage_account=acct&account_key=****"],
            ["AZ-SECRET-2"],
        ),
        (
            "  terraform:\n    backend: gcs\n"
            '    options: {bucket: b, credentials: \'{"private_key": "PK-SECRET-3"}\'}\n',
            ['"credentials": "****"', '"bucket": "b"'],
            ["PK-SECRET-3"],
        ),
        (
            "  terraform:\n    backend: s3\n"
            "    options: {bucket: b, key: runs/state, region: r, secret_key: SK-SECRET-4}\n",
            ['"key": "runs/state"', '"secret_key": "****"'],
            ["SK-SECRET-4"],
        ),
    ],
)
def test_state_backend_secrets_are_masked_and_the_rest_shown(
    state: str, shown: list[str], hidden: list[str]
) -> None:
    _write("engine: terraform\nbackends:\n  aws: {regions: [us-east-1]}\nstate:\n" + state)

    result = runner.invoke(app, ["config", "check"], env={"COLUMNS": "400"})

    assert result.exit_code in (0, 1), result.output
    assert all(text in result.output for text in shown), result.output
    assert not any(text in result.output for text in hidden), result.output


def test_the_readme_settings_example_is_valid_settings(tmp_path) -> None:
    from pathlib import Path

    from taskstack.settings import load_settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    example = next(block for block in blocks if block.startswith("backends:"))
    (tmp_path / "config.yml").write_text(example)

    settings = load_settings(tmp_path / "config.yml", environ={})

    assert settings.state.terraform.options["bucket"] == "my-bucket"
    assert settings.backends_in_use() == ["aws"]


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ("  pulumi: {url: not-a-url}\n", "not a Pulumi state URL; give file://, s3://"),
        ("  pulumi: {url: 's3://'}\n", "not a Pulumi state URL"),
        ("  terraform: {backend: s3, options: {region: r}}\n", "the s3 backend needs `bucket`"),
        (
            "  terraform: {backend: azurerm, options: {storage_account_name: a}}\n",
            "the azurerm backend needs `container_name`",
        ),
        (
            "  terraform: {backend: local, options: {bucket: b}}\n",
            "the local backend takes only `path` and `workspace_dir`; remove `bucket`",
        ),
    ],
)
def test_a_state_backend_that_cannot_work_is_named(state: str, problem: str) -> None:
    _write("backends:\n  aws: {regions: [us-east-1]}\nstate:\n" + state)

    result = runner.invoke(app, ["config", "check"], env={"COLUMNS": "400"})

    assert result.exit_code == 1, result.output
    assert problem in result.output, result.output


def test_what_is_missing_is_named_and_the_exit_code_says_so() -> None:
    _write(
        "engine: terraform\n"
        "backends:\n"
        "  aws:\n"
        "    access_key_id: AKIAEXAMPLE12345\n"
        "  gcp: {}\n"
        "state:\n"
        "  pulumi:\n"
        "    url: gs://shared-state\n"
    )

    result = runner.invoke(app, ["config", "check"], env=WIDE)

    assert result.exit_code == 1
    assert "AWS_SECRET_ACCESS_KEY is missing" in result.output
    assert "set `project` or GOOGLE_CLOUD_PROJECT" in result.output
    assert "needs TASKSTACK_STATE_PASSPHRASE" in result.output
    assert "3 setting(s) missing" in result.output


def test_without_a_file_the_local_backend_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSTACK_ENGINE", "terraform")

    result = runner.invoke(app, ["config", "check"], env=WIDE)

    assert "absent: defaults and environment" in result.output
    assert "local" in result.output


def test_a_bad_file_is_one_red_line_naming_the_key_and_line() -> None:
    _write("backends:\n  aws:\n    regoins: [us-east-1]\n")

    result = subprocess.run(
        [sys.executable, "-m", "taskstack.cli.main", "config", "check"],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 1
    assert "config.yml:3: unknown key `backends.aws.regoins`" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_a_missing_engine_cli_is_no_fault_while_no_cloud_is_in_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("no-engines")))

    local = runner.invoke(app, ["config", "check"], env=WIDE)
    monkeypatch.setenv("TASKSTACK_BACKENDS", "aws")
    cloud = runner.invoke(app, ["config", "check"], env=WIDE)

    assert local.exit_code == 0, local.output
    assert "pulumi (CLI not found; no cloud in use)" in local.output
    assert cloud.exit_code == 1
    assert "the pulumi CLI is not on PATH" in cloud.output
