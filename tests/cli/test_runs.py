"""`dstack ps`, `dstack logs`, `dstack stop` over real run records and real runs."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import taskstack.cli.apply  # noqa: F401  (registers the commands)
import taskstack.cli.runs  # noqa: F401
from taskstack import apply, records
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
    again = subprocess.run(
        [str(DSTACK), "apply", "-f", str(path), "-y"], cwd=tmp_path, capture_output=True, text=True
    )
    assert again.returncode == 1
    assert "its processes still run; end them with `dstack stop orphan-1`" in again.stderr
    listed = subprocess.run([str(DSTACK), "ps"], capture_output=True, text=True, timeout=60)
    assert "orphan-1" in listed.stdout and "processes left" in listed.stdout
    assert "`dstack stop orphan-1` ends them" in listed.stderr

    stopped = CliRunner().invoke(app, ["stop", "orphan-1", "-y"])

    assert stopped.exit_code == 0, stopped.output
    assert _marked("orphan-1", 0) == []
    assert records.load_record("orphan-1").status == "terminated"
    assert "orphan-1" not in CliRunner().invoke(app, ["ps"]).output
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


_KILLED_CLOUD_APPLY = """
import sys
from pathlib import Path

import taskstack.stacks.engine as engines
from tests.testbed.fake_engine import FakeEngine

# The settings choose terraform; this process gets an engine that hangs in `up`.
engines.engine_for = lambda settings, name=None: FakeEngine(hang_up=True)

from taskstack import apply

plan = apply.plan_run(Path(sys.argv[1]), cwd=Path(sys.argv[1]).parent, environ={})
apply.execute_run(plan, on_event=lambda event: None)
"""


@pytest.fixture
def fake_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AWS configured with the terraform engine, served by `FakeEngine` (stacks as files)."""
    import taskstack.stacks.engine as engines
    from tests.testbed.catalogs import cpu_catalog
    from tests.testbed.fake_engine import FakeEngine

    monkeypatch.setenv("TASKSTACK_CATALOG", str(cpu_catalog(tmp_path / "catalog")))
    monkeypatch.setenv("TASKSTACK_BACKENDS", "aws")
    monkeypatch.setenv("TASKSTACK_ENGINE", "terraform")
    monkeypatch.setattr(engines, "engine_for", lambda settings, name=None: FakeEngine())
    return tmp_path


def _kill_cloud_apply_in_up(folder: Path, name: str) -> None:
    path = folder / "task.dstack.yml"
    path.write_text(f"type: task\nname: {name}\nimage: busybox\ncommands: [echo hi]\n")
    runner = subprocess.Popen([sys.executable, "-c", _KILLED_CLOUD_APPLY, str(path)], cwd=REPO)
    try:
        _wait_for(lambda: runner.poll() is not None or "up" in _fake_calls(name))
        assert runner.poll() is None, "the apply ended before it reached `up`"
    finally:
        runner.kill()  # SIGKILL: the apply cannot destroy what it was creating
        runner.wait()


def test_a_stack_left_by_a_killed_apply_is_listed_and_destroyed(fake_cloud: Path) -> None:
    from tests.testbed.fake_engine import FakeEngine

    _kill_cloud_apply_in_up(fake_cloud, "crashed-1")

    listed = CliRunner().invoke(app, ["ps"])
    destroyed = CliRunner().invoke(app, ["destroy", "crashed-1", "-y"])
    again = CliRunner().invoke(app, ["destroy", "crashed-1", "-y"])
    after = CliRunner().invoke(app, ["ps"])

    row = next(line for line in listed.output.splitlines() if line.startswith("crashed-1"))
    assert row.split()[:6] == ["crashed-1", "aws", "1", "aborted", "stack", "left"]
    assert "`dstack destroy NAME` removes it" in listed.output
    assert destroyed.exit_code == 0 and "Stack of crashed-1 destroyed" in destroyed.output
    assert again.exit_code == 0  # already gone is success
    assert FakeEngine().list_stacks() == []
    assert "crashed-1" not in after.output and "stack left" not in after.output
    record = records.load_record("crashed-1")
    assert (record.engine, record.stack) == ("terraform", None)


def test_a_stack_without_a_record_is_listed_and_destroyed(fake_cloud: Path) -> None:
    from tests.testbed.fake_engine import FakeEngine
    from tests.testbed.plans import aws_plan

    FakeEngine().preview(aws_plan("elsewhere", nodes=1))

    listed = CliRunner().invoke(app, ["ps"])
    destroyed = CliRunner().invoke(app, ["destroy", "elsewhere", "-y"])
    unknown = CliRunner().invoke(app, ["destroy", "nowhere", "-y"])

    assert any(
        line.split() == ["elsewhere", "(terraform)", "stack", "left"]
        for line in listed.output.splitlines()
    )
    assert destroyed.exit_code == 0
    assert FakeEngine().list_stacks() == []
    assert unknown.exit_code == 1
    assert "no run or stack named nowhere" in str(unknown.exception)


def test_destroy_refuses_a_local_run(tmp_path: Path) -> None:
    _apply(tmp_path, "type: task\nname: here-1\ncommands: [echo hi]\n")

    done = CliRunner().invoke(app, ["destroy", "here-1", "-y"])

    assert done.exit_code == 1
    assert "ran on the local backend" in str(done.exception)


def _fake_calls(name: str) -> list[str]:
    import json

    from taskstack.home import taskstack_home

    state = taskstack_home() / "fake-engine" / f"{name}.json"
    return json.loads(state.read_text())["calls"] if state.exists() else []


