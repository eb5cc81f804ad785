"""A recording stand-in for the Pulumi CLI, handed to the Automation API as its `PulumiCommand`.

The Pulumi CLI cannot be installed on these machines. `RecordingPulumi` answers the calls the
Automation API makes the way the CLI does: `stack select` fails with "no stack named ... found"
for an unknown stack, `stack init` creates it, `config set-all`/`get` keep the config,
`preview`/`up`/`destroy` write engine events to the `--event-log` file the SDK watches and
keep resources and outputs per stack, `stack output`/`history`/`ls`/`rm` read them back. Every
call is recorded with its arguments and environment.

What a program would create comes from `resources(plan_json)`, in tests the real program run
under the Pulumi SDK's mocks (`taskstack.stacks.preview`). `fail(operation, stderr)` makes the
next such operation fail with that stderr, as the CLI would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pulumi.automation import PulumiCommand
from pulumi.automation._cmd import CommandResult, OnOutput
from pulumi.automation.errors import create_command_error
from semver import VersionInfo

# A version past 3.181 (inline destroy) and before 3.205 (events over gRPC instead of a file).
CLI_VERSION = VersionInfo(3, 200, 0)
_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

Resources = Callable[[str], list[tuple[str, str]]]


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


@dataclass
class _Stack:
    config: dict[str, str] = field(default_factory=dict)
    resources: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


class RecordingPulumi(PulumiCommand):
    """The CLI stand-in (see the module docstring)."""

    def __init__(self, resources: Resources, outputs: Callable[[str], dict[str, Any]]) -> None:
        # No super().__init__(): it would run `pulumi version`.
        self.command = "pulumi"
        self.version = CLI_VERSION
        self.calls: list[Call] = []
        self.stacks: dict[str, _Stack] = {}
        self._resources = resources
        self._outputs = outputs
        self._failures: dict[str, tuple[str, str]] = {}

    def fail(self, operation: str, stderr: str, stdout: str = "") -> None:
        """Make the next `operation` (`preview`, `up`, `destroy`, ...) fail like the CLI."""
        self._failures[operation] = (stderr, stdout)

    def verbs(self) -> list[str]:
        """The subcommands called so far, in order."""
        return [call.verb for call in self.calls]

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: OnOutput | None = None,
        on_error: OnOutput | None = None,
    ) -> CommandResult:
        """Answer one CLI call like the real CLI, or raise the CLI's error."""
        if "--non-interactive" not in args:
            args.insert(0, "--non-interactive")
        call = Call(args=list(args), env=dict(additional_env))
        self.calls.append(call)

        failure = self._failures.pop(call.verb, None)
        if failure is not None:
            self._write_events(args, [])
            raise create_command_error(
                CommandResult(stdout=failure[1], stderr=failure[0], code=255)
            )

        handler = _HANDLERS.get(call.verb)
        if handler is None:
            raise AssertionError(f"the stand-in CLI does not know `pulumi {' '.join(args)}`")
        stdout, stderr, code = handler(self, args)
        result = CommandResult(stdout=stdout, stderr=stderr, code=code)
        if code != 0:
            raise create_command_error(result)
        return result

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

    # --- the event log the SDK watches -------------------------------------------------

    def _write_events(
        self,
        args: list[str],
        steps: list[tuple[str, str, str, str]],
        changes: dict[str, int] | None = None,
    ) -> None:
        if "--event-log" not in args:
            return
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
        with open(_flag(args, "--event-log"), "a", encoding="utf-8") as log:
            for sequence, event in enumerate(events):
                log.write(json.dumps({"sequence": sequence, "timestamp": now, **event}) + "\n")


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
