"""A recording stand-in for the Pulumi CLI, handed to the Automation API as its `PulumiCommand`.

The Pulumi CLI cannot be installed on these machines. `RecordingPulumi` answers the calls the
Automation API makes the way the CLI does: `stack select` fails with "no stack named ... found"
for an unknown stack, `stack init` creates it, `config set-all`/`get` keep the config,
`preview`/`up`/`destroy` write engine events to the `--event-log` file the SDK watches and
keep resources and outputs per stack, `stack output`/`history`/`ls`/`rm` read them back. Every
call is recorded with its arguments and environment.

The answers are worked out here, in the test's process, but each call also runs as a process
of its own, started by the engine's `SessionPulumiCommand.run` as it starts the real CLI: a
small Python program (`_CLI_PROGRAM`) that writes the events to the `--event-log` file it is
given, prints the answer's stdout and stderr and exits with its code. It records its pid,
session, process group and the signals it received (`processes()`). `hold(verb)` keeps the
next such call running until `release(verb)`; a SIGINT ends a held call the way Pulumi ends a
cancelled update (state unchanged, "update canceled", exit code 255).

What a program would create comes from `resources(plan_json)`, in tests the real program run
under the Pulumi SDK's mocks (`taskstack.stacks.preview`). `fail(operation, stderr)` makes the
next such operation fail with that stderr, as the CLI would.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pulumi.automation import CommandResult, OnOutput
from semver import VersionInfo

from taskstack.stacks.pulumi_engine import SessionPulumiCommand

# A version past 3.181 (inline destroy) and before 3.205 (events over gRPC instead of a file).
CLI_VERSION = VersionInfo(3, 200, 0)
_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Resources = Callable[[str], list[tuple[str, str]]]

_REPLY_VARIABLE = "STANDIN_PULUMI_REPLY"
_PROCESSES_FILE = "processes.jsonl"
# A held call that nobody releases gives up, so that a broken test fails instead of hanging.
_HOLD_SECONDS = 60.0


@dataclass
class Call:
    """One CLI invocation: its arguments (as the CLI gets them) and its extra environment."""

    args: list[str]
    env: dict[str, str]

    @property
    def verb(self) -> str:
        """The subcommand, e.g. `preview`, `up`, `stack init`, `config set-all`."""
        words = [arg for arg in self.args if not arg.startswith("-")]
        if words and words[0] in ("stack", "config") and len(words) > 1:
            return f"{words[0]} {words[1]}"
        return words[0] if words else ""


@dataclass(frozen=True)
class CliProcess:
    """One CLI process, as it recorded itself just before it exited."""

    verb: str
    argv: list[str]
    pid: int
    sid: int
    pgid: int
    signals: list[str]
    cancelled: bool


@dataclass
class _Stack:
    config: dict[str, str] = field(default_factory=dict)
    resources: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class RecordingPulumi(SessionPulumiCommand):
    """The CLI stand-in (see the module docstring); `scratch` holds its program and records."""

    def __init__(
        self, resources: Resources, outputs: Callable[[str], dict[str, Any]], *, scratch: Path
    ) -> None:
        # No super().__init__(): it would run `pulumi version`.
        scratch.mkdir(parents=True, exist_ok=True)
        self.command = str(_install_program(scratch))
        self.version = CLI_VERSION
        self.scratch = scratch
        self.calls: list[Call] = []
        self.stacks: dict[str, _Stack] = {}
        self._resources = resources
        self._outputs = outputs
        self._failures: dict[str, tuple[str, str]] = {}
        self._holds: set[str] = set()
        self._events: list[str] = []

    def fail(self, operation: str, stderr: str, stdout: str = "") -> None:
        """Make the next `operation` (`preview`, `up`, `destroy`, ...) fail like the CLI."""
        self._failures[operation] = (stderr, stdout)

    def hold(self, operation: str) -> None:
        """Keep the next `operation`'s process running until `release` or a SIGINT."""
        self._holds.add(operation)

    def verbs(self) -> list[str]:
        """The subcommands called so far, in order."""
        return [call.verb for call in self.calls]

    def processes(self) -> list[CliProcess]:
        """The CLI processes that have exited so far, in order."""
        return read_processes(self.scratch)

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: OnOutput | None = None,
        on_error: OnOutput | None = None,
    ) -> CommandResult:
        """Work out the CLI's answer, then have a CLI process give it through the engine."""
        call = Call(args=list(args), env=dict(additional_env))
        self.calls.append(call)
        before = copy.deepcopy(self.stacks)

        reply = self._answer(call, args)
        reply_path = self.scratch / f"reply-{len(self.calls)}.json"
        reply_path.write_text(json.dumps(reply), encoding="utf-8")
        env = {**additional_env, _REPLY_VARIABLE: str(reply_path)}
        try:
            return super().run(args, cwd, env, on_output, on_error)
        finally:
            finished = self.processes()
            if finished and finished[-1].cancelled:
                self.stacks = before  # a cancelled update changes nothing here

    def _answer(self, call: Call, args: list[str]) -> dict[str, Any]:
        """What the CLI process prints, writes to the event log and exits with."""
        self._events = []
        failure = self._failures.pop(call.verb, None)
        if failure is not None:
            self._write_events(args, [])
            stdout, stderr, code = failure[1], failure[0], 255
        else:
            handler = _HANDLERS.get(call.verb)
            if handler is None:
                raise AssertionError(f"the stand-in CLI does not know `pulumi {' '.join(args)}`")
            stdout, stderr, code = handler(self, args)
        # What a held call answers instead when a SIGINT cancels it: no step was taken.
        cancelled = {
            "stdout": stdout,
            "stderr": "error: update canceled",
            "code": 255,
            "events": _event_lines([]) if "--event-log" in args else [],
        }
        held = call.verb in self._holds
        self._holds.discard(call.verb)
        return {
            "verb": call.verb,
            "stdout": stdout,
            "stderr": stderr,
            "code": code,
            "events": self._events,
            "on_cancel": cancelled,
            "hold": held,
            "hold_seconds": _HOLD_SECONDS,
            "ready": str(_hold_file(self.scratch, call.verb, "ready")),
            "release": str(_hold_file(self.scratch, call.verb, "release")),
            "records": str(self.scratch / _PROCESSES_FILE),
        }

    # --- subcommands -------------------------------------------------------------------

    def _stack_select(self, args: list[str]) -> tuple[str, str, int]:
        name = _flag(args, "--stack")
        if name not in self.stacks:
            return "", f"error: no stack named '{name}' found", 255
        return "", "", 0

    def _stack_init(self, args: list[str]) -> tuple[str, str, int]:
        name = args[args.index("init") + 1]
        if name in self.stacks:
            return "", f"error: stack '{name}' already exists", 255
        self.stacks[name] = _Stack()
        return f"Created stack '{name}'", "", 0

    def _config_set_all(self, args: list[str]) -> tuple[str, str, int]:
        stack = self.stacks[_flag(args, "--stack")]
        for index, arg in enumerate(args):
            if arg in ("--plaintext", "--secret"):
                key, _, value = args[index + 1].partition("=")
                stack.config[key] = value
        return "", "", 0

    def _config_set(self, args: list[str]) -> tuple[str, str, int]:
        stack = self.stacks[_flag(args, "--stack")]
        # `config set KEY --plaintext --stack NAME --non-interactive -- VALUE`
        key = args[args.index("set") + 1]
        stack.config[key] = args[args.index("--") + 1]
        return "", "", 0

    def _config_get(self, args: list[str]) -> tuple[str, str, int]:
        name = _flag(args, "--stack")
        key = args[args.index("get") + 1]
        if key not in self.stacks[name].config:
            return "", f"error: configuration key '{key}' not found for stack '{name}'", 255
        return json.dumps({"value": self.stacks[name].config[key], "secret": False}), "", 0

    def _preview(self, args: list[str]) -> tuple[str, str, int]:
        stack = self.stacks[_flag(args, "--stack")]
        planned = self._resources(stack.config["taskstack:plan"])
        steps = [("create", typ, name, "pre") for typ, name in planned]
        self._write_events(args, steps, changes={"create": len(planned)})
        return f"Previewing update ({_flag(args, '--stack')})", "", 0

    def _up(self, args: list[str]) -> tuple[str, str, int]:
        name = _flag(args, "--stack")
        stack = self.stacks[name]
        plan_json = stack.config["taskstack:plan"]
        created = self._resources(plan_json)
        steps = [(op, typ, rname, kind) for typ, rname in created for op, kind in _CREATE]
        self._write_events(args, steps, changes={"create": len(created)})
        stack.resources = created
        stack.outputs = self._outputs(plan_json)
        stack.history.append(_history_entry("update", resources=len(created)))
        return f"Updating ({name})", "", 0

    def _destroy(self, args: list[str]) -> tuple[str, str, int]:
        name = _flag(args, "--stack")
        stack = self.stacks[name]
        steps = [("delete", typ, rname, kind) for typ, rname in stack.resources for kind in _DEL]
        self._write_events(args, steps, changes={"delete": len(stack.resources)})
        stack.history.append(_history_entry("destroy", resources=len(stack.resources)))
        stack.resources, stack.outputs = [], {}
        return f"Destroying ({name})", "", 0

    def _stack_output(self, args: list[str]) -> tuple[str, str, int]:
        return json.dumps(self.stacks[_flag(args, "--stack")].outputs), "", 0

    def _stack_history(self, args: list[str]) -> tuple[str, str, int]:
        history = list(reversed(self.stacks[_flag(args, "--stack")].history))
        return json.dumps(history[:1] if "--page-size" in args else history), "", 0

    def _stack_rm(self, args: list[str]) -> tuple[str, str, int]:
        name = args[-1]
        stack = self.stacks.get(name)
        if stack is None:
            return "", f"error: no stack named '{name}' found", 255
        if stack.resources and "--force" not in args:
            return "", f"error: '{name}' still has resources; use --force", 255
        del self.stacks[name]
        return "", "", 0

    def _stack_ls(self, args: list[str]) -> tuple[str, str, int]:
        listing = [
            {"name": name, "current": False, "updateInProgress": False}
            for name in sorted(self.stacks)
        ]
        return json.dumps(listing), "", 0

    # --- the events the CLI process writes to the log the SDK watches ---------------

    def _write_events(
        self,
        args: list[str],
        steps: list[tuple[str, str, str, str]],
        changes: dict[str, int] | None = None,
    ) -> None:
        """Have this call's CLI process write these events (if the SDK asked for a log)."""
        if "--event-log" in args:
            self._events = _event_lines(steps, changes)


