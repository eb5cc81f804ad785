"""Ctrl+C and `kill -9` of `dstack apply` on the cloud in a box.

The apply is the real CLI in a child process (`tests.testbed.cloud_apply`) with the real
Terraform engine and AWS provider against moto; nothing of the product is swapped. The
child runs in its own session, and the test sends SIGINT to its whole process group, as a
terminal's Ctrl+C does: the engine runs in sessions of its own, so it must not be killed
half-way by that signal, and the apply must still leave nothing behind.

The test cannot see the child's events, so it watches moto as EC2 would (`_Cloud`): each of
the run's instances that moto reports running gets a test host at its private address,
with the public key of the instance's key pair authorized; the runtime in the child waits
for the node's sshd with backoff. When a machine "powers off" (its dead man's switch
fired), the instance is terminated in moto, which is what AWS does for
`instance_initiated_shutdown_behavior = terminate`.

Processes of the run on this machine are found twice over: every descendant of the child
seen while it ran (checked again once it exited, by pid and start time), and every process
whose environment carries the child's mark (orphans of a killed child keep it). Each
scenario is one stack, in a subnet of its own; the three Ctrl+C applies run side by side.
`TALLY` (printed when the module ends) counts the faults injected and what was left behind.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from taskstack import records
from taskstack.compiler.plan import RUN_TAG
from taskstack.errors import RunError
from taskstack.home import taskstack_home
from taskstack.stacks import cloudinit
from tests.testbed.cloud_apply import OPTIONS_ENV
from tests.testbed.cloudbox import live_instances, run_processes, run_resources
from tests.testbed.hosts import Testbed, TestHost, remove_lost_disks
from tests.testbed.moto import MotoServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# The runs' subnets (`SUBNETS`) lie in here: inside the testbed's 10.200.0.0/16, below its
# auto-allocated upper half, and away from the 10.200.0.0/24 of the other cloud tests, whose
# hosts (perhaps in another pytest session at the same time) stand at the addresses their
# own moto hands out.
SUBNETS_CIDR = "10.200.64.0/22"
MARK_ENV = "TASKSTACK_TEST_CHILD"


GRACE = 8
"""The switch's grace in these runs (`heartbeat_grace`; 600 s by default)."""
HEARTBEAT_SECONDS = 1
CHECK_SECONDS = 0.5
"""How often the switch under test looks at the heartbeat (15 s on a node)."""

TALLY: Counter[str] = Counter()
WALL: dict[str, str] = {}
"""Per scenario: seconds in all, and when (from the start) each step of the apply came."""


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    injected = TALLY["SIGINT to the process group"] + TALLY["SIGKILL of the apply"]
    left = sum(count for what, count in TALLY.items() if what.startswith("left: "))
    details = ", ".join(f"{what} {count}" for what, count in sorted(TALLY.items()))
    walls = "; ".join(f"{name} {timeline}" for name, timeline in WALL.items())
    print(
        f"\ninterrupt tally: faults injected {injected}, resources left behind {left} "
        f"({details}); wall: {walls}"
    )


# --- the scenarios ---------------------------------------------------------------------------


def _terraform_plans(apply: _Apply) -> bool:
    """terraform plan runs with the AWS provider it started."""
    plans = [p for p in apply.current if p.program == "terraform" and p.argv[1:2] == ("plan",)]
    return any(p.ppid == plan.pid for plan in plans for p in apply.current if p.is_provider)


def _instance_being_created(apply: _Apply) -> bool:
    """terraform apply has started creating the instance and not finished it."""
    events = _apply_log(apply.run)
    started = ("apply_start", "aws_instance.node_0") in events
    return started and ("apply_complete", "aws_instance.node_0") not in events


def _task_running(apply: _Apply) -> bool:
    return _record_status(apply.run) == "running"