def test_apply_on_a_cloud_shows_the_stack_before_asking(fake_cloud: Path) -> None:
    from tests.testbed.fake_engine import FakeEngine

    path = fake_cloud / "task.dstack.yml"
    path.write_text("type: task\nname: asked-2\nnodes: 2\nimage: busybox\ncommands: [echo hi]\n")

    declined = CliRunner().invoke(
        app, ["apply", "-f", str(path), "--engine", "terraform"], input="n\n"
    )

    assert declined.exit_code == 1
    before_prompt = declined.output.split("Submit the run asked-2?")[0]
    assert "Stack asked-2 (terraform)" in before_prompt
    assert re.search(r"^Engine +terraform", before_prompt, re.MULTILINE)
    assert "create fake_instance asked-2-1" in before_prompt
    assert "3 resources: 1 fake_network, 2 fake_instance" in before_prompt
    assert FakeEngine().list_stacks() == []
    assert not records.run_dir("asked-2").exists()


def test_stop_of_a_cloud_run_whose_apply_died_destroys_its_stack(fake_cloud: Path) -> None:
    from tests.testbed.fake_engine import FakeEngine

    _kill_cloud_apply_in_up(fake_cloud, "crashed-2")
    assert FakeEngine().list_stacks() == ["crashed-2"]

    stopped = CliRunner().invoke(app, ["stop", "crashed-2", "-y"])

    assert stopped.exit_code == 0, stopped.output
    assert FakeEngine().list_stacks() == []
    record = records.load_record("crashed-2")
    assert (record.status, record.stack) == ("terminated", None)


_CLOUD_APPLY_SLOW_TO_DESTROY = """
import signal
import sys
import time

from taskstack import records

name = sys.argv[1]
record = records.create_record(records.new_record(
    name=name, run_id="r1", backend="aws", config_path="x", nodes_num=1,
    engine="terraform", stack=name,
))
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
print("running", flush=True)
while not stopping:
    time.sleep(0.05)
time.sleep(6.5)  # destroying the stack: longer than a local run's grace
record = records.finish(record, status="terminated", reason="stopped", exit_status=1)
records.save_record(record.model_copy(update={"stack": None}))
"""


def test_stop_waits_for_a_cloud_apply_to_destroy_and_never_destroys_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskstack.provision as provision

    destroys: list[str] = []
    monkeypatch.setattr(provision, "destroy_run", lambda name, **_: destroys.append(name))
    applying = subprocess.Popen(
        [sys.executable, "-c", _CLOUD_APPLY_SLOW_TO_DESTROY, "slow-1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert applying.stdout is not None and applying.stdout.readline() == "running\n"

        with pytest.raises(RunError, match=r"still destroying its stack after 1s; let it"):
            apply.stop_run("slow-1", grace=0, teardown=1)
        record = apply.stop_run("slow-1", grace=0)
    finally:
        applying.kill()
        applying.wait()

    assert (record.status, record.stack) == ("terminated", None)
    assert destroys == []


def test_stop_of_an_unknown_run_says_so_before_asking() -> None:
    done = subprocess.run(
        [str(DSTACK), "stop", "ghost-1"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )

    assert done.returncode == 1
    assert "Stop the run" not in done.stdout
    assert done.stderr == "error: no run named ghost-1; `dstack ps -a` lists the runs\n"


@pytest.mark.parametrize(
    ("command", "said"),
    [("stop", "keep-1 not stopped"), ("destroy", "the stack of keep-1 not destroyed")],
)
def test_answering_no_says_nothing_was_done(command: str, said: str, tmp_path: Path) -> None:
    _apply(tmp_path, "type: task\nname: keep-1\ncommands: [echo one]\n")
    before = records.load_record("keep-1")

    answered = CliRunner().invoke(app, [command, "keep-1"], input="n\n")

    assert answered.exit_code == 1
    assert answered.output.rstrip().endswith(said), answered.output
    assert records.load_record("keep-1") == before


@pytest.mark.parametrize("stdin", ["at its end", "closed"])
def test_no_answer_at_all_is_a_no(stdin: str, tmp_path: Path) -> None:
    _apply(tmp_path, "type: task\nname: kept-2\ncommands: [echo one]\n")
    redirect = "</dev/null" if stdin == "at its end" else "<&-"

    def answered(*argv: str) -> subprocess.CompletedProcess[str]:
        line = " ".join([str(DSTACK), *argv, redirect])
        return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=60)

    applied = answered("apply", "-f", str(tmp_path / "task.dstack.yml"), "--name", "unasked-1")
    destroyed = answered("destroy", "kept-2")

    assert (applied.returncode, destroyed.returncode) == (1, 1)
    assert applied.stderr.strip().endswith("not submitted"), applied.stderr
    assert destroyed.stderr.strip() == "the stack of kept-2 not destroyed", destroyed.stderr
    assert not records.run_dir("unasked-1").exists()


def test_a_damaged_record_does_not_hide_the_other_runs(tmp_path: Path) -> None:
    _apply(tmp_path, "type: task\nname: fine-1\ncommands: [echo one]\n")
    damaged = records.runs_dir() / "broken-1"
    damaged.mkdir(parents=True)
    (damaged / records.RECORD_FILE).write_text("{not json")

    everything = CliRunner().invoke(app, ["ps", "-a"])

    assert everything.exit_code == 0
    assert "fine-1" in everything.output
    assert "broken-1" not in everything.output