def _event_lines(
    steps: list[tuple[str, str, str, str]], changes: dict[str, int] | None = None
) -> list[str]:
    """An engine event log: prelude, one event per step, the summary, the closing cancel."""
    events: list[dict[str, Any]] = [{"preludeEvent": {"config": {}}}]
    for op, typ, name, kind in steps:
        urn = f"urn:pulumi:stack::taskstack::{typ}::{name}"
        metadata = {"op": op, "urn": urn, "type": typ, "provider": ""}
        key = "resourcePreEvent" if kind == "pre" else "resOutputsEvent"
        events.append({key: {"metadata": metadata}})
    if changes is not None:
        summary = {"maybeCorrupt": False, "durationSeconds": 1, "resourceChanges": changes}
        events.append({"summaryEvent": summary})
    events.append({"cancelEvent": {}})

    now = int(time.time())
    return [
        json.dumps({"sequence": sequence, "timestamp": now, **event})
        for sequence, event in enumerate(events)
    ]


_CREATE = (("create", "pre"), ("create", "outputs"))
_DEL = ("pre", "outputs")

_HANDLERS: dict[str, Callable[[RecordingPulumi, list[str]], tuple[str, str, int]]] = {
    "stack select": RecordingPulumi._stack_select,
    "stack init": RecordingPulumi._stack_init,
    "stack output": RecordingPulumi._stack_output,
    "stack history": RecordingPulumi._stack_history,
    "stack rm": RecordingPulumi._stack_rm,
    "stack ls": RecordingPulumi._stack_ls,
    "config set-all": RecordingPulumi._config_set_all,
    "config set": RecordingPulumi._config_set,
    "config get": RecordingPulumi._config_get,
    "preview": RecordingPulumi._preview,
    "up": RecordingPulumi._up,
    "destroy": RecordingPulumi._destroy,
}