PHASES: dict[str, Callable[[_Apply], bool]] = {
    "preview": _terraform_plans,
    "up": _instance_being_created,
    "run": _task_running,
}
SUBNETS = {
    "preview": "10.200.64.0/24",
    "up": "10.200.65.0/24",
    "run": "10.200.66.0/24",
    "kill": "10.200.67.0/24",
}
"""One subnet per run: moto hands out addresses per subnet, and hosts must not collide."""


def test_ctrl_c_in_each_phase_destroys_its_stack_and_exits_130(
    cloud: _Cloud, tmp_path: Path
) -> None:
    # Three applies side by side, one stack each: in a row, their Terraform cycles would
    # take most of this module's time budget.
    started = time.monotonic()
    applies = {
        phase: _Apply(tmp_path / phase, cloud, run=f"ic-{phase}", nodes=1, subnet=SUBNETS[phase])
        for phase in PHASES
    }
    try:
        _wait(lambda: _interrupt_on_reaching(applies), timeout=300, what="every phase")
        _wait(lambda: _all_ended(applies), timeout=300, what="the ends")
    finally:
        for apply in applies.values():
            apply.kill()
    listed = _ps(applies["run"])  # any apply's environment lists every run
    outcomes = {phase: _ctrl_c_outcome(apply, cloud, listed) for phase, apply in applies.items()}
    for phase, apply in applies.items():
        WALL[f"ctrl+c in {phase}"] = apply.timeline(started)
    WALL["the three side by side"] = f"{time.monotonic() - started:.1f} s"

    expected = {
        phase: {
            "exit status": 130,
            "record": "interrupted",
            "stderr": "clean",
            "engine in sessions of its own": True,
            "stack resources at the Ctrl+C": phase != "preview",
            # An instance is created to the end even when Ctrl+C comes in the middle of
            # it, then destroyed: terraform was not cut off half-way.
            "instances": [] if phase == "preview" else ["terminated"],
            "instance created to the end": phase != "preview",
            "left": {},
        }
        for phase in PHASES
    }
    assert outcomes == expected, "\n\n".join(a.output() for a in applies.values())
    assert len(cloud.hosts_of("ic-run")) == 1  # its node ran the task
    assert cloud.errors == []


def _interrupt_on_reaching(applies: dict[str, _Apply]) -> bool:
    """Ctrl+C each apply whose phase has come; True once all have had theirs."""
    table = _process_table()
    for phase, apply in applies.items():
        if apply.ended(table):
            assert "sigint" in apply.marks, f"ic-{phase} ended early:\n{apply.output()}"
        elif "sigint" not in apply.marks and PHASES[phase](apply):
            apply.at_interrupt = run_resources(apply.cloud.moto, apply.run)
            apply.interrupt()
    return all("sigint" in apply.marks for apply in applies.values())


def _all_ended(applies: dict[str, _Apply]) -> bool:
    table = _process_table()
    # A list, not a generator: every apply still running is observed, not just the first.
    return all([apply.ended(table) for apply in applies.values()])


def _ctrl_c_outcome(apply: _Apply, cloud: _Cloud, listed: str) -> dict[str, object]:
    stderr = apply.stderr
    return {
        "exit status": apply.returncode,
        "record": _record_status(apply.run),
        "stderr": stderr if "Traceback" in stderr or "Still alive" in stderr else "clean",
        "engine in sessions of its own": (
            bool(apply.engine_processes()) and apply.engine_in_our_group() == []
        ),
        "stack resources at the Ctrl+C": bool(apply.at_interrupt),
        "instances": sorted(cloud.instances_of(apply.run).values()),
        "instance created to the end": (
            ("apply_complete", "aws_instance.node_0") in apply.apply_events
        ),
        "left": _leftovers(apply, cloud, listed),
    }


