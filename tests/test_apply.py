"""The run lifecycle as a library: plan, execute, stop; real processes on this machine."""

from __future__ import annotations

import getpass
import grp
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from taskstack import apply, records
from taskstack.compiler.config import load_task
from taskstack.errors import ConfigError, OffersError, RunError
from taskstack.runtime.job import LogLine

_NO_GPU_OFFER = SimpleNamespace(gpu_count=0)


def _task(folder: Path, text: str) -> Path:
    path = folder / ".dstack.yml"
    path.write_text(text)
    return path


def _run_printing(path: Path, *, cwd: Path) -> tuple[apply.RunResult, list[str]]:
    """Plan and execute the task; how it ended and the lines its nodes printed."""
    events: list[object] = []
    result = apply.execute_run(apply.plan_run(path, cwd=cwd), on_event=events.append)
    return result, [event.text for event in events if isinstance(event, LogLine)]


def _nothing_started() -> bool:
    return not records.runs_dir().exists() or not any(records.runs_dir().iterdir())


def test_every_missing_env_var_is_one_error_before_anything_starts(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nenv: [HF_TOKEN, WANDB_KEY, SET=1]\ncommands: [env]\n")

    with pytest.raises(ConfigError, match=r"HF_TOKEN, WANDB_KEY") as err:
        apply.plan_run(path, environ={}, cwd=tmp_path)

    assert "\n" not in str(err.value)
    assert _nothing_started()


def test_env_comes_from_the_cli_and_the_environment(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nenv: [A, B, C=3]\ncommands: [env]\n")

    plan = apply.plan_run(path, cli_env=["A=1", "B"], environ={"B": "2"}, cwd=tmp_path)

    assert plan.spec.env == {"A": "1", "B": "2", "C": "3"}


def test_a_taken_port_is_an_error_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        path = _task(tmp_path, f"type: task\nports: [{port}]\ncommands: [sleep 1]\n")

        with pytest.raises(ConfigError, match=rf"^port {port} on 127.0.0.1 is taken"):
            apply.plan_run(path, cwd=tmp_path)

    assert _nothing_started()


def test_image_without_a_docker_engine_is_a_clear_error(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nimage: python:3.11-slim\ncommands: [python -V]\n")
    engine_answers = (
        shutil.which("docker")
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    )
    if engine_answers:
        pytest.skip("a Docker engine answers here; this test covers the machine without one")

    with pytest.raises(RunError, match=r"`image: python:3.11-slim` needs a Docker engine"):
        apply.plan_run(path, cwd=tmp_path)

    assert _nothing_started()


def test_another_user_without_an_image_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    path = _task(tmp_path, "type: task\nuser: nobody\ncommands: [id -un]\n")

    with pytest.raises(ConfigError, match=r"^`user: nobody`: without `image:`") as err:
        apply.plan_run(path, cwd=tmp_path)

    assert "add `image:`" in str(err.value) and "\n" not in str(err.value)
    assert _nothing_started()


def test_the_current_user_and_its_group_are_honoured_without_an_image(tmp_path: Path) -> None:
    me, group = getpass.getuser(), grp.getgrgid(os.getegid()).gr_name
    path = _task(tmp_path, f"type: task\nuser: {me}:{group}\ncommands: [id -un]\n")

    result, lines = _run_printing(path, cwd=tmp_path)

    assert (result.status, lines) == ("done", [me])


def test_execute_runs_records_and_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("42\n")
    path = _task(
        tmp_path,
        "type: task\nname: sum-1\nnodes: 2\nenv: [SECRET]\n"
        "commands: ['echo rank $DSTACK_NODE_RANK sees $(cat data.txt)']\n",
    )
    plan = apply.plan_run(path, cli_env=["SECRET=hunter2-value"], cwd=tmp_path)
    events: list[object] = []

    result = apply.execute_run(plan, on_event=events.append)

    assert (result.status, result.exit_status) == ("done", 0)
    lines = sorted(event.text for event in events if isinstance(event, LogLine))
    assert lines == ["rank 0 sees 42", "rank 1 sees 42"]
    record = records.load_record("sum-1")
    assert record.status == "done" and [node.exit_code for node in record.nodes] == [0, 0]
    assert all(isinstance(node.pgid, int) for node in record.nodes)
    assert sorted(records.log_path("sum-1").read_text().splitlines()) == [
        "[0] rank 0 sees 42",
        "[1] rank 1 sees 42",
    ]
    # Node copies and the virtualenv are gone; the record and the log stay.
    assert sorted(p.name for p in records.run_dir("sum-1").iterdir() if p.name[0] != ".") == [
        "logs.txt",
        "run.json",
    ]
    assert "hunter2-value" not in (records.run_dir("sum-1") / "run.json").read_text()


@pytest.mark.parametrize(
    ("field", "yaml"),
    [
        ("volumes", "volumes: [/mnt/data:/data]"),
        ("volumes", "volumes: [{name: my-volume, path: /data}]"),
        ("files", "files: [data.txt:/opt/data.txt]"),
        ("repos", "repos: [https://example.com/org/repo.git]"),
    ],
)
def test_fields_not_carried_out_are_refused_before_anything_starts(
    field: str, yaml: str, tmp_path: Path
) -> None:
    path = _task(tmp_path, f"type: task\n{yaml}\ncommands: [echo hi]\n")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: `{field}`: ") as err:
        apply.plan_run(path, cwd=tmp_path)

    assert "\n" not in str(err.value) and "remove" in str(err.value)
    assert _nothing_started()


def test_a_backend_taskstack_cannot_run_on_is_named(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nbackends: [runpod]\ncommands: [echo hi]\n")

    with pytest.raises(OffersError, match=r"^`backends: runpod`: taskstack runs tasks on aws"):
        apply.plan_run(path, cwd=tmp_path)

    # Beside a backend it can run on, the other one is no obstacle (as in dstack).
    _task(tmp_path, "type: task\nbackends: [runpod, local]\ncommands: [echo hi]\n")
    assert apply.plan_run(path, cwd=tmp_path).backend == "local"


def test_an_optional_instance_mount_is_skipped_as_dstack_does(tmp_path: Path) -> None:
    path = _task(
        tmp_path,
        "type: task\nvolumes: [{instance_path: /mnt/cache, path: /cache, optional: true}]\n"
        "commands: [echo hi]\n",
    )

    result, lines = _run_printing(path, cwd=tmp_path)

    assert (result.status, result.exit_status, lines) == ("done", 0, ["hi"])


@pytest.mark.parametrize(("shell", "expected"), [(None, "bash"), ("sh", "sh"), ("bash", "bash")])
def test_shell_runs_the_commands(shell: str | None, expected: str, tmp_path: Path) -> None:
    shell_line = "" if shell is None else f"shell: {shell}\n"
    # $BASH_VERSION is set only in bash, even where sh is a link to it.
    probe = 'if [ -n "$BASH_VERSION" ]; then echo bash; else echo sh; fi'
    path = _task(tmp_path, f"type: task\n{shell_line}commands:\n  - '{probe}'\n")

    result, lines = _run_printing(path, cwd=tmp_path)

    assert (result.status, lines) == ("done", [expected])


def test_registry_credentials_reach_the_job_and_never_the_record(tmp_path: Path) -> None:
    path = _task(
        tmp_path,
        "type: task\nname: private-1\nimage: ghcr.io/org/private:1\n"
        "registry_auth: {username: robot, password: hunter2-registry}\ncommands: [echo hi]\n",
    )
    task = load_task(path)

    spec = apply.job_spec(task, run_name="private-1", repo_id="r", offer=_NO_GPU_OFFER)

    assert spec.registry_auth is not None
    assert spec.registry_auth.username == "robot"
    assert spec.registry_auth.password.get_secret_value() == "hunter2-registry"
    assert "hunter2-registry" not in spec.model_dump_json() + repr(spec)


def test_a_failed_node_gives_its_exit_status_not_that_of_the_nodes_it_stopped(
    tmp_path: Path,
) -> None:
    path = _task(
        tmp_path,
        "type: task\nname: worker-fails\nnodes: 2\n"
        "commands: ['if [ $DSTACK_NODE_RANK = 1 ]; then exit 3; fi; sleep 60']\n",
    )

    result, _ = _run_printing(path, cwd=tmp_path)

    assert (result.status, result.exit_status) == ("failed", 3)
    record = records.load_record("worker-fails")
    assert record.exit_status == 3 and record.nodes[1].exit_code == 3
    assert record.nodes[0].exit_code != 0  # stopped because node 1 failed


def test_failure_gives_the_node_exit_status(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\ncommands: [echo a, exit 4]\n")

    result = apply.execute_run(apply.plan_run(path, cwd=tmp_path), on_event=lambda e: None)

    assert (result.status, result.exit_status) == ("failed", 4)
    assert records.load_record(result.name).status == "failed"


def test_an_active_run_name_is_refused(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nname: busy-1\ncommands: ['true']\n")
    records.create_record(
        records.new_record(
            name="busy-1", run_id="r1", backend="local", config_path=str(path), nodes_num=1
        )
    )

    with pytest.raises(ConfigError, match=r"run busy-1 is still submitted"):
        apply.plan_run(path, cwd=tmp_path)


def test_generated_names_are_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    assert re.fullmatch(r"[a-z]+-[a-z]+-1", apply.generate_name())
    monkeypatch.setattr(apply.random, "choice", lambda words: words[0])
    first = apply.generate_name()

    records.run_dir(first).mkdir(parents=True)
    second = apply.generate_name()

    assert (first, second) == ("brave-badger-1", "brave-badger-2")


def test_stop_run_terminates_a_running_apply(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nname: long-1\ncommands: [echo up, sleep 300]\n")
    runner = subprocess.Popen(
        [sys.executable, "-m", "taskstack.cli.main", "apply", "-f", str(path), "-y"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(lambda: _running("long-1"), timeout=60)

    record = apply.stop_run("long-1", grace=2)

    assert record.status == "terminated"
    assert runner.wait(timeout=60) == 1
    assert "Run long-1 terminated" in (runner.stdout.read() if runner.stdout else "")
    assert _marked("long-1", rank=0) == []


def test_stopping_a_finished_run_says_so(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nname: short-1\ncommands: ['true']\n")
    apply.execute_run(apply.plan_run(path, cwd=tmp_path), on_event=lambda e: None)

    with pytest.raises(RunError, match=r"^run short-1 is not running; it is done$"):
        apply.stop_run("short-1")


def _marked(name: str, *, rank: int) -> list[int]:
    """Live processes of one node of the run `name`, found by their marker."""
    from taskstack.runtime.local import marked_processes, node_marker

    return marked_processes(node_marker(name, records.load_record(name).run_id, rank))


def _running(name: str) -> bool:
    try:
        record = records.load_record(name)
    except RunError:
        return False
    return record.status == "running" and bool(record.nodes)


def _wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_second_apply_of_a_running_name_is_refused_and_touches_nothing(
    tmp_path: Path,
) -> None:
    path = _task(tmp_path, "type: task\nname: twice-1\ncommands: [echo up, sleep 300]\n")
    first = subprocess.Popen(
        [sys.executable, "-m", "taskstack.cli.main", "apply", "-f", str(path), "-y"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: _running("twice-1"), timeout=60)
        before = records.load_record("twice-1")

        second = subprocess.run(
            [sys.executable, "-m", "taskstack.cli.main", "apply", "-f", str(path), "-y"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

        after = records.load_record("twice-1")
        marked = _marked("twice-1", rank=0)
    finally:
        apply.stop_run("twice-1", grace=2)
        first.wait(timeout=60)

    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        "error: run twice-1 is still running; stop it with `dstack stop twice-1` or pick "
        "another `--name`"
    ]
    assert after == before
    assert marked != []  # the first run's processes were left alone


def test_one_local_port_for_two_container_ports_is_refused(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nports: ['9002:8768', '9002:8769']\ncommands: [echo hi]\n")

    with pytest.raises(ConfigError, match=r"^`ports`: local port 9002 is given to container"):
        apply.plan_run(path, cwd=tmp_path)

    assert _nothing_started()


def test_the_same_port_twice_is_forwarded_once(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nports: [18765, 18765]\ncommands: [echo hi]\n")

    plan = apply.plan_run(path, cwd=tmp_path)

    assert [(p.local_port, p.container_port) for p in plan.spec.ports] == [(18765, 18765)]


def test_a_task_path_without_bash_still_runs_its_commands(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nenv: [PATH=/nonexistent]\ncommands: ['echo $PATH']\n")

    events: list[object] = []
    result = apply.execute_run(apply.plan_run(path, cwd=tmp_path), on_event=events.append)

    assert result.status == "done"
    (line,) = [e.text for e in events if isinstance(e, LogLine)]
    assert line.endswith("/venv/bin:/nonexistent")  # the run's virtualenv, then the task's


def test_a_relative_state_folder_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskstack.home import taskstack_home

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKSTACK_HOME", "relhome")
    path = _task(tmp_path, "type: task\nnodes: 2\ncommands: ['cat $DSTACK_MPI_HOSTFILE']\n")

    events: list[object] = []
    result = apply.execute_run(apply.plan_run(path, cwd=tmp_path), on_event=events.append)

    assert taskstack_home() == tmp_path / "relhome"
    assert result.status == "done"
    lines = [e.text for e in events if isinstance(e, LogLine)]
    assert lines == ["127.0.0.1 slots=1"] * 4  # each node reads the hostfile of both


def test_a_task_only_a_cloud_fits_says_to_configure_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TASKSTACK_BACKENDS", raising=False)
    path = _task(tmp_path, "type: task\nbackends: [aws]\ncommands: [hostname]\n")

    with pytest.raises(OffersError, match=r"on aws would .*: configure one in ") as caught:
        apply.plan_run(path, cwd=tmp_path)

    assert "\n" not in str(caught.value)
    assert _nothing_started()