def _flag(args: list[str], name: str) -> str:
    """The value after the last occurrence of `name` (the SDK appends `--stack` at the end)."""
    index = len(args) - 1 - args[::-1].index(name)
    return args[index + 1]


def _history_entry(kind: str, *, resources: int) -> dict[str, Any]:
    now = datetime.now(UTC).strftime(_DATETIME_FORMAT)
    return {
        "kind": kind,
        "startTime": now,
        "endTime": now,
        "message": "",
        "environment": {},
        "config": {},
        "result": "succeeded",
        "resourceChanges": {"create" if kind == "update" else "delete": resources},
    }


# --- the CLI processes ---------------------------------------------------------------------


def read_processes(scratch: Path) -> list[CliProcess]:
    """The CLI processes of the stand-in whose scratch folder is `scratch`, in order."""
    path = scratch / _PROCESSES_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [CliProcess(**json.loads(line)) for line in lines]


def wait_until_held(scratch: Path, operation: str, *, timeout: float = _HOLD_SECONDS) -> int:
    """The pid of the held `operation`'s process, once it is running."""
    ready = _hold_file(scratch, operation, "ready")
    deadline = time.monotonic() + timeout
    while not ready.exists() or not ready.read_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"no held `pulumi {operation}` started within {timeout:g} s")
        time.sleep(0.02)
    return int(ready.read_text())