def test_after_kill_9_the_switch_fires_and_destroy_removes_the_stack(
    cloud: _Cloud, tmp_path: Path
) -> None:
    started = time.monotonic()
    run = "ic-kill"
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    ahead = time.time() + cloudinit.BOOT_ALLOWANCE_SECONDS  # first boot dates it ahead
    os.utime(heartbeat, (ahead, ahead))
    cloud.boot = lambda host, instance: _start_switch(cloud, host, instance, heartbeat)
    options = {"heartbeat_seconds": HEARTBEAT_SECONDS, "heartbeat_grace": GRACE}
    apply = _Apply(
        tmp_path, cloud, run=run, nodes=2, subnet=SUBNETS["kill"], heartbeat=heartbeat, **options
    )
    try:
        apply.wait_for(lambda: _task_running(apply) and len(cloud.switches) == 2)
        # The first beat landed: the heartbeat is no longer dated ahead.
        apply.wait_for(lambda: _beaten_within(heartbeat, HEARTBEAT_SECONDS + 1))
        apply.marks["beating"] = time.monotonic()
        quiet = dict(cloud.powered_off)

        apply.kill9()
        killed = time.time()
        _wait(lambda: len(cloud.powered_off) == 2, timeout=GRACE + 30, what="both power-offs")
        fired_after = sorted(round(at - killed, 1) for at in cloud.powered_off.values())
        _wait(lambda: live_instances(cloud.moto) == [], timeout=30, what="terminations")
        apply.marks["powered off"] = time.monotonic()
    finally:
        apply.kill()
    killed_left = apply.leftover_processes()  # what the killed apply left on this machine
    cloud.remove_hosts()  # the machines are off: their containers and disks went with them
    remove_lost_disks(run)
    before = apply.dstack("ps")
    destroyed = apply.dstack("destroy", run, "-y")
    apply.marks["destroyed"] = time.monotonic()
    left = _leftovers(apply, cloud, _ps(apply))
    WALL["kill -9 in run"] = apply.timeline(started)
    WALL["kill -9 in run"] += f"; switches fired {fired_after} s after the kill"

    assert quiet == {}  # the beats held both switches while the apply lived
    assert all(GRACE - HEARTBEAT_SECONDS - 1 <= after <= GRACE + 5 for after in fired_after), (
        fired_after
    )
    assert killed_left == []
    row = next(line for line in before.stdout.splitlines() if line.startswith(run))
    assert row.split()[:6] == [run, "aws", "2", "aborted", "stack", "left"]
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert f"Stack of {run} destroyed" in destroyed.stdout
    assert left == {}, left
    assert sorted(cloud.instances_of(run).values()) == ["terminated", "terminated"]
    assert cloud.errors == []


# --- the cloud's side: machines for the run's instances ---------------------------------------


