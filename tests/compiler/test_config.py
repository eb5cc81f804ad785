"""Task configs: fields, defaults, normalization, errors with lines, env resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from taskstack.compiler.config import (
    TaskConfig,
    load_task,
    normalized_json,
    parse_task,
    resolve_env,
)
from taskstack.errors import ConfigError

MINIMAL = "type: task\ncommands:\n  - python train.py\n"


def _task(extra: str) -> TaskConfig:
    return parse_task(MINIMAL + extra, source="t.yml")


def test_minimal_task_has_dstacks_defaults() -> None:
    task = parse_task(MINIMAL)

    assert task.type == "task"
    assert task.name is None
    assert task.commands == ["python train.py"]
    assert task.nodes == 1
    assert task.env == {}
    assert task.ports == []
    assert task.spot_policy == "on-demand"
    assert task.retry is None
    assert task.max_duration is None
    assert task.privileged is False
    assert task.home_dir == "/root"


def test_full_featured_task() -> None:
    text = """
type: task
name: train-llm
image: nvcr.io/nvidia/pytorch:24.01-py3
registry_auth:
  username: oauthtoken
  password: secret-token
env:
  - HF_TOKEN
  - EPOCHS=3
working_dir: /workspace
privileged: true
commands:
  - python train.py --epochs $EPOCHS
ports:
  - 6006
resources:
  gpu: A100:80GB:2
spot_policy: auto
retry:
  on_events: [no-capacity, interruption]
  duration: 2h
max_price: 12.5
max_duration: 1d
backends: [aws, gcp]
regions: [us-east-1, us-central1]
"""

    task = parse_task(text)

    assert task.name == "train-llm"
    assert task.env == {"HF_TOKEN": None, "EPOCHS": "3"}
    assert [(p.local_port, p.container_port) for p in task.ports] == [(6006, 6006)]
    assert task.retry is not None
    assert task.retry.on_events == ["no-capacity", "interruption"]
    assert task.retry.duration == 7200
    assert task.max_duration == 86400
    assert task.max_price == 12.5
    assert task.backends == ["aws", "gcp"]
    assert task.registry_auth is not None
    assert task.registry_auth.password.get_secret_value() == "secret-token"


@pytest.mark.parametrize(
    ("yaml_value", "version"),
    [("3.10", "3.10"), ('"3.10"', "3.10"), ("3.9", "3.9"), ("'3.12'", "3.12"), ("3.13", "3.13")],
)
def test_python_version_reads_yaml_floats_as_dstack_does(yaml_value: str, version: str) -> None:
    assert _task(f"python: {yaml_value}\n").python == version


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ("[8080]", [(8080, 8080)]),
        ("['80:8000']", [(80, 8000)]),
        ("['*:9000']", [(None, 9000)]),
        ("[{local_port: 1, container_port: 2}]", [(1, 2)]),
        ("[{container_port: 22}]", [(None, 22)]),
    ],
)
def test_port_forms(ports: str, expected: list[tuple[int | None, int]]) -> None:
    task = _task(f"ports: {ports}\n")

    assert [(p.local_port, p.container_port) for p in task.ports] == expected


@pytest.mark.parametrize(
    ("retry", "events", "duration"),
    [
        ("true", ["no-capacity", "interruption", "error"], 3600),
        ('"yes"', ["no-capacity", "interruption", "error"], 3600),
        ("1", ["no-capacity", "interruption", "error"], 3600),
        ("{}", ["no-capacity", "interruption", "error"], 3600),
        ("{duration: 30m}", ["no-capacity", "interruption", "error"], 1800),
        ("{on_events: [error]}", ["error"], 3600),
    ],
)
def test_retry_forms(retry: str, events: list[str], duration: int) -> None:
    task = _task(f"retry: {retry}\n")

    assert task.retry is not None
    assert (task.retry.on_events, task.retry.duration) == (events, duration)


@pytest.mark.parametrize("retry", ["false", "no", "null", "0"])
def test_retry_off(retry: str) -> None:
    assert _task(f"retry: {retry}\n").retry is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3600", 3600), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800)]
    + [("off", None), ("false", None), ("true", None), ("'off'", None)],
)
def test_max_duration(value: str, seconds: int | None) -> None:
    assert _task(f"max_duration: {value}\n").max_duration == seconds


def test_null_nodes_and_spot_policy_mean_the_default() -> None:
    task = _task("nodes: null\nspot_policy: null\nname: null\n")

    assert (task.nodes, task.spot_policy, task.name) == (1, "on-demand", None)


def test_env_mapping_values_become_text() -> None:
    task = _task("env:\n  FOO: bar\n  PORT: 8080\n  RATIO: 0.5\n")

    assert task.env == {"FOO": "bar", "PORT": "8080", "RATIO": "0.5"}


def test_env_list_keeps_values_with_equals_signs() -> None:
    task = _task("env:\n  - URL=http://x/?a=b\n  - EMPTY=\n  - TOKEN\n")

    assert task.env == {"URL": "http://x/?a=b", "EMPTY": "", "TOKEN": None}


def test_groups_sum_their_nodes() -> None:
    text = "type: task\ngroups:\n  - nodes: 2\n    commands: [a]\n  - commands: [b]\n"

    task = parse_task(text)

    assert task.nodes == 3
    assert task.groups is not None and [g.nodes for g in task.groups] == [2, 1]


def test_lesser_fields_are_accepted() -> None:
    text = """
