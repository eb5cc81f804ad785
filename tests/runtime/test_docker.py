"""The `docker run` and `docker login` command lines, pinned for the cases that matter."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from pydantic import SecretStr

from taskstack.errors import ConfigError, RunError
from taskstack.runtime.docker import (
    Placement,
    container_name,
    default_image,
    docker_error,
    docker_login,
    docker_run,
    registry_of,
    shell_command,
)
from taskstack.runtime.spec import JobSpec, PortMapping, RegistryAuth

SINGLE = Placement(rank=0, nodes=1, workdir="/tmp/taskstack/r/0/workdir")


def _spec(**fields) -> JobSpec:
    defaults = {"run_name": "train", "image": "ubuntu:22.04", "commands": ("echo hi",)}
    return JobSpec(**{**defaults, **fields})


def test_single_node_cpu_command_line_is_pinned():
    spec = _spec(ports=(PortMapping(local_port=8001, container_port=8000),), shm_size_gb=1.5)

    run = docker_run(spec, SINGLE, env={"A": "1"})

    assert run.argv == (
        "docker", "run", "--detach", "--tty", "--name", "train-0",
        "--label", "taskstack.run=train", "--label", "taskstack.rank=0",
        "--shm-size", "1536m",
        "-p", "127.0.0.1:8000:8000",
        "-v", "/tmp/taskstack/r/0/workdir:/workflow",
        "-e", "A",
        "-w", "/workflow", "--entrypoint", "/bin/sh",
        "ubuntu:22.04", "-c", "echo hi",
    )  # fmt: skip


def test_create_argv_is_the_same_container_not_started():
    run = docker_run(_spec(privileged=True), SINGLE, env={"A": "1"})

    assert run.create_argv[:2] == ("docker", "create")
    assert run.create_argv[2:] == run.argv[3:]
    assert run.script(create=True).endswith(f"exec {shlex.join(run.create_argv)}\n")


def test_nvidia_gpus_add_gpus_all():
    run = docker_run(_spec(gpus_per_node=8, gpu_vendor="nvidia"), SINGLE, env={})

    assert _after(run.argv, "--gpus") == "all"
    assert "--device" not in run.argv


def test_gpus_without_vendor_default_to_nvidia():
    run = docker_run(_spec(gpus_per_node=1), SINGLE, env={})

    assert _after(run.argv, "--gpus") == "all"


def test_amd_gpus_pass_the_rocm_devices():
    run = docker_run(_spec(gpus_per_node=2, gpu_vendor="amd"), SINGLE, env={})

    devices = [run.argv[i + 1] for i, arg in enumerate(run.argv) if arg == "--device"]
    assert devices == ["/dev/kfd", "/dev/dri"]
    assert _after(run.argv, "--group-add") == "video"
    assert "--gpus" not in run.argv


def test_no_gpu_flags_on_cpu_nodes():
    run = docker_run(_spec(), SINGLE, env={})

    assert "--gpus" not in run.argv and "--device" not in run.argv


def test_multi_node_uses_host_network_and_efa_devices_and_publishes_nothing():
    spec = _spec(ports=(PortMapping(local_port=8000, container_port=8000),))
    placement = Placement(rank=1, nodes=2, efa=True, hostfile="/tmp/taskstack/r/1/hostfile")

    run = docker_run(spec, placement, env={})

    assert _after(run.argv, "--network") == "host"
    assert _after(run.argv, "--device") == "/dev/infiniband"
    assert "-p" not in run.argv
    assert "/tmp/taskstack/r/1/hostfile:/dstack/mpi/hostfile:ro" in run.argv
    assert run.name == "train-1"


def test_multi_node_without_efa_adapters_adds_no_device():
    run = docker_run(_spec(), Placement(rank=0, nodes=2, efa=False), env={})

    assert _after(run.argv, "--network") == "host"
    assert "--device" not in run.argv


def test_efa_devices_only_on_multi_node_runs():
    run = docker_run(_spec(), Placement(rank=0, nodes=1, efa=True), env={})

    assert "--device" not in run.argv and "--network" not in run.argv


def test_privileged():
    assert "--privileged" in docker_run(_spec(privileged=True), SINGLE, env={}).argv
    assert "--privileged" not in docker_run(_spec(), SINGLE, env={}).argv


@pytest.mark.parametrize(
    ("nvcc", "image"),
    [
        (False, "dstackai/base:0.14-base-ubuntu24.04"),
        (True, "dstackai/base:0.14-devel-ubuntu24.04"),
    ],
)
def test_python_tasks_run_dstack_base_image(nvcc, image):
    run = docker_run(_spec(image=default_image(nvcc=nvcc)), SINGLE, env={})

    assert default_image(nvcc=nvcc) == image
    assert run.argv[-3:] == (image, "-c", "echo hi")


@pytest.mark.parametrize(
    ("shell", "program"),
    [
        (None, "/bin/sh"),
        ("sh", "/bin/sh"),
        ("bash", "/bin/bash"),
        ("/usr/bin/zsh", "/usr/bin/zsh"),
    ],
)
def test_shell_is_the_program_that_runs_the_commands(shell, program):
    run = docker_run(_spec(shell=shell), SINGLE, env={})

    assert _after(run.argv, "--entrypoint") == program
    assert run.argv[-2:] == ("-c", "echo hi")


def test_docker_error_is_the_last_line_docker_wrote():
    pulled = "Unable to find image 'x:1' locally\nError response from daemon: manifest unknown\n"

    assert docker_error(pulled, "out") == "Error response from daemon: manifest unknown"
    assert docker_error("  \n", "only stdout\n") == "only stdout"
    assert docker_error("", "") == "no output"


def test_user_working_dir_and_entrypoint():
    spec = _spec(user="1000:1000", working_dir="src", entrypoint="python -u", commands=("x.py",))

    run = docker_run(spec, SINGLE, env={})

    assert _after(run.argv, "-u") == "1000:1000"
    assert _after(run.argv, "-w") == "/workflow/src"
    assert _after(run.argv, "--entrypoint") == "python"
    assert run.argv[-3:] == ("ubuntu:22.04", "-u", "x.py")


def test_absolute_working_dir_is_kept():
    run = docker_run(_spec(working_dir="/opt/app"), SINGLE, env={})

    assert _after(run.argv, "-w") == "/opt/app"


def test_env_values_never_on_the_command_line_nor_in_repr():
    secret = "s3cr3t value\nwith 'quotes'"

    run = docker_run(_spec(), SINGLE, env={"HF_TOKEN": secret, "DSTACK_NODE_RANK": "0"})

    assert secret not in " ".join(run.argv)
    assert "s3cr3t" not in repr(run)
    assert ["-e", "HF_TOKEN"] == list(run.argv[run.argv.index("HF_TOKEN") - 1 :][:2])


def test_script_exports_values_that_a_shell_reads_back_exactly():
    value = "line one\nline 'two' $HOME `x`"
    run = docker_run(_spec(), SINGLE, env={"MULTI": value})
    # Replace the final exec with a probe that prints the exported value.
    probe = run.script().replace(f"exec {shlex.join(run.argv)}", 'printf %s "$MULTI"')

    printed = subprocess.run(["sh", "-s"], input=probe, capture_output=True, text=True)

    assert printed.stdout == value


def test_invalid_env_name_is_a_config_error():
    with pytest.raises(ConfigError, match="`BAD-NAME`"):
        docker_run(_spec(), SINGLE, env={"BAD-NAME": "1"})


def test_docker_run_needs_an_image():
    with pytest.raises(RunError, match="needs an image"):
        docker_run(_spec(image=None), SINGLE, env={})


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("ghcr.io/org/app:1", "ghcr.io"),
        ("registry.local:5000/app", "registry.local:5000"),
        ("localhost/busybox:latest", "localhost"),
        ("org/app", None),
        ("ubuntu", None),
    ],
)
def test_registry_of(image, registry):
    assert registry_of(image) == registry


def test_docker_login_sends_the_password_on_stdin_only():
    auth = RegistryAuth(username="bot", password=SecretStr("hunter2"))

    command, stdin = docker_login("ghcr.io/org/app:1", auth)

    assert command == "docker login --username bot --password-stdin ghcr.io"
    assert stdin == b"hunter2"
    assert "hunter2" not in command


def test_registry_image_run_line_holds_no_credentials():
    auth = RegistryAuth(username="bot", password=SecretStr("hunter2"))

    run = docker_run(_spec(image="ghcr.io/org/app:1", registry_auth=auth), SINGLE, env={})

    assert "hunter2" not in run.script() and "ghcr.io/org/app:1" in run.argv


@pytest.mark.parametrize(
    ("run_name", "rank", "name"),
    [
        ("train", 0, "train-0"),
        ("My Run/1", 3, "My-Run-1-3"),
        ("-x", 1, "x-1"),
        ("__", 0, "run-0"),
    ],
)
def test_container_names_are_valid_for_docker(run_name, rank, name):
    assert container_name(run_name, rank) == name


def test_commands_stop_at_the_first_failure():
    line = shell_command(("echo a", "false", "echo never"))

    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True)

    assert done.returncode == 1
    assert done.stdout == "a\n"


def test_background_command_keeps_the_chain():
    line = shell_command(("sleep 0 &", "echo after"))

    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True)

    assert line == "{ sleep 0 & } && echo after"
    assert done.stdout == "after\n"


def _after(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]
