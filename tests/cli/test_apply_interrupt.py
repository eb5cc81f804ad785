"""Ctrl+C on `dstack apply` of a cloud run, in every phase, and a second Ctrl+C.

The apply is the real CLI in a child process (`tests.testbed.fake_apply`) whose engine is
`FakeEngine`; its nodes are the session's test hosts. The test sends SIGINT as a terminal
would, in the middle of the preview, of `up`, and of the run; and, during the preview,
SIGTERM (as `dstack stop` does) or SIGHUP. Afterwards: exit status 130 (1 after SIGTERM),
no stack, no key, no container, and the record says `interrupted` (`terminated`). A second
SIGINT during the teardown says what is still alive and the command that removes it; the
teardown still finishes. After `kill -9` of the apply, the nodes' dead man's switch fires
within its grace, `dstack ps` lists the run and `dstack destroy` removes its stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskstack import records
from taskstack.apply import stop_run
from taskstack.errors import RunError
from taskstack.home import taskstack_home
from taskstack.stacks.keys import keys_dir
from tests.testbed.catalogs import cpu_catalog
from tests.testbed.fake_apply import OPTIONS_ENV
from tests.testbed.fake_engine import FakeEngine
from tests.testbed.hosts import TestHost, remove_lost_disks

REPO = Path(__file__).resolve().parents[2]
RUN = "ctrl-c"


def _start_apply(
    tmp_path: Path, hosts: list[TestHost], *, nodes: int = 1, **faults: object
) -> subprocess.Popen:
    task = tmp_path / "task.dstack.yml"
    task.write_text(
        f"type: task\nname: {RUN}\nnodes: {nodes}\nimage: localhost/busybox:latest\n"
        "resources: {cpu: 2, memory: 8GB}\ncommands: [echo started, sleep 300]\n"
    )
    machines = [
        {"address": host.address, "authorized_keys": str(host.authorized_keys_path)}
        for host in hosts
    ]
    environ = {
        **os.environ,
        "TASKSTACK_CATALOG": str(cpu_catalog(tmp_path / "catalog")),
        "TASKSTACK_BACKENDS": "aws",
        "TASKSTACK_ENGINE": "terraform",
        "AWS_REGION": "eu-west-1",
        "TASKSTACK_AWS_IMAGE": "ami-0fake",
        "TASKSTACK_AWS_SSH_USER": "root",
        OPTIONS_ENV: json.dumps({"hosts": machines, **faults}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.testbed.fake_apply", "apply", "-f", str(task), "-y"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _calls() -> list[str] | None:
    """The engine calls on the run's stack after the one that made it; None: no stack."""
    path = taskstack_home() / "fake-engine" / f"{RUN}.json"
    try:
        return json.loads(path.read_text())["calls"]
    except (OSError, ValueError):
        return None


def _running() -> bool:
    try:
        return records.load_record(RUN).status == "running"
    except RunError:
        return False


