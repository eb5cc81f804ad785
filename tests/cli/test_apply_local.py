"""`dstack apply` on the local backend, end to end: the real CLI, real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskstack.cli.apply  # noqa: F401  (registers the command)
from taskstack import records
from taskstack.cli.app import app
from taskstack.runtime.local import marked_processes, node_marker

REPO = Path(__file__).resolve().parents[2]
DSTACK = REPO / ".venv" / "bin" / "dstack"


def dstack(*args: str, cwd: Path = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DSTACK), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def applying():
    """Start `dstack apply -f PATH -y` in the background; never leaves it running."""
    started: list[subprocess.Popen] = []

    def start(path: Path, *, cwd: Path, extra: list[str] | None = None) -> subprocess.Popen:
        runner = subprocess.Popen(
            [str(DSTACK), "apply", "-f", str(path), "-y", *(extra or [])],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(runner)
        return runner

    yield start
    for runner in started:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)  # lets the apply stop its nodes
            try:
                runner.wait(timeout=30)
            except subprocess.TimeoutExpired:
                runner.kill()


def _task(folder: Path, text: str) -> Path:
    path = folder / "task.dstack.yml"
    path.write_text(text)
    return path


def _no_runs() -> bool:
    return not records.runs_dir().exists() or not any(records.runs_dir().iterdir())


def test_hello_prints_its_system_variables_and_result() -> None:
    result = CliRunner().invoke(app, ["apply", "-f", "examples/hello/.dstack.yml", "-y"])

    assert result.exit_code == 0, result.output
    assert "Shown 1 of 1 offers" in result.output
    assert "Submit the run" not in result.output
    assert "node 0 of 1, master 127.0.0.1" in result.output
    assert "127.0.0.1 slots=1" in result.output
    assert "1229 primes below 10000, the last is 9973: checked" in result.output
    assert " done" in result.output.splitlines()[-1]


def test_distributed_ranks_talk_and_both_check_their_result() -> None:
    done = dstack("apply", "-f", "examples/distributed/.dstack.yml", "-y")

    assert done.returncode == 0, done.stdout + done.stderr
    for rank in (0, 1):
        assert (
            f"[{rank}] rank {rank}/2: 200 points from 2 shards, "
            "fitted y = 3.000000x + 2.000000: checked"
        ) in done.stdout


def test_a_failing_command_gives_its_exit_status(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\ncommands: [echo before, exit 5, echo after]\n")

    done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    assert done.returncode == 5
    assert "before" in done.stdout and "after" not in done.stdout
    assert "failed (node 0 exited with 5)" in done.stdout


def test_every_attempt_of_a_retried_run_is_numbered(tmp_path: Path) -> None:
    path = _task(
        tmp_path,
        "type: task\nname: again-1\nretry: {on_events: [error], duration: 2s}\n"
        "commands: [echo try, exit 3]\n",
    )

    done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    assert done.returncode == 3
    assert done.stdout.splitlines().count("try") == 2
    assert "Attempt 2 (retry on error): node 0 exited with 3" in done.stderr
    assert "Attempt 3" not in done.stderr
    assert (
        "Run again-1 failed after 2 attempts (node 0 exited with 3; retry.duration of 2s passed)"
    ) in " ".join(done.stdout.split())


def test_the_run_is_submitted_only_when_the_user_says_yes(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nname: asked-1\ncommands: [echo ran]\n")

    declined = CliRunner().invoke(app, ["apply", "-f", str(path)], input="n\n")

    assert declined.exit_code == 1
    assert "Submit the run asked-1? [y/n]" in declined.output
    assert "ran" not in declined.output.split("[y/n]")[-1] and _no_runs()

    accepted = CliRunner().invoke(app, ["apply", "-f", str(path)], input="y\n")
    assert accepted.exit_code == 0 and "\nran\n" in accepted.output


def test_missing_env_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nenv: [API_KEY, REGION]\ncommands: [env]\n")
    os.environ.pop("API_KEY", None)
    os.environ.pop("REGION", None)

    done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "API_KEY, REGION" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert _no_runs()


def test_env_given_with_e_reaches_the_task(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nenv: [API_KEY]\ncommands: ['echo key=$API_KEY']\n")

    done = dstack("apply", "-f", str(path), "-y", "-e", "API_KEY=abc", cwd=tmp_path)

    assert done.returncode == 0 and "key=abc" in done.stdout


def test_taken_port_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        path = _task(tmp_path, f"type: task\nports: [{port}]\ncommands: [sleep 5]\n")

        done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr
    assert _no_runs()


def test_ports_are_published_with_their_url(tmp_path: Path, applying) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "serve.py").write_text(
        "import socket\n"
        f"server = socket.create_server(('127.0.0.1', {port}))\n"
        "print('listening', flush=True)\n"
        "client, _ = server.accept()\n"
        "client.sendall(b'pong')\n"
    )
    path = _task(tmp_path, f"type: task\nports: [{port}]\ncommands: [python serve.py]\n")

    runner = applying(path, cwd=tmp_path)
    seen = _read_until(runner.stdout, "listening")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        answer = client.recv(16)

    assert runner.wait(timeout=30) == 0
    assert f"Port open: http://127.0.0.1:{port}" in seen
    assert answer == b"pong"


def test_p_publishes_a_task_port_under_another_number(tmp_path: Path, applying) -> None:
    task_port, user_port = _free_port(), _free_port()
    (tmp_path / "serve.py").write_text(
        "import socket\n"
        f"server = socket.create_server(('127.0.0.1', {task_port}))\n"
        "print('listening', flush=True)\n"
        "client, _ = server.accept()\n"
        "client.sendall(b'pong')\n"
    )
    path = _task(tmp_path, f"type: task\nports: [{task_port}]\ncommands: [python serve.py]\n")

    runner = applying(path, cwd=tmp_path, extra=["-p", f"{user_port}:{task_port}"])
    seen = _read_until(runner.stdout, "listening")
    with socket.create_connection(("127.0.0.1", user_port), timeout=5) as client:
        answer = client.recv(16)

    assert runner.wait(timeout=30) == 0
    assert f"Port open: http://127.0.0.1:{user_port}" in seen
    assert answer == b"pong"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ctrl_c_stops_every_node_and_exits_130(tmp_path: Path, applying) -> None:
    token = f"3{os.getpid() % 10000:04d}"  # sleeps of this test only: sleep 3NNNN1, ...
    path = _task(
        tmp_path,
        "type: task\nname: ctrl-c-1\nnodes: 2\n"
        f"commands: ['echo up', '(sleep {token}1 &); setsid sleep {token}2 & sleep {token}3']\n",
    )
    runner = applying(path, cwd=tmp_path)
    _read_until(runner.stdout, "[1] up")
    # Per node: a child in the group, a daemon in its own session, the foreground sleep.
    _wait_for(lambda: len(_sleeps(token)) == 6)

    runner.send_signal(signal.SIGINT)

    assert runner.wait(timeout=30) == 130
    assert "interrupted" in runner.stdout.read()
    assert _sleeps(token) == []
    run_id = records.load_record("ctrl-c-1").run_id
    for rank in (0, 1):
        assert marked_processes(node_marker("ctrl-c-1", run_id, rank)) == []
    assert records.load_record("ctrl-c-1").status == "interrupted"


def test_what_a_task_prints_while_stopping_is_kept(tmp_path: Path, applying) -> None:
    path = _task(
        tmp_path,
        "type: task\nname: ctrl-c-2\n"
        "commands: ['echo started', \"trap 'echo saving checkpoint; exit 143' TERM; "
        'sleep 120 & wait"]\n',
    )
    runner = applying(path, cwd=tmp_path)
    _read_until(runner.stdout, "started")
    time.sleep(0.5)  # the trap is set once the shell reaches `wait`

    runner.send_signal(signal.SIGINT)

    assert runner.wait(timeout=30) == 130
    assert "saving checkpoint" in runner.stdout.read()
    assert "saving checkpoint" in records.log_path("ctrl-c-2").read_text()


@pytest.mark.parametrize(
    ("stop", "code", "said"),
    [
        ("dstack stop", 1, "terminated (stopped)"),
        ("SIGHUP", 130, "interrupted (the terminal closed)"),
    ],
)
def test_a_stop_at_the_prompt_ends_the_run_as_it_says(
    stop: str, code: int, said: str, tmp_path: Path
) -> None:
    path = _task(tmp_path, "type: task\nname: asked-2\ncommands: [echo ran]\n")
    runner = subprocess.Popen(
        [str(DSTACK), "apply", "-f", str(path)],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        seen = _read_bytes_until(runner.stdout, b"Submit the run asked-2? [y/n]: ")
        if stop == "dstack stop":
            stopped = dstack("stop", "asked-2", "-y", cwd=tmp_path)
            assert stopped.returncode == 0, stopped.stderr
        else:
            runner.send_signal(signal.SIGHUP)
        seen += runner.communicate(timeout=30)[0]
    finally:
        runner.kill()

    assert runner.returncode == code
    assert f"Run asked-2 {said}\n".encode() in seen and b"ran" not in seen
    record = records.load_record("asked-2")
    assert (record.status, record.exit_status) == (said.split()[0], code)


def test_max_duration_stops_the_run(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nmax_duration: 1s\ncommands: [echo go, sleep 60]\n")
    started = time.monotonic()

    done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    assert done.returncode == 1
    assert time.monotonic() - started < 20
    assert "terminated (max_duration of 1s passed)" in done.stdout


def test_image_without_docker_engine_is_one_line(tmp_path: Path) -> None:
    path = _task(tmp_path, "type: task\nimage: ubuntu:24.04\ncommands: [echo hi]\n")

    done = dstack("apply", "-f", str(path), "-y", cwd=tmp_path)

    if "not supported yet" in done.stderr:
        raise AssertionError("a Docker engine answers here; this test covers the other case")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "`image: ubuntu:24.04` needs a Docker engine on the local backend" in done.stderr
    assert _no_runs()


def _read_until(stream, needle: str, timeout: float = 30) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"never saw {needle!r} in {seen!r}"
        line = stream.readline()
        assert line, f"output ended before {needle!r}: {seen!r}"
        seen += line
    return seen


def _read_bytes_until(stream, needle: bytes, timeout: float = 30) -> bytes:
    """Read until `needle`, which need not end a line (a prompt does not)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"never saw {needle!r} in {seen!r}"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"output ended before {needle!r}: {seen!r}"
        seen += chunk
    return seen