@pytest.fixture
def cloud(
    aws_in_moto: MotoServer,
    terraform_cli: Path,
    testbed: Testbed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[_Cloud]:
    """EC2's side of the box for one test (see `_Cloud`); every host goes in `finally`."""
    monkeypatch.setenv("COLUMNS", "200")  # `dstack ps` rows on one line each
    cloud = _Cloud(aws_in_moto, testbed, tmp_path)
    with _subnet_kept_here(testbed):
        cloud.start()
        try:
            yield cloud
        finally:
            cloud.close()


@dataclass
class _Cloud:
    """What EC2 does around the runs' instances, driven from moto's API.

    A thread polls DescribeInstances for instances tagged with a run that are running; for
    each new one it starts a test host at its private address authorizing the public key of
    its key pair (DescribeKeyPairs with IncludePublicKey, as EC2 puts it in place), then runs
    `boot` on it (first boot: the dead man's switch). A machine that powers off leaves a file
    holding the time; the thread then terminates its instance in moto.
    """

    moto: MotoServer
    testbed: Testbed
    folder: Path
    boot: Callable[[TestHost, dict], None] | None = None
    hosts: dict[str, TestHost] = field(default_factory=dict)
    """By instance id."""
    runs: dict[str, str] = field(default_factory=dict)
    """The run of each instance that got a host."""
    switches: dict[str, subprocess.Popen] = field(default_factory=dict)
    powered_off: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    applies: list[_Apply] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="cloud", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching, end the applies and the switches' SSH sessions, remove every host."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for apply in self.applies:
            apply.end()
        for session in self.switches.values():
            session.kill()
            session.wait()
        self.remove_hosts()

    def hosts_of(self, run: str | None = None) -> list[TestHost]:
        """The hosts made for the instances of `run` (of every run: None)."""
        return [host for iid, host in self.hosts.items() if run in (None, self.runs[iid])]

    def live_hosts(self, run: str | None = None) -> list[TestHost]:
        """The hosts of `run` not removed yet."""
        return [h for h in self.hosts_of(run) if any(h is t for t in self.testbed.hosts)]

    def remove_hosts(self, run: str | None = None) -> list[str]:
        """Remove the hosts of `run` (all: None); what is left of them (empty when all went)."""
        for host in self.live_hosts(run):
            self.testbed.remove_host(host)
        return [item for host in self.hosts_of(run) for item in self.testbed.leftovers(host)]

    def power_off_mark(self, instance_id: str) -> Path:
        return self.folder / f"powered-off-{instance_id}"

    def instances_of(self, run: str) -> dict[str, str]:
        """Every instance of `run` moto knows (terminated ones too) and its state."""
        reservations = self.ec2().describe_instances(Filters=[_tagged(run)])["Reservations"]
        return {i["InstanceId"]: i["State"]["Name"] for r in reservations for i in r["Instances"]}

    def ec2(self):
        return self.moto.client("ec2")

    def _watch(self) -> None:
        ec2 = self.ec2()
        while not self._stop.is_set():
            try:
                self._boot_new_instances(ec2)
                self._terminate_powered_off(ec2)
            except Exception as exc:  # reported by the test, not lost in the thread
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self._stop.wait(0.2)

    def _boot_new_instances(self, ec2) -> None:
        reservations = ec2.describe_instances(
            Filters=[
                {"Name": "instance-state-name", "Values": ["running"]},
                {"Name": "tag-key", "Values": [RUN_TAG]},
            ]
        )["Reservations"]
        for instance in (i for r in reservations for i in r["Instances"]):
            if instance["InstanceId"] in self.hosts:
                continue
            key = ec2.describe_key_pairs(KeyNames=[instance["KeyName"]], IncludePublicKey=True)
            host = self.testbed.create_host(
                address=instance["PrivateIpAddress"],
                authorized_key=key["KeyPairs"][0]["PublicKey"],
            )
            self.hosts[instance["InstanceId"]] = host
            tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags", [])}
            self.runs[instance["InstanceId"]] = tags[RUN_TAG]
            if self.boot is not None:
                self.boot(host, instance)

    def _terminate_powered_off(self, ec2) -> None:
        for instance_id in self.hosts:
            mark = self.power_off_mark(instance_id)
            if instance_id in self.powered_off or not mark.exists():
                continue
            self.powered_off[instance_id] = float(mark.read_text())
            # AWS: a power-off from inside ends the instance (shutdown behavior `terminate`).
            ec2.terminate_instances(InstanceIds=[instance_id])


@contextlib.contextmanager
def _subnet_kept_here(testbed: Testbed) -> Iterator[None]:
    """Route the runs' subnets onto this session's bridge while a test runs.

    The apply connects to a node as soon as `up` returns, which may be before the test host
    stands at its address; without this route those first SSH attempts would follow the
    default route off this machine (TESTBED.md's network rule). On the bridge nobody answers
    them until the host's own /32 route exists. The metric keeps it apart from the same
    route of another session.
    """
    route = [SUBNETS_CIDR, "dev", testbed.bridge, "metric", str(1000 + os.getpid() % 50000)]
    subprocess.run(["ip", "route", "add", *route], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", *route], check=False, capture_output=True)


# --- the dead man's switch on a test host ------------------------------------------------------


def _start_switch(cloud: _Cloud, host: TestHost, instance: dict, heartbeat: Path) -> None:
    """Run the switch from the instance's user data (as moto holds it) on `host`, over SSH.

    Three parts of the script are the machine's, not the switch's, and are swapped for the
    test's: the heartbeat path (test hosts share one filesystem), the power-off (a machine
    here cannot power off: the command leaves a file holding the time, and `_Cloud`
    terminates the instance), and the check interval (15 s on a node; the fire time is
    measured to within it). The grace stays what the run's plan put there.
    """
    instance_id = instance["InstanceId"]
    ec2 = cloud.ec2()
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    user_data = base64.b64decode(attribute["UserData"]["Value"]).decode()
    mark = cloud.power_off_mark(instance_id)
    script = _observable(_switch_in(user_data), heartbeat=heartbeat, mark=mark)
    path = cloud.folder / f"switch-{instance_id}.sh"
    path.write_text(script)
    with open(cloud.folder / f"switch-{instance_id}.log", "wb") as log:
        cloud.switches[instance_id] = subprocess.Popen(
            host.ssh_argv("sh", str(path)), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


def _switch_in(user_data: str) -> str:
    """The watchdog script the user data writes to its path (a quoted here-document)."""
    found = re.search(
        rf"cat > {re.escape(cloudinit.WATCHDOG_PATH)} <<'(\w+)'\n(.*?)^\1$",
        user_data,
        flags=re.DOTALL | re.MULTILINE,
    )
    assert found, f"no watchdog script in the user data:\n{user_data}"
    return found.group(2)


def _observable(script: str, *, heartbeat: Path, mark: Path) -> str:
    """The switch with the test's heartbeat, check interval and power-off (see
    `_start_switch`); each swapped text must be there exactly once."""
    assert f"-gt {GRACE} ]" in script, "the run's grace did not reach the user data"
    written, marked = shlex.quote(f"{mark}.new"), shlex.quote(str(mark))
    swaps = {
        f"heartbeat={shlex.quote(cloudinit.HEARTBEAT_FILE)}\n": (
            f"heartbeat={shlex.quote(str(heartbeat))}\n"
        ),
        f"sleep {cloudinit.WATCHDOG_CHECK_SECONDS:g}\n": f"sleep {CHECK_SECONDS:g}\n",
        # Written aside and renamed, so the test never reads a half-written time.
        "\nsystemctl poweroff\n": f"\ndate +%s.%N > {written} && mv {written} {marked}\n",
    }
    for old, new in swaps.items():
        assert script.count(old) == 1, f"{old!r} is not once in the switch:\n{script}"
        script = script.replace(old, new)
    return script


# --- the apply in a child process -------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    pid: int
    ppid: int
    pgrp: int
    state: str
    start: int
    argv: tuple[str, ...] = ()

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name if self.argv else ""

    @property
    def is_provider(self) -> bool:
        return self.program.startswith("terraform-provider-")

    @property
    def is_engine(self) -> bool:
        return self.program == "terraform" or self.is_provider

    def __str__(self) -> str:
        return f"{self.pid}: {' '.join(self.argv)}"


class _Apply:
    """`dstack apply -f TASK -y` in a child process of its own session, watched from /proc.

    The run's stack gets `subnet`; its nodes' heartbeat is the file `heartbeat` (test hosts
    share this machine's files); `options` are `cloud_apply`'s other overrides.
    """

    def __init__(
        self,
        folder: Path,
        cloud: _Cloud,
        *,
        run: str,
        nodes: int,
        subnet: str,
        heartbeat: Path | None = None,
        **options: object,
    ) -> None:
        self.run = run
        self.cloud = cloud
        self.mark = uuid.uuid4().hex
        self.job = folder / "job"
        self.job.mkdir(parents=True)
        options["heartbeat_file"] = str(heartbeat or folder / "heartbeat")
        (self.job / ".dstack.yml").write_text(
            f"type: task\nname: {run}\nnodes: {nodes}\nimage: localhost/busybox:latest\n"
            "resources: {cpu: 2, memory: 8GB}\ncommands: [echo started, sleep 300]\n"
        )
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "TASKSTACK_AWS_SUBNET_CIDR": subnet,
            MARK_ENV: self.mark,
            OPTIONS_ENV: json.dumps(options),
        }
        self._stdout = folder / "apply.out"
        self._stderr = folder / "apply.err"
        self.seen: dict[tuple[int, int], _Process] = {}
        self.current: list[_Process] = []
        self.apply_events: set[tuple[str, str]] = set()
        self.marks: dict[str, float] = {}
        self.at_interrupt: list[str] = []
        """The stack's resources in moto when the test sent SIGINT."""
        argv = [sys.executable, "-m", "tests.testbed.cloud_apply", "apply", "-f", ".dstack.yml"]
        with open(self._stdout, "wb") as stdout, open(self._stderr, "wb") as stderr:
            self.process = subprocess.Popen(
                [*argv, "-y"],
                cwd=self.job,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # as a shell makes a foreground job its own group
            )
        self.pid = self.process.pid
        cloud.applies.append(self)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")

    def output(self) -> str:
        return self._stdout.read_text(errors="replace") + self.stderr

    def observe(self, table: dict[int, _Process] | None = None) -> None:
        """Note the child's processes now (and the engine's progress, while its log exists);
        `table` is this machine's processes, when the caller has just read them."""
        table = table if table is not None else _process_table()
        self.current = [_with_argv(process) for process in _descendants(table, self.pid)]
        for process in self.current:
            self.seen[(process.pid, process.start)] = process
        self.apply_events |= _apply_log(self.run)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 240) -> None:
        def ready() -> bool:
            assert not self.ended(), f"the apply ended early:\n{self.output()}"
            return condition()

        _wait(ready, timeout=timeout, what=f"run {self.run}", cloud=self.cloud)

    def ended(self, table: dict[int, _Process] | None = None) -> bool:
        """Whether the child has exited; while it runs, `observe` it."""
        if self.process.poll() is not None:
            self.marks.setdefault("exited", time.monotonic())
            return True
        self.observe(table)
        return False

    def interrupt(self) -> None:
        """Ctrl+C in a terminal: SIGINT to the whole foreground process group."""
        TALLY["SIGINT to the process group"] += 1
        self.marks["sigint"] = time.monotonic()
        os.killpg(self.pid, signal.SIGINT)

    def kill9(self) -> None:
        TALLY["SIGKILL of the apply"] += 1
        self.marks["sigkill"] = time.monotonic()
        self.process.kill()
        self.process.wait()

    def kill(self) -> None:
        """Whatever happened, the child is gone after this (by its pid)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def dstack(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Another `dstack` command of this machine, e.g. `ps` (carries the same mark)."""
        argv = [sys.executable, "-m", "taskstack.cli.main", *args]
        return subprocess.run(
            argv, cwd=self.job, env=self.env, capture_output=True, text=True, timeout=300
        )

    def timeline(self, started: float) -> str:
        """`sigint 20.1 s, exited 45.3 s`: when each mark came, from `started`."""
        return ", ".join(f"{name} {at - started:.1f} s" for name, at in self.marks.items())

    def engine_processes(self) -> list[_Process]:
        return [process for process in self.seen.values() if process.is_engine]

    def engine_in_our_group(self) -> list[str]:
        """Engine processes a SIGINT to the apply's group would have reached."""
        return [str(p) for p in self.engine_processes() if p.pgrp == self.pid]

    def leftover_processes(self) -> list[str]:
        """Processes of the run still alive: seen under the child, or carrying its mark."""
        return sorted(str(_with_argv(process)) for process in self._leftovers().values())

    def end(self) -> None:
        """After the test: the child, and whatever of it a failed test left, killed by pid."""
        self.kill()
        for pid in self._leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _leftovers(self) -> dict[int, _Process]:
        table = _process_table()
        left = {
            pid: table[pid]
            for (pid, start) in self.seen
            if pid in table and table[pid].start == start and table[pid].state != "Z"
        }
        for process in table.values():
            if process.state != "Z" and process.pid not in left and _marked(process.pid, self):
                left[process.pid] = process
        return left


def _process_table() -> dict[int, _Process]:
    """Every process on this machine, without its command line (`_with_argv` reads it)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", "rb") as file:  # 3x faster than Path.read_text
                stat = file.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields are counted after it.
        fields = stat.rsplit(b")", 1)[1].split()
        table[int(entry.name)] = _Process(
            pid=int(entry.name),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            state=fields[0].decode(),
            start=int(fields[19]),
        )
    return table


def _with_argv(process: _Process) -> _Process:
    try:
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return process
    return dataclasses.replace(
        process, argv=tuple(part.decode(errors="replace") for part in argv if part)
    )


def _descendants(table: dict[int, _Process], root: int) -> list[_Process]:
    children: dict[int, list[_Process]] = {}
    for process in table.values():
        children.setdefault(process.ppid, []).append(process)
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child.pid)
    return found


def _marked(pid: int, apply: _Apply) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARK_ENV}={apply.mark}".encode() in environ


# --- what is left ------------------------------------------------------------------------------


def _leftovers(apply: _Apply, cloud: _Cloud, listed: str) -> dict[str, list[str]]:
    """Everything of the run that outlived it, by kind, counted in `TALLY`; `listed` is what
    `dstack ps` printed after the run. The run's test hosts are removed on the way, after
    their containers and processes were looked at."""
    workdir = taskstack_home() / "terraform" / "runs" / apply.run
    found = {
        "cloud resources": run_resources(cloud.moto, apply.run),  # instances not terminated too
        "stacks": [line for line in listed.splitlines() if apply.run in line],
        "terraform workdirs": [str(workdir)] if workdir.exists() else [],
        "local processes": apply.leftover_processes(),
        "on test hosts": [
            item for host in cloud.live_hosts(apply.run) for item in _run_traces(host, apply.run)
        ],
        "of test hosts": cloud.remove_hosts(apply.run),
    }
    for what, items in found.items():
        TALLY[f"left: {what}"] += len(items)
    return {what: items for what, items in found.items() if items}


def _tagged(run: str) -> dict[str, object]:
    return {"Name": f"tag:{RUN_TAG}", "Values": [run]}


def _ps(apply: _Apply) -> str:
    """What `dstack ps` prints: active runs, and stacks that no apply looks after."""
    listed = apply.dstack("ps")
    output = listed.stdout + listed.stderr
    # An engine that could not be asked lists nothing: that would hide a stack left.
    assert listed.returncode == 0 and "stacks not listed" not in output, output
    return output


def _containers(host: TestHost) -> list[str]:
    try:
        return host.containers()
    except Exception as exc:  # a host whose engine is gone has none left, but say so
        return [f"(docker on {host.address}: {exc})"]


def _run_traces(host: TestHost, run: str) -> list[str]:
    """Containers and processes of the run on a host, before the host goes."""
    return [*_containers(host), *run_processes(host, run)]


def _apply_log(run: str) -> set[tuple[str, str]]:
    """(type, resource) of the hook messages in the run's `terraform apply` JSON log."""
    path = taskstack_home() / "terraform" / "runs" / run / "apply.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return set()
    events = set()
    for line in lines:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            resource = (message.get("hook") or {}).get("resource") or {}
            if resource.get("addr"):
                events.add((message.get("type", ""), resource["addr"]))
    return events


def _beaten_within(heartbeat: Path, seconds: float) -> bool:
    return abs(time.time() - heartbeat.stat().st_mtime) < seconds


def _record_status(run: str) -> str | None:
    try:
        return records.load_record(run).status
    except RunError:
        return None


def _wait(
    condition: Callable[[], bool], *, timeout: float, what: str, cloud: _Cloud | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if cloud is not None and cloud.errors:
            raise AssertionError(f"the cloud's thread failed: {cloud.errors}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