def release(scratch: Path, operation: str) -> None:
    """Let the held `operation` finish with its answer."""
    _hold_file(scratch, operation, "release").touch()


def _hold_file(scratch: Path, operation: str, kind: str) -> Path:
    return scratch / f"held-{operation.replace(' ', '-')}.{kind}"


def _install_program(scratch: Path) -> Path:
    """The CLI program as an executable file: this interpreter, isolated, without `site`."""
    program = scratch / "pulumi"
    program.write_text(f"#!{sys.executable} -IS\n{_CLI_PROGRAM}", encoding="utf-8")
    program.chmod(0o755)
    return program


# The CLI process: it takes its answer from the file the stand-in names, writes the events
# to the `--event-log` path of its own arguments, prints, records itself and exits. The
# standard library only, so that each call starts quickly.
_CLI_PROGRAM = """
import json, os, signal, sys, time

reply = json.loads(open(os.environ["STANDIN_PULUMI_REPLY"], encoding="utf-8").read())
record = {
    "verb": reply["verb"], "argv": sys.argv[1:], "pid": os.getpid(),
    "sid": os.getsid(0), "pgid": os.getpgid(0), "signals": [], "cancelled": False,
}
signal.signal(signal.SIGINT, lambda signum, frame: record["signals"].append("SIGINT"))

if reply["hold"]:
    with open(reply["ready"], "w", encoding="utf-8") as ready:
        ready.write(str(os.getpid()))
    deadline = time.monotonic() + reply["hold_seconds"]
    while not os.path.exists(reply["release"]) and not record["signals"]:
        if time.monotonic() > deadline:
            reply.update(stderr="error: the stand-in was held and never released", code=3)
            break
        time.sleep(0.02)
    if record["signals"]:
        # Pulumi's answer to a first Ctrl+C: it stops the update gracefully and fails.
        record["cancelled"] = True
        reply.update(reply["on_cancel"])

if "--event-log" in sys.argv:
    path = sys.argv[len(sys.argv) - sys.argv[::-1].index("--event-log")]
    with open(path, "a", encoding="utf-8") as log:
        log.writelines(line + "\\n" for line in reply["events"])
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.stdout.flush()
sys.stderr.flush()
with open(reply["records"], "a", encoding="utf-8") as records:
    records.write(json.dumps(record) + "\\n")
sys.exit(reply["code"])
"""