def _sleeps(prefix: str) -> list[int]:
    """Live `sleep N` processes whose N starts with `prefix`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv[:1] == [b"sleep"] and argv[1].startswith(prefix.encode()) and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_name_that_is_no_run_name_starts_nothing(tmp_path: Path, taskstack_home: Path) -> None:
    task = tmp_path / "task.yml"
    task.write_text("type: task\ncommands: ['true']\n")

    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("dstack")),
            "apply",
            "-f",
            str(task),
            "-y",
            "--name",
            "../escape",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "`--name`" in done.stderr
    assert not (taskstack_home / "escape").exists()
    assert not (taskstack_home / "runs").exists() or not any((taskstack_home / "runs").iterdir())
    assert "Traceback" not in done.stderr


def test_more_nodes_than_this_machine_holds_starts_nothing(
    tmp_path: Path, taskstack_home: Path
) -> None:
    task = tmp_path / "task.yml"
    task.write_text("type: task\nname: crowd-1\nnodes: 100000\ncommands: ['true']\n")

    done = subprocess.run(
        [str(Path(sys.executable).with_name("dstack")), "apply", "-f", str(task), "-y"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "`nodes: 100000` is more than the local backend runs here" in done.stderr
    assert not (taskstack_home / "runs" / "crowd-1").exists()