nvcc: true
shell: bash
user: "1000:1000"
priority: 50
volumes: [data:/data, /mnt/cache:/cache]
repos: [https://github.com/org/repo.git]
files: [config.yaml:/etc/app/config.yaml]
setup: [echo old]
stop_duration: off
idle_duration: 10m
creation_policy: reuse
startup_order: master-first
stop_criteria: master-done
schedule: {cron: "0 3 * * *"}
utilization_policy: {min_gpu_utilization: 10, time_window: 30m}
fleets: [my-fleet]
instances: [node-1]
tags: {team: ml}
availability_zones: [us-east-1a]
instance_types: [p4d.24xlarge]
reservation: cr-123
backend_options: [{type: aws}]
single_branch: false
dstack: false
"""

    task = _task(text)

    assert task.shell == "bash" and task.priority == 50
    assert task.stop_duration == "off" and task.idle_duration == 600
    assert task.volumes[1].model_dump() == {
        "instance_path": "/mnt/cache",
        "path": "/cache",
        "optional": False,
    }
    assert task.repos[0].url == "https://github.com/org/repo.git"
    assert task.schedule is not None and task.schedule.cron == ["0 3 * * *"]
    assert task.tags == {"team": "ml"}


FIELD_ERRORS = [
    ("type: job\ncommands: [x]\n", r"^t\.yml:1: `type`: 'job' is not a task; use `type: task`"),
    ("commands: [x]\n", r"^t\.yml:1: `type`: missing; add `type: task`"),
    ("type: service\nport: 80\nimage: x\n", r"^t\.yml:1: `type`: service configurations"),
    ("type: dev-environment\nide: vscode\n", r"^t\.yml:1: `type`: dev-environment"),
    ("type: task\nname: empty\n", r"^t\.yml:1: `commands`: a task needs `commands` or `image`"),
    ("type: task\nimage: a\npython: 3.11\n", r"^t\.yml:3: `python`: `image` and `python`"),
    ("type: task\nimage: a\ndocker: true\n", r"^t\.yml:3: `docker`: `image` and `docker`"),
    (MINIMAL + "python: '3.8'\n", r"^t\.yml:4: `python`: Python 3\.8 is not offered"),
    (MINIMAL + "env: [TOKEN, TOKEN]\n", r"^t\.yml:4: `env\[1\]`: variable TOKEN is listed twice"),
    (MINIMAL + "env:\n  - 1BAD=x\n", r"^t\.yml:5: `env\[0\]`: '1BAD=x' is not `NAME=value`"),
    (MINIMAL + "env: FOO=bar\n", r"^t\.yml:4: `env`: str 'FOO=bar' is not a list or a mapping"),
    (MINIMAL + "env:\n  DEBUG: true\n", r"^t\.yml:5: `env\.DEBUG`: a bool is not text; quote"),
    (MINIMAL + "ports: [0]\n", r"^t\.yml:4: `ports\[0\]\.local_port`: must be greater than 0"),
    (MINIMAL + "ports: ['65536:80']\n", r"`ports\[0\]\.local_port`: must be less than or equal"),
    (MINIMAL + "ports: ['8080:']\n", r"^t\.yml:4: `ports\[0\]`: '8080:' is not a port mapping"),
    (MINIMAL + "ports: [true]\n", r"`ports\[0\]`: True is not a port"),
    (MINIMAL + "nodes: 0\n", r"^t\.yml:4: `nodes`: must be greater than or equal to 1"),
    ("type: task\nnodes: 2\ngroups: [{commands: [a]}]\n", r"^t\.yml:3: `groups`: `nodes` and"),
    ("type: task\ngroups: []\n", r"`groups`: is empty; list at least one group"),
    ("type: task\ncommands: [x]\ngroups: [{commands: [a]}]\n", r"`commands`: top-level"),
    (MINIMAL + "retry: {on_events: [capacity]}\n", r"`retry\.on_events\[0\]`: must be 'no-capac"),
    (MINIMAL + "retry: {on_events: []}\n", r"`retry\.on_events`: is empty; list events"),
    (MINIMAL + "retry: maybe\n", r"`retry`: 'maybe' is not true or false"),
    (MINIMAL + "max_duration: 2H\n", r"^t\.yml:4: `max_duration`: cannot read '2H'"),
    (MINIMAL + "max_duration: 1y\n", r"`max_duration`: cannot read '1y' as a duration"),
    (MINIMAL + "max_duration: -5\n", r"`max_duration`: duration -5 is negative"),
    (MINIMAL + "max_duration: ' 2h'\n", r"`max_duration`: cannot read ' 2h'"),
    (MINIMAL + "privileged: null\n", r"`privileged`: must be a valid boolean, got None"),
    (MINIMAL + "env: null\n", r"`env`: NoneType None is not a list or a mapping"),
    (MINIMAL + "resources: {cpu: null}\n", r"`resources\.cpu`: must be a valid dictionary"),
    (MINIMAL + "priority: 101\n", r"`priority`: must be less than or equal to 100, got 101"),
    (MINIMAL + "backends: aws\n", r"^t\.yml:4: `backends`: must be a valid list, got 'aws'"),
    (MINIMAL + "backends: [amazon]\n", r"`backends\[0\]`: must be 'amddevcloud'"),
    (MINIMAL + "spot_policy: cheap\n", r"`spot_policy`: must be 'spot', 'on-demand' or 'auto'"),
    (MINIMAL + "max_price: -1\n", r"`max_price`: must be greater than 0, got -1"),
    (MINIMAL + "working_dir: src\n", r"^t\.yml:4: `working_dir`: 'src' is relative"),
    (MINIMAL + "port: 8000\n", r"^t\.yml:4: `port`: belongs to services, not tasks; remove it"),
    (MINIMAL + "replicas: 2\n", r"`replicas`: belongs to services"),
    (MINIMAL + "ide: vscode\n", r"^t\.yml:4: `ide`: belongs to dev environments"),
    (MINIMAL + "inactivity_duration: 1h\n", r"`inactivity_duration`: .*dev environments"),
    (MINIMAL + "comands: [x]\n", r"^t\.yml:4: `comands`: unknown field; did you mean `commands`"),
    (MINIMAL + "shell: fish\n", r"`shell`: 'fish' is not a shell"),
    (MINIMAL + "user: 'a b'\n", r"`user`: 'a b' is not a user"),
    (MINIMAL + "repos: [a, b]\n", r"`repos`: only one repo is supported"),
    (MINIMAL + "volumes: [nocolon]\n", r"`volumes\[0\]`: 'nocolon' is not a mount"),
    (MINIMAL + "schedule: {cron: 'daily'}\n", r"`schedule\.cron`: 'daily' is not a cron"),
    (MINIMAL + "utilization_policy: {min_gpu_utilization: 5, time_window: 1m}\n", r"under 5m"),
    (MINIMAL + "commands: echo\n", r"`commands`: must be a valid list, got 'echo'"),
    (MINIMAL + "instances: []\n", r"`instances`: .*at least 1"),
    (MINIMAL + "backend_options: [{type: aws}, {type: aws}]\n", r"`backend_options\[1\]`"),
    ("type: task\ncommands: [x\n", r"^t\.yml:3: the file is not valid YAML"),
    ("- a\n", r"^t\.yml:1: the file is not a mapping of fields"),
    ("", r"^t\.yml:1: the file is empty"),
]


@pytest.mark.parametrize(("text", "message"), FIELD_ERRORS)
def test_field_errors_are_one_line_with_field_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_task(text, source="t.yml")

    assert "\n" not in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_errors_chain_the_original_exception() -> None:
    with pytest.raises(ConfigError) as caught:
        _task("nodes: 0\n")

    assert caught.value.__cause__ is not None


def test_error_line_points_into_nested_lists() -> None:
    text = MINIMAL + "ports:\n  - 8080\n  - 9090\n  - '1:'\n"

    with pytest.raises(ConfigError, match=r"^t\.yml:7: `ports\[2\]`"):
        parse_task(text, source="t.yml")


def test_registry_password_is_never_shown() -> None:
    task = _task("registry_auth: {username: me, password: hunter2}\n")

    assert "hunter2" not in repr(task)
    assert "hunter2" not in str(task)
    assert "hunter2" not in str(normalized_json(task))
    assert "hunter2" not in task.model_dump_json()


def test_env_values_are_not_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        _task("env:\n  TOKEN: [s3cr3t]\n")

    assert "s3cr3t" not in str(caught.value)


def test_registry_errors_do_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        _task("registry_auth: {username: me, password: 12345678}\n")

    assert "12345678" not in str(caught.value)
    assert "`registry_auth.password`" in str(caught.value)


def test_load_task_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / ".dstack.yml"
    path.write_text(MINIMAL + "nodes: 2\n")

    task = load_task(path)

    assert task.nodes == 2


def test_load_task_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.dstack.yml"
    path.write_text(MINIMAL + "nodes: -1\n")

    with pytest.raises(ConfigError, match=rf"^{path}:4: `nodes`"):
        load_task(path)


def test_load_task_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file; pass the task file with `-f`"):
        load_task(tmp_path / "nope.yml")


def test_normalized_json_shape() -> None:
    task = _task("env: [A=1, B]\nports: ['*:80']\nretry: true\nmax_duration: 2h\n")

    data = normalized_json(task)

    assert data["env"] == {"A": "1", "B": None}
    assert data["ports"] == [{"local_port": None, "container_port": 80}]
    assert data["retry"] == {
        "on_events": ["no-capacity", "interruption", "error"],
        "duration": 3600,
    }
    assert data["max_duration"] == 7200
    assert data["resources"]["cpu"] == {"arch": None, "count": {"min": 2, "max": None}}
    assert data["resources"]["gpu"]["compute_capability"] is None
    assert normalized_json(parse_task(MINIMAL))["max_duration"] == "off"


class TestResolveEnv:
    def test_cli_values_override_and_fill(self) -> None:
        task = _task("env: [A=1, B, C]\n")

        env = resolve_env(task, cli_env=["A=9", "B=two", "C"], environ={"C": "from-shell"})

        assert env == {"A": "9", "B": "two", "C": "from-shell"}

    def test_bare_task_variables_fall_back_to_the_environment(self) -> None:
        task = _task("env: [HF_TOKEN]\n")

        assert resolve_env(task, cli_env=[], environ={"HF_TOKEN": "x"}) == {"HF_TOKEN": "x"}

    def test_cli_can_add_new_variables(self) -> None:
        task = _task("env: {A: '1'}\n")

        assert resolve_env(task, cli_env=["NEW=v=w"], environ={}) == {"A": "1", "NEW": "v=w"}

    def test_every_missing_variable_in_one_error(self) -> None:
        task = _task("env: [HF_TOKEN, WANDB_KEY, SET=1]\n")

        with pytest.raises(ConfigError, match=r"no value for HF_TOKEN, WANDB_KEY, EXTRA; pass"):
            resolve_env(task, cli_env=["EXTRA"], environ={})

    def test_bad_cli_item_hides_its_value(self) -> None:
        task = _task("")

        with pytest.raises(ConfigError, match=r"`-e 1BAD=\*\*\*`: '1BAD' is not a") as caught:
            resolve_env(task, cli_env=["1BAD=topsecret"], environ={})

        assert "topsecret" not in str(caught.value)

    @pytest.mark.parametrize(
        ("typed", "shown"), [("=v", "`-e =***`"), ("=", "`-e =`"), ("", "`-e ''`")]
    )
    def test_item_without_a_name_shows_what_was_typed(self, typed: str, shown: str) -> None:
        task = _task("")

        with pytest.raises(ConfigError, match="no variable name before `=`") as caught:
            resolve_env(task, cli_env=[typed], environ={})

        assert str(caught.value).startswith(shown)


def test_parsing_logs_nothing_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    _task("registry_auth: {username: me, password: hunter2}\n")

    assert "hunter2" not in caplog.text
