"""The tasks under `examples/` are what a user applies as they are: check them here.

Every example parses with the config parser, has a README that says how to apply it, and
has shell commands bash accepts. The commands of the heavy examples also run here against
stand-in programs (`pip`, `torchrun`, `streamlit`) that only record their arguments, with
the system variables the runtime gives each node, so a misspelled variable or a port that
disagrees with `ports` fails at once.

Running those examples for real installs torch (a minute or two and 1.2 GB) or serves a web
app until stopped, too slow for the suite: those tests run only with
`TASKSTACK_SLOW_EXAMPLES=1`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from taskstack.compiler.config import TaskConfig, load_task, resolve_env
from taskstack.runtime.spec import JobSpec, Node
from taskstack.runtime.sysvars import system_variables
from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
CONFIGS = sorted(EXAMPLES.glob("*/.dstack.yml"))
DSTACK = Path(sys.executable).parent / "dstack"

SLOW = pytest.mark.skipif(
    os.environ.get("TASKSTACK_SLOW_EXAMPLES") != "1",
    reason="applies an example for real (installs torch or streamlit into the run's "
    "virtualenv: minutes); set TASKSTACK_SLOW_EXAMPLES=1 to run it",
)


def _example_id(path: Path) -> str:
    return path.parent.name


def _load(name: str) -> TaskConfig:
    return load_task(EXAMPLES / name / ".dstack.yml")


# --- Every example -----------------------------------------------------------------------


def test_the_examples_of_the_issue_are_all_there():
    names = {path.parent.name for path in CONFIGS}

    assert {"hello", "distributed", "streamlit", "torchrun-ddp"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=_example_id)
def test_example_parses_as_a_task_with_commands(path: Path):
    task = load_task(path)

    assert task.type == "task"
    assert task.commands, f"{path} has no commands to run"


@pytest.mark.parametrize("path", CONFIGS, ids=_example_id)
def test_example_readme_says_how_to_apply_it(path: Path):
    readme = path.parent / "README.md"

    text = readme.read_text(encoding="utf-8")

    assert f"dstack apply -f examples/{path.parent.name}/.dstack.yml" in text


@pytest.mark.parametrize("path", CONFIGS, ids=_example_id)
def test_example_commands_are_valid_bash(path: Path):
    script = " && ".join(load_task(path).commands)

    checked = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)

    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=_example_id)
def test_files_named_in_commands_exist(path: Path):
    # Commands run at the root of the uploaded directory, so an example names its own files
    # as `examples/NAME/...`; a renamed script would only fail once the nodes are up.
    words = [word for command in load_task(path).commands for word in shlex.split(command)]
    named = [word for word in words if word.startswith("examples/")]

    missing = [word for word in named if not (REPO_ROOT / word).is_file()]

    assert not missing


@pytest.mark.parametrize("path", CONFIGS, ids=_example_id)
def test_torch_is_pinned_wherever_it_is_installed(path: Path):
    # An unpinned `torch` makes pip fetch the newest CUDA build (GBs) even where a CPU
    # wheel lies on disk.
    requirements = [
        word
        for command in load_task(path).commands
        if command.startswith("pip install")
        for word in shlex.split(command)[2:]
    ]

    loose = [word for word in requirements if re.fullmatch(r"torch([<>~!]=?.*)?", word)]

    assert not loose


def test_python_files_of_the_examples_compile():
    sources = sorted(EXAMPLES.rglob("*.py"))

    for source in sources:
        compile(source.read_text(encoding="utf-8"), str(source), "exec")

    assert REPO_ROOT / "examples/torchrun-ddp/train.py" in sources


# --- Multi-node examples -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["distributed", "torchrun-ddp"])
def test_multi_node_examples_run_on_two_nodes_without_published_ports(name: str):
    task = _load(name)

    assert task.nodes == 2
    # The master port is between the nodes; publishing it would only hold a local port.
    assert task.ports == []
    assert task.max_duration is not None, "a rank waiting for a lost peer must be stopped"


@pytest.mark.parametrize("rank", [0, 1])
def test_torchrun_gets_its_topology_from_the_system_variables(tmp_path: Path, rank: int):
    task = _load("torchrun-ddp")

    calls = _run_with_stand_ins(task, rank=rank, programs=("pip", "torchrun"), tmp_path=tmp_path)

    assert calls[0] == ["pip", "install", "torch==2.13.0", "scikit-learn"]
    program, *args = calls[1]
    assert program == "torchrun"
    assert args == [
        "--nnodes=2",
        f"--node_rank={rank}",
        "--nproc_per_node=1",
        "--master_addr=127.0.0.1",
        "--master_port=29500",
        "examples/torchrun-ddp/train.py",
    ]


def test_torchrun_master_port_follows_env_given_at_apply(tmp_path: Path):
    task = _load("torchrun-ddp")

    calls = _run_with_stand_ins(
        task,
        rank=1,
        programs=("pip", "torchrun"),
        tmp_path=tmp_path,
        cli_env=["MASTER_PORT=29600"],
    )

    assert "--master_port=29600" in calls[1]


# --- streamlit ---------------------------------------------------------------------------


def test_streamlit_listens_on_the_port_it_publishes(tmp_path: Path):
    task = _load("streamlit")

    calls = _run_with_stand_ins(task, rank=0, programs=("pip", "streamlit"), tmp_path=tmp_path)

    assert [(port.local_port, port.container_port) for port in task.ports] == [(8501, 8501)]
    assert calls[0] == ["pip", "install", "streamlit"]
    program, subcommand, *options = calls[1]
    assert (program, subcommand) == ("streamlit", "hello")
    assert "--server.port=8501" in options
    # Reachable from outside the node (the port forward), and no browser to open there.
    assert "--server.address=0.0.0.0" in options
    assert "--server.headless=true" in options


# --- For real, opt-in --------------------------------------------------------------------


@SLOW
@pytest.mark.timeout(900)
def test_torchrun_ddp_applies_and_passes_its_check():
    applied = subprocess.run(
        [str(DSTACK), "apply", "-f", "examples/torchrun-ddp/.dstack.yml", "-y"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )

    output = applied.stdout + applied.stderr
    assert applied.returncode == 0, output[-3000:]
    assert "[1] rank 1/2 on node 1: 719 training images" in output
    losses = [float(loss) for loss in re.findall(r"\[0\] epoch +\d+/15 +loss ([\d.]+)", output)]
    assert len(losses) == 15
    assert losses[-1] < losses[0] / 10
    assert re.search(r"\[0\] check: accuracy 0\.9\d+ .*identical on all ranks: True: OK", output)


@SLOW
@pytest.mark.timeout(400)
def test_streamlit_applies_serves_its_page_and_stops_on_ctrl_c(tmp_path: Path):
    if not _port_free(8501):
        pytest.skip("port 8501 is taken on this machine")
    log = (tmp_path / "apply.log").open("w")
    apply = subprocess.Popen(
        [str(DSTACK), "apply", "-f", "examples/streamlit/.dstack.yml", "-y"],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    try:
        health = _poll(
            "http://127.0.0.1:8501/_stcore/health", until=time.monotonic() + 300, apply=apply
        )
        page = _get("http://127.0.0.1:8501/")
    finally:
        apply.send_signal(signal.SIGINT)
        status = apply.wait(timeout=60)
        log.close()

    assert health == "ok"
    assert "<title>Streamlit</title>" in page
    assert status == 130
    assert _port_free(8501), "streamlit outlived the run"


# --- Helpers -----------------------------------------------------------------------------


def _run_with_stand_ins(
    task: TaskConfig,
    *,
    rank: int,
    programs: tuple[str, ...],
    tmp_path: Path,
    cli_env: list[str] | None = None,
) -> list[list[str]]:
    """Run the task's commands as node `rank` would, with `programs` only recording argv.

    `cli_env` is what `-e` would give `dstack apply`.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.jsonl"
    for program in programs:
        _write_stand_in(bin_dir / program)

    env = {
        **os.environ,
        **resolve_env(task, cli_env=cli_env or [], environ={}),
        **_system_variables(task, rank=rank),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STAND_IN_CALLS": str(calls),
    }
    script = " && ".join(task.commands)
    ran = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, timeout=30)

    assert ran.returncode == 0
    return [json.loads(line) for line in calls.read_text().splitlines()]


def _system_variables(task: TaskConfig, *, rank: int) -> dict[str, str]:
    """The `DSTACK_*` variables of node `rank`, with every node on 127.0.0.1 (local)."""
    spec = JobSpec(run_name="examples-test", image=None, commands=tuple(task.commands))
    nodes = [
        Node(rank=node, address="127.0.0.1", private_ip="127.0.0.1") for node in range(task.nodes)
    ]
    return system_variables(spec, nodes, rank=rank, hostfile_path="/dev/null")


def _write_stand_in(path: Path) -> None:
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['STAND_IN_CALLS'], 'a') as calls:\n"
        "    calls.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + '\\n')\n"
    )
    path.chmod(0o755)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _poll(url: str, *, until: float, apply: subprocess.Popen[bytes]) -> str:
    """GET `url` every second until it answers; fail if apply exits or time runs out."""
    while time.monotonic() < until:
        if apply.poll() is not None:
            pytest.fail(f"dstack apply exited with {apply.returncode} before {url} answered")
        try:
            return _get(url)
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} did not answer in time")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
