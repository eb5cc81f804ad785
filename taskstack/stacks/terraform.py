"""The Terraform engine: the plan as `main.tf.json`, driven with the terraform CLI.

Each run gets a working directory under the state folder (`terraform/runs/<run>/`) holding
`main.tf.json`, the frozen plan (`plan.json`), the saved Terraform plan (`tfplan`) and the
JSON event logs of each command. Each run is a Terraform workspace named after it, in the
backend the settings choose (local by default, under `terraform/state/`; s3, gcs, azurerm),
so `list_stacks` is `terraform workspace list`, leftovers of crashed runs included.

terraform runs in its own session (`start_new_session`): a Ctrl+C in the terminal does not
kill it halfway through an apply. We forward the interrupt as one SIGINT, which Terraform
answers by finishing the operations in flight and saving state, then we wait for it. Its
stdout goes to a log file rather than a pipe, so it can finish and save state even if
taskstack itself is killed.

`TF_CLI_CONFIG_FILE` and the rest of the environment reach terraform unchanged, so provider
mirrors configured there are used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskstack.compiler.plan import ClusterPlan
from taskstack.errors import (
    ConcurrentUpdateError,
    EngineMissingError,
    NoCapacityError,
    StackError,
)
from taskstack.home import taskstack_home
from taskstack.runtime.spec import Node
from taskstack.settings import Settings, TerraformStateSettings
from taskstack.stacks import tfjson
from taskstack.stacks.engine import (
    EngineEvent,
    OnEvent,
    PlannedResource,
    StackPreview,
    capacity_error_in,
    first_error_line,
    nodes_from_outputs,
)

log = logging.getLogger(__name__)

UserData = Callable[[ClusterPlan], str | None]

_INSTALL_HINT = (
    "terraform is not installed: install it (https://developer.hashicorp.com/terraform/install)"
    " or use `--engine pulumi`"
)
_LOCK_TEXT = "Error acquiring the state lock"
# How long `destroy` waits for a lock: an apply whose parent was killed may still be running
# in its own session and will release the state when it is done.
_DESTROY_LOCK_TIMEOUT = "300s"
_POLL_SECONDS = 0.2


class TerraformEngine:
    """Creates a run's nodes with the terraform CLI; see the module docstring."""

    name = "terraform"

    def __init__(
        self,
        settings: Settings,
        *,
        binary: str = "terraform",
        user_data: UserData | None = None,
    ) -> None:
        self._settings = settings
        self._binary = binary
        self._user_data = user_data or _default_user_data

    def preview(self, plan: ClusterPlan) -> StackPreview:
        """Write the run's configuration, `init`, `plan -out`, and read `show -json`."""
        self._require_binary()
        workdir = self._workdir(plan.run_name)
        workdir.mkdir(parents=True, exist_ok=True)
        document = tfjson.render(
            plan,
            user_data=_template_literal(self._user_data(plan)),
            aws=self._settings.backends.aws,
            backend=self._backend_block(),
        )
        _write_json(workdir / "main.tf.json", document)
        (workdir / "plan.json").write_text(plan.model_dump_json(), encoding="utf-8")
        (workdir / "tfplan").unlink(missing_ok=True)

        self._init(workdir, run_name=plan.run_name)
        self._run(["plan", "-input=false", "-json", "-out=tfplan"], workdir, plan.run_name)
        shown = self._run(["show", "-json", "tfplan"], workdir, plan.run_name, json_lines=False)
        (workdir / "tfplan.json").write_text(shown, encoding="utf-8")
        return _preview_from_show(plan.run_name, json.loads(shown))

    def saved_plan(self, run_name: str) -> dict[str, Any]:
        """The `terraform show -json` document of the run's last preview, for reviews."""
        path = self._workdir(run_name) / "tfplan.json"
        if not path.exists():
            raise StackError(f"run {run_name} has no Terraform preview; preview it first")
        return json.loads(path.read_text(encoding="utf-8"))

    def up(self, plan: ClusterPlan, on_event: OnEvent | None = None) -> list[Node]:
        """Apply the saved plan of `preview` and return the nodes from `output -json`.

        Raises:
            StackError: `plan` is not the plan that was previewed.
            NoCapacityError, ConcurrentUpdateError: mapped from Terraform's diagnostics.
        """
        workdir = self._workdir(plan.run_name)
        self._check_previewed(plan, workdir)

        self._run(["apply", "-input=false", "-json", "tfplan"], workdir, plan.run_name, on_event)
        (workdir / "tfplan").unlink(missing_ok=True)

        shown = self._run(["output", "-json", "nodes"], workdir, plan.run_name, json_lines=False)
        return nodes_from_outputs(plan, json.loads(shown))

    def destroy(self, run_name: str, on_event: OnEvent | None = None) -> None:
        """Destroy the run's resources, delete its workspace and working directory.

        A run with neither a working directory nor a workspace is already gone: success.
        """
        workdir = self._workdir(run_name)
        if not (workdir / "main.tf.json").exists():
            if run_name in self.list_stacks():
                raise StackError(
                    f"run {run_name} has state in the Terraform backend but its working "
                    f"directory {workdir} is gone; destroy it with terraform from a copy of it"
                )
            return

        # A directory already initialised is not initialised again: an apply orphaned by a
        # killed taskstack may still be running in it.
        if (workdir / ".terraform").is_dir():
            self._run(["workspace", "select", run_name], workdir, run_name, json_lines=False)
        else:
            self._init(workdir, run_name=run_name)
        args = ["destroy", "-input=false", "-json", "-auto-approve"]
        self._run([*args, f"-lock-timeout={_DESTROY_LOCK_TIMEOUT}"], workdir, run_name, on_event)
        self._delete_workspace(workdir, run_name)
        shutil.rmtree(workdir, ignore_errors=True)

    def list_stacks(self) -> list[str]:
        """Workspaces in the Terraform backend other than `default`: one per run."""
        workdir = taskstack_home() / "terraform" / "listing"
        workdir.mkdir(parents=True, exist_ok=True)
        _write_json(workdir / "main.tf.json", {"terraform": {"backend": self._backend_block()}})

        self._run(["init", "-input=false", "-reconfigure"], workdir, "", json_lines=False)
        listed = self._run(["workspace", "list"], workdir, "", json_lines=False)
        names = [line.strip().lstrip("*").strip() for line in listed.splitlines()]
        return sorted(name for name in names if name and name != "default")

    # --- steps ---------------------------------------------------------------------------

    def _workdir(self, run_name: str) -> Path:
        return taskstack_home() / "terraform" / "runs" / run_name

    def _backend_block(self) -> dict[str, Any]:
        return backend_block(self._settings.state.terraform)

    def _init(self, workdir: Path, *, run_name: str) -> None:
        """`init` with the backend, then select (or create) the run's workspace."""
        self._run(["init", "-input=false", "-reconfigure"], workdir, run_name, json_lines=False)
        select = ["workspace", "select", "-or-create", run_name]
        self._run(select, workdir, run_name, json_lines=False)

    def _require_binary(self) -> None:
        """Fail before anything is written when terraform is missing."""
        if shutil.which(self._binary) is None:
            raise EngineMissingError(_INSTALL_HINT)

    def _check_previewed(self, plan: ClusterPlan, workdir: Path) -> None:
        frozen = workdir / "plan.json"
        if not (workdir / "tfplan").exists() or not frozen.exists():
            raise StackError(f"run {plan.run_name} was not previewed; preview it before `up`")
        if frozen.read_text(encoding="utf-8") != plan.model_dump_json():
            raise StackError(
                f"the plan of run {plan.run_name} changed since its preview; preview it again"
            )

    def _delete_workspace(self, workdir: Path, run_name: str) -> None:
        self._run(["workspace", "select", "default"], workdir, run_name, json_lines=False)
        self._run(["workspace", "delete", run_name], workdir, run_name, json_lines=False)

    def _run(
        self,
        args: list[str],
        workdir: Path,
        run_name: str,
        on_event: OnEvent | None = None,
        *,
        json_lines: bool = True,
    ) -> str:
        """Run one terraform command in its own session; its stdout, or a mapped error."""
        command = args[0] if args[0] != "workspace" else f"workspace-{args[1]}"
        stdout_path = workdir / f"{command}.log"
        stderr_path = workdir / f"{command}.err"
        log.info("terraform %s for run %s", " ".join(args), run_name or "(listing)")

        errors: list[str] = []

        def on_line(line: str) -> None:
            if json_lines:
                _handle_json_line(line, errors=errors, on_event=on_event)

        code = self._execute(args, workdir, stdout_path, stderr_path, on_line)
        stdout = stdout_path.read_text(encoding="utf-8", errors="replace")
        if code != 0:
            stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
            raise _command_error(args[0], run_name, errors=errors, text=stderr + "\n" + stdout)
        return stdout

    def _execute(
        self,
        args: list[str],
        workdir: Path,
        stdout_path: Path,
        stderr_path: Path,
        on_line: Callable[[str], None],
    ) -> int:
        # TF_WORKSPACE would override the workspace each run selects for itself.
        inherited = {key: value for key, value in os.environ.items() if key != "TF_WORKSPACE"}
        env = {**inherited, **self._environment()}
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            try:
                process = subprocess.Popen(
                    [self._binary, *args, "-no-color"],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise EngineMissingError(_INSTALL_HINT) from exc
        return _follow(process, stdout_path, on_line)

    def _environment(self) -> dict[str, str]:
        """Credentials reach terraform through its environment, never through a file."""
        return {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            **self._settings.cloud_environment(),
        }


def backend_block(state: TerraformStateSettings) -> dict[str, Any]:
    """The `backend` block for the settings: every run is a workspace of this one backend."""
    options = dict(state.options)
    if state.backend == "local":
        folder = taskstack_home() / "terraform" / "state"
        options.setdefault("path", str(folder / "default.tfstate"))
        options.setdefault("workspace_dir", str(folder))
    elif state.backend == "s3":
        options.setdefault("key", "taskstack/terraform.tfstate")
    elif state.backend == "gcs":
        options.setdefault("prefix", "taskstack")
    elif state.backend == "azurerm":
        options.setdefault("key", "taskstack.tfstate")
    return {state.backend: options}


# --- process and output handling ---------------------------------------------------------


def _follow(process: subprocess.Popen, stdout_path: Path, on_line: Callable[[str], None]) -> int:
    """Hand each stdout line to `on_line` while the process runs; its exit code.

    Ctrl+C is passed on as one SIGINT to terraform's own session, then we wait for it to stop
    cleanly (it saves state) before the interrupt continues up to the caller.
    """
    with open(stdout_path, encoding="utf-8", errors="replace") as stream:
        pending = ""
        try:
            while True:
                finished = process.poll() is not None
                pending = _feed(stream, pending, on_line)
                if finished:
                    break
                time.sleep(_POLL_SECONDS)
        except KeyboardInterrupt:
            _interrupt(process)
            raise
    return process.returncode


def _feed(stream: Any, pending: str, on_line: Callable[[str], None]) -> str:
    """Pass each complete new line on; return the unfinished tail."""
    text = pending + stream.read()
    *lines, tail = text.split("\n")
    for line in lines:
        on_line(line)
    return tail


def _interrupt(process: subprocess.Popen) -> None:
    log.warning("interrupt: asking terraform (pid %s) to stop after its current step", process.pid)
    try:
        os.killpg(process.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    process.wait()


def _handle_json_line(line: str, *, errors: list[str], on_event: OnEvent | None) -> None:
    """One line of `-json` output: collect error diagnostics, pass progress to `on_event`."""
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return
    if not isinstance(message, dict):
        return
    if message.get("type") == "diagnostic" and message.get("@level") == "error":
        diagnostic = message.get("diagnostic") or {}
        errors.append(f"{diagnostic.get('summary', '')}: {diagnostic.get('detail', '')}")
    event = _event_from_message(message)
    if event is not None and on_event is not None:
        on_event(event)


_HOOK_STATUS = {"apply_start": "started", "apply_complete": "done", "apply_errored": "failed"}


def _event_from_message(message: dict[str, Any]) -> EngineEvent | None:
    kind = message.get("type")
    text = str(message.get("@message", ""))
    if kind in _HOOK_STATUS:
        resource = (message.get("hook") or {}).get("resource") or {}
        return EngineEvent(
            kind="resource",
            message=text,
            resource_type=resource.get("resource_type"),
            resource_name=resource.get("addr"),
            action=(message.get("hook") or {}).get("action"),
            status=_HOOK_STATUS[kind],  # type: ignore[arg-type]
        )
    if kind == "diagnostic":
        return EngineEvent(kind="diagnostic", message=text)
    if kind == "change_summary":
        return EngineEvent(kind="summary", message=text)
    return None


def _command_error(command: str, run_name: str, *, errors: list[str], text: str) -> StackError:
    """Terraform's failure as our error: lock held, no capacity, or a stack error."""
    everything = "\n".join([*errors, text])
    if _LOCK_TEXT in everything:
        return ConcurrentUpdateError(f"run {run_name} is being changed by another apply")
    capacity = capacity_error_in(everything)
    if capacity:
        return NoCapacityError(f"run {run_name}: the cloud has no capacity ({capacity})")
    summary = errors[0] if errors else first_error_line(text, marker="Error")
    return StackError(f"terraform {command} failed for run {run_name or '(listing)'}: {summary}")


def _preview_from_show(run_name: str, shown: dict[str, Any]) -> StackPreview:
    resources = []
    for change in shown.get("resource_changes", []):
        actions = [a for a in change.get("change", {}).get("actions", []) if a != "no-op"]
        if not actions or change.get("mode") == "data":
            continue
        action = "replace" if set(actions) == {"create", "delete"} else actions[0]
        resources.append(
            PlannedResource(type=change["type"], name=change["address"], action=action)
        )
    return StackPreview(run_name=run_name, engine="terraform", resources=tuple(resources))


# --- helpers -------------------------------------------------------------------------------


def _default_user_data(plan: ClusterPlan) -> str | None:
    """Cloud-init from `stacks.cloudinit` when that module is there; else boot the image as is."""
    try:
        from taskstack.stacks.cloudinit import user_data  # type: ignore[import-not-found]
    except ImportError:
        log.warning("taskstack.stacks.cloudinit.user_data is missing: nodes get no user data")
        return None
    return user_data(plan)


def _template_literal(text: str | None) -> str | None:
    """`text` as a Terraform string that means exactly `text`.

    In JSON syntax every string is a template: `${` starts an interpolation and `%{` a
    directive, so a first-boot script's `"${1:-}"` fails `terraform plan`. Doubling the
    first character (`$${`, `%%{`) is Terraform's escape for the literal sequence.
    """
    if text is None:
        return None
    return text.replace("${", "$${").replace("%{", "%%{")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