def _wait_for(apply: subprocess.Popen, condition: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert apply.poll() is None, f"the apply ended early: {apply.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _nothing_left(hosts: list[TestHost], *, status: str = "interrupted") -> None:
    assert FakeEngine().list_stacks() == []
    assert not (keys_dir() / RUN).exists()
    assert [host.containers() for host in hosts] == [[] for _ in hosts]
    assert records.load_record(RUN).status == status


PHASES = {
    "preview": ({"preview_seconds": 60}, lambda: _calls() == []),
    "up": ({"up_seconds": 10}, lambda: _calls() == ["up"]),
    "run": ({}, _running),
}


@pytest.mark.parametrize("phase", PHASES)
def test_ctrl_c_destroys_the_stack_and_exits_130(
    phase: str, tmp_path: Path, test_hosts: list[TestHost]
) -> None:
    faults, reached = PHASES[phase]
    apply = _start_apply(tmp_path, test_hosts, **faults)
    try:
        _wait_for(apply, reached)

        apply.send_signal(signal.SIGINT)
        _, stderr = apply.communicate(timeout=120)
    finally:
        apply.kill()

    assert apply.returncode == 130, stderr
    assert "Still alive" not in stderr
    _nothing_left(test_hosts)


@pytest.mark.parametrize(
    ("stop", "status", "code"),
    [("dstack stop", "terminated", 1), ("SIGHUP", "interrupted", 130)],
)
def test_a_stop_during_the_preview_destroys_its_stack(
    stop: str, status: str, code: int, tmp_path: Path, test_hosts: list[TestHost]
) -> None:
    faults, reached = PHASES["preview"]
    apply = _start_apply(tmp_path, test_hosts, **faults)
    try:
        _wait_for(apply, reached)

        if stop == "dstack stop":
            stop_run(RUN)  # SIGTERM to the apply, which tears its run down itself
        else:
            apply.send_signal(signal.SIGHUP)  # the terminal closed
        stdout, stderr = apply.communicate(timeout=120)
    finally:
        apply.kill()

    assert apply.returncode == code, stderr
    assert f"Run {RUN} {status}" in stdout
    _nothing_left(test_hosts, status=status)


@pytest.mark.parametrize("phase", ["preview", "run"])
def test_a_second_ctrl_c_says_what_is_alive_and_the_teardown_finishes(
    phase: str, tmp_path: Path, test_hosts: list[TestHost]
) -> None:
    faults, reached = PHASES[phase]
    apply = _start_apply(tmp_path, test_hosts, destroy_seconds=3, **faults)
    try:
        _wait_for(apply, reached)
        apply.send_signal(signal.SIGINT)
        _wait_for(apply, lambda: "destroy" in (_calls() or []))

        apply.send_signal(signal.SIGINT)
        _, stderr = apply.communicate(timeout=120)
    finally:
        apply.kill()

    assert apply.returncode == 130, stderr
    alive = " ".join(stderr.split())
    assert f"Still alive: stack {RUN} (terraform; nodes " in alive
    assert f"remove it with `dstack destroy {RUN}`" in alive
    _nothing_left(test_hosts)


GRACE = 6


def _start_watchdogs(
    tmp_path: Path, hosts: list[TestHost], heartbeat: Path, sessions: list[subprocess.Popen]
) -> list[Path]:
    """The nodes' dead man's switch, on each test host through its sshd; each powers "off"
    by leaving a file the test can see. Returns those files; the SSH sessions that run the
    switches go to `sessions`."""
    from taskstack.stacks.cloudinit import watchdog_script

    fired = []
    for index, host in enumerate(hosts):
        marker = tmp_path / f"powered-off-{index}"
        script = tmp_path / f"watchdog-{index}.sh"
        script.write_text(
            watchdog_script(
                grace=GRACE,
                heartbeat=str(heartbeat),
                poweroff=f"touch {marker}",
                check_seconds=0.5,
            )
        )
        session = subprocess.Popen(
            host.ssh_argv("sh", str(script)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sessions.append(session)
        fired.append(marker)
    return fired


def test_after_kill_9_the_switch_fires_and_destroy_removes_the_stack(
    tmp_path: Path, test_hosts: list[TestHost], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import taskstack.cli.runs  # noqa: F401  (registers ps and destroy)
    import taskstack.stacks.engine as engines
    from taskstack.cli.app import app

    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    ahead = time.time() + 300  # as at first boot: the first beat is dated ahead
    os.utime(heartbeat, (ahead, ahead))
    sessions: list[subprocess.Popen] = []
    fired = _start_watchdogs(tmp_path, test_hosts, heartbeat, sessions)
    apply = _start_apply(
        tmp_path,
        test_hosts,
        nodes=2,
        heartbeat_file=str(heartbeat),
        heartbeat_seconds=1,
    )
    try:
        _wait_for(apply, _running)
        _wait_for(apply, lambda: abs(time.time() - heartbeat.stat().st_mtime) < 3)

        apply.kill()
        apply.wait()
        killed = time.monotonic()
        quiet = [marker.exists() for marker in fired]
        _wait_for_files(fired, timeout=GRACE + 20)
        fired_after = time.monotonic() - killed
    finally:
        apply.kill()
        for session in sessions:
            session.kill()  # a switch has ended by now, or the test failed
            session.wait()
        # What a powered-off machine would have lost with it: containers and run folders.
        for host in test_hosts:
            names = host.containers()
            if names:
                host.docker("rm", "-f", *names)
        remove_lost_disks(RUN)

    monkeypatch.setenv("TASKSTACK_BACKENDS", "aws")
    monkeypatch.setenv("TASKSTACK_ENGINE", "terraform")
    monkeypatch.setattr(engines, "engine_for", lambda settings, name=None: FakeEngine())
    listed = CliRunner().invoke(app, ["ps"])
    destroyed = CliRunner().invoke(app, ["destroy", RUN, "-y"])

    assert quiet == [False, False]  # the beats held the switch while the apply lived
    assert fired_after < GRACE + 4
    row = next(line for line in listed.output.splitlines() if line.startswith(RUN))
    assert row.split()[:6] == [RUN, "aws", "2", "aborted", "stack", "left"]
    assert destroyed.exit_code == 0, destroyed.output
    assert FakeEngine().list_stacks() == []
    assert not (keys_dir() / RUN).exists()


def _wait_for_files(paths: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        assert time.monotonic() < deadline, f"not all of {paths} appeared"
        time.sleep(0.1)
