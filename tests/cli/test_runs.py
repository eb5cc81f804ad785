"""`dstack ps`, `dstack logs`, `dstack stop` over real run records and real runs."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from typer.testing import CliRunner

import taskstack.cli.apply  # noqa: F401  (registers the commands)
import taskstack.cli.runs  # noqa: F401
from taskstack import records
from taskstack.cli.app import app
from taskstack.errors import RunError
from taskstack.runtime.local import marked_processes, node_marker

REPO = Path(__file__).resolve().parents[2]
DSTACK = REPO / ".venv" / "bin" / "dstack"


def _apply(folder: Path, text: str) -> int:
    path = folder / "task.dstack.yml"
    path.write_text(text)
    return CliRunner().invoke(app, ["apply", "-f", str(path), "-y"]).exit_code


def test_ps_lists_active_runs_and_all_with_a(tmp_path: Path) -> None:
    _apply(tmp_path, "type: task\nname: first-1\ncommands: [echo one]\n")
    _apply(tmp_path, "type: task\nname: second-1\ncommands: [exit 2]\n")

    active = CliRunner().invoke(app, ["ps"])
    everything = CliRunner().invoke(app, ["ps", "-a"])

    assert active.exit_code == 0 and "first-1" not in active.output
    rows = {line.split()[0]: line.split() for line in everything.output.splitlines()[1:]}
    assert rows["first-1"][:4] == ["first-1", "local", "1", "done"]
    assert rows["second-1"][3] == "failed" and rows["second-1"][-1] == "2"


def test_logs_print_what_the_nodes_printed(tmp_path: Path) -> None:
    _apply(
        tmp_path, "type: task\nname: talk-1\nnodes: 2\ncommands: ['echo hi $DSTACK_NODE_RANK']\n"
    )

    shown = CliRunner().invoke(app, ["logs", "talk-1"])

    assert shown.exit_code == 0
    assert sorted(shown.output.splitlines()) == ["[0] hi 0", "[1] hi 1"]


def test_logs_of_an_unknown_run_is_one_line() -> None:
    done = subprocess.run([str(DSTACK), "logs", "ghost-1"], capture_output=True, text=True)

    assert done.returncode == 1
    assert done.stderr == "error: no run named ghost-1; `dstack ps -a` lists the runs\n"


def test_stop_ends_a_running_run_and_its_processes(tmp_path: Path) -> None:
    path = tmp_path / "task.dstack.yml"
    path.write_text("type: task\nname: busy-1\nnodes: 2\ncommands: [echo up, sleep 600]\n")
    runner = subprocess.Popen(
        [str(DSTACK), "apply", "-f", str(path), "-y"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: "running" in CliRunner().invoke(app, ["ps"]).output)

        stopped = subprocess.run(
            [str(DSTACK), "stop", "busy-1", "-y"], capture_output=True, text=True, timeout=60
        )

        assert stopped.returncode == 0 and "Run busy-1 terminated" in stopped.stdout
        assert runner.wait(timeout=30) == 1
        assert _marked("busy-1", 0) == _marked("busy-1", 1) == []
        assert records.load_record("busy-1").status == "terminated"
        assert "busy-1" not in CliRunner().invoke(app, ["ps"]).output
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            runner.wait(timeout=30)


def test_stop_of_a_run_whose_apply_died_kills_what_it_left(tmp_path: Path) -> None:
    path = tmp_path / "task.dstack.yml"
    path.write_text("type: task\nname: orphan-1\ncommands: [echo up, sleep 600]\n")
    runner = subprocess.Popen(
        [str(DSTACK), "apply", "-f", str(path), "-y"], cwd=tmp_path, stdout=subprocess.DEVNULL
    )
    # `bash -c` execs its last command: the node is the one `sleep` process.
    _wait_for(lambda: _running_with_nodes("orphan-1") and len(_marked("orphan-1", 0)) == 1)
    runner.kill()  # SIGKILL: the apply cannot clean up; its nodes live on
    runner.wait()
    assert records.load_record("orphan-1").status == "aborted"

    stopped = CliRunner().invoke(app, ["stop", "orphan-1", "-y"])

    assert stopped.exit_code == 0, stopped.output
    assert _marked("orphan-1", 0) == []
    assert records.load_record("orphan-1").status == "terminated"
    left = sorted(path.name for path in records.run_dir("orphan-1").iterdir())
    assert [name for name in left if not name.startswith(".")] == ["logs.txt", "run.json"]


def _marked(name: str, rank: int) -> list[int]:
    return marked_processes(node_marker(name, records.load_record(name).run_id, rank))


def _running_with_nodes(name: str) -> bool:
    try:
        return bool(records.load_record(name).nodes)
    except RunError:
        return False


def _wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
