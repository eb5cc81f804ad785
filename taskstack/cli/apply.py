"""`dstack apply`: show the run plan, ask, run the task, stream its logs, exit with its status."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskstack.cli.app import app, confirm, console, err_console

if TYPE_CHECKING:
    from taskstack.apply import ApplyEvent, RunPlan

_SHOWN_OFFERS = 3


class EngineChoice(StrEnum):
    """The IaC engines a cloud run can use."""

    pulumi = "pulumi"
    terraform = "terraform"


@app.command()
def apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="The task file (`.dstack.yml`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env", "-e", help="`K=V` sets an env var; `K` takes it from this environment."
        ),
    ] = None,
    port: Annotated[
        list[str] | None,
        typer.Option("--port", "-p", help="`LOCAL:CONTAINER` publishes a task port elsewhere."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="The run name.")] = None,
    engine: Annotated[
        EngineChoice | None,
        typer.Option("--engine", help="The IaC engine of a cloud run (default: the settings')."),
    ] = None,
) -> None:
    """Run a task: show the plan and what it creates, ask, stream the logs, destroy, exit
    with the task's exit status."""
    from taskstack.apply import execute_run, plan_run

    plan = plan_run(
        file,
        cli_env=env or [],
        ports=port or [],
        name=name,
        engine=engine.value if engine else None,
    )
    console.print(run_plan_table(plan))

    def ask(_preview: object) -> bool:
        return confirm(f"Submit the run [bold]{plan.name}[/bold]?")

    printer = _EventPrinter(nodes=plan.nodes_num)
    try:
        result = execute_run(plan, on_event=printer, confirm=None if yes else ask)
    except KeyboardInterrupt:
        # Stopped during the preview or at the prompt (Ctrl+C, `dstack stop`, the terminal
        # closing): the printer has said how the run ended; its record has the exit status,
        # where typer would exit 130 whatever the signal.
        from taskstack import records

        sys.exit(records.load_record(plan.name).exit_status or 130)
    finally:
        printer.close()
    if result.status == "declined":
        err_console.print("[yellow]not submitted[/yellow]")
    # sys.exit, not typer.Exit: `main()` runs typer with standalone_mode=False, where
    # click turns typer.Exit into a return value and the exit status would be lost.
    sys.exit(result.exit_status)


def run_plan_table(plan: RunPlan) -> Any:
    """The run plan as dstack shows it: the run's settings, then the best offers."""
    from rich.console import Group
    from rich.table import Table

    from taskstack.cli.offer import offers_table

    task = plan.task
    settings = Table(box=None, show_header=False, pad_edge=False)
    settings.add_column(style="bold")
    settings.add_column()
    for label, value in _plan_rows(plan, task):
        settings.add_row(label, value)

    shown = plan.offers[:_SHOWN_OFFERS]
    offers = offers_table(shown, total=len(plan.offers), shown=len(shown))
    return Group(settings, "", offers, "")


def _plan_rows(plan: RunPlan, task: Any) -> list[tuple[str, str]]:
    return [
        ("Configuration", str(plan.config_path)),
        ("Type", "task"),
        ("Nodes", str(plan.nodes_num)),
        ("Resources", _resources(task)),
        ("Spot policy", str(getattr(task, "spot_policy", None) or "on-demand")),
        ("Max price", _max_price(getattr(task, "max_price", None))),
        ("Retry", _retry(getattr(task, "retry", None))),
        ("Max duration", _duration(plan.spec.max_duration)),
        ("Backend", plan.backend),
        *([("Engine", _engine(plan))] if plan.backend != "local" else []),
    ]


def _engine(plan: RunPlan) -> str:
    if plan.engine is not None:
        return plan.engine
    from taskstack.settings import load_settings

    return load_settings().engine


def _resources(task: Any) -> str:
    try:
        from taskstack.compiler.resources import resources_pretty
    except ImportError:
        return str(task.resources)
    return resources_pretty(task.resources)


def _max_price(value: float | None) -> str:
    return "off" if value is None else f"${value:g}"


def _retry(value: Any) -> str:
    if not value:
        return "no"
    events = getattr(value, "on_events", None)
    duration = getattr(value, "duration", None)
    parts = [", ".join(str(event) for event in events)] if events else []
    if duration:
        parts.append(f"for {_duration(duration)}")
    return " ".join(parts) or "yes"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "off"
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def stack_preview_tree(preview: Any) -> Any:
    """The engine's preview: one branch per resource with its action, then counts by type."""
    from rich.text import Text
    from rich.tree import Tree

    tree = Tree(
        Text.assemble(("Stack ", "bold"), (preview.run_name, "bold"), f" ({preview.engine})")
    )
    for resource in preview.resources:
        # Text, not markup: resource names may hold brackets (`aws_instance.node[0]`).
        tree.add(
            Text.assemble(
                (f"{resource.action} ", "green"), (resource.type, "cyan"), " ", resource.name
            )
        )
    counts = ", ".join(f"{count} {kind}" for kind, count in preview.counts.items())
    tree.add(Text(f"{len(preview.resources)} resources: {counts or 'none'}", style="bold"))
    return tree


def _past(action: str | None) -> str:
    return {"create": "created", "delete": "destroyed", "update": "updated"}.get(
        action or "", action or "done"
    )


UPLOAD_BAR_BYTES = 8 << 20
"""Below this a working directory uploads faster than a bar can be read."""


class _EventPrinter:
    """Renders the run's events: the stack preview, the engine's progress as a live status,
    log lines (prefixed by rank on multi-node runs), and how the run ended."""

    def __init__(self, *, nodes: int) -> None:
        self.nodes = nodes
        self._status: Any = None
        self._uploads: Any = None
        self._upload_tasks: dict[int, Any] = {}

    def close(self) -> None:
        """Stop the live status and the upload bars, if they are showing."""
        if self._uploads is not None:
            self._uploads.stop()
            self._uploads = None
            self._upload_tasks.clear()
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: ApplyEvent) -> None:
        from taskstack import apply
        from taskstack.runtime import job
        from taskstack.stacks.engine import EngineEvent

        if isinstance(event, job.LogLine):
            self._line(event)
        elif isinstance(event, apply.UploadProgress):
            self._upload(event)
        elif isinstance(event, EngineEvent):
            self._engine_event(event)
        elif isinstance(event, apply.Previewed) and event.preview.stack is not None:
            self.close()
            console.print(stack_preview_tree(event.preview.stack))
        elif isinstance(event, apply.StepStarted) and event.step == "preview":
            if event.detail in ("pulumi", "terraform"):
                self._show(f"Previewing the stack with {event.detail}...")
        elif isinstance(event, apply.StepStarted) and event.step == "provision":
            console.print(f"[dim]Provisioning: {event.detail}[/dim]", highlight=False)
            if self._cloud(event.detail):
                self._show("Creating the stack...")
        elif isinstance(event, apply.NodesUp):
            self.close()
            if any(node.instance_id for node in event.nodes):
                addresses = ", ".join(f"{n.rank}: {n.address}" for n in event.nodes)
                console.print(f"[dim]Nodes up ({addresses}); connecting...[/dim]")
        elif isinstance(event, apply.StepStarted) and event.step == "teardown":
            self._show("Tearing down...")
        elif isinstance(event, apply.StepStarted) and event.step == "stop":
            err_console.print(f"[yellow]Stopping the run ({event.detail})...[/yellow]")
        elif isinstance(event, apply.StillAlive):
            err_console.print(
                f"[yellow]Still alive: {event.alive}. If this process is killed before it "
                f"is done, remove it with `{event.command}`.[/yellow]",
                highlight=False,
            )
        elif isinstance(event, apply.AttemptStarted):
            self.close()
            err_console.print(
                f"[yellow]Attempt {event.number} (retry on {event.event}): "
                f"{event.reason}[/yellow]",
                highlight=False,
            )
        elif isinstance(event, job.PortsForwarded):
            for url in event.urls:
                console.print(f"[bold]Port open:[/bold] {url}", highlight=False)
        elif isinstance(event, job.JobStopping) and (self.nodes > 1 or event.kind != "failure"):
            err_console.print(f"[yellow]Stopping the run: {event.reason}[/yellow]")
        elif isinstance(event, job.NodeExited) and event.exit_code != 0 and self.nodes > 1:
            err_console.print(f"[red]node {event.rank} exited with {event.exit_code}[/red]")
        elif isinstance(event, apply.RunFinished):
            self.close()
            self._finished(event.result)

    def _upload(self, event: Any) -> None:
        """A progress bar per node for a snapshot big enough to wait for."""
        if event.total < UPLOAD_BAR_BYTES:
            return
        if self._uploads is None:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            if self._status is not None:
                self._status.stop()
                self._status = None
            self._uploads = Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
            )
            self._uploads.start()
        task = self._upload_tasks.get(event.rank)
        if task is None:
            task = self._uploads.add_task(f"upload to node {event.rank}", total=event.total)
            self._upload_tasks[event.rank] = task
        self._uploads.update(task, completed=event.sent)
        if all(t.finished for t in self._uploads.tasks):
            self.close()

    def _show(self, text: str) -> None:
        if self._status is None:
            self._status = console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    @staticmethod
    def _cloud(detail: str) -> bool:
        return " via pulumi" in detail or " via terraform" in detail

    def _engine_event(self, event: Any) -> None:
        """A resource finished or failed: one line; in between, the live status says what
        the engine is working on."""
        if event.kind != "resource":
            if event.kind == "diagnostic":
                err_console.print(f"[yellow]{event.message}[/yellow]", highlight=False)
            return
        name = event.resource_name or event.resource_type or "resource"
        if event.status == "started":
            self._show(f"{event.action or 'working on'}: {name}")
        elif event.status == "done":
            console.print(f"  [green]✓[/green] {name} {_past(event.action)}", highlight=False)
        elif event.status == "failed":
            console.print(f"  [red]✗[/red] {name} {event.action or ''} failed", highlight=False)

    def _line(self, event: Any) -> None:
        from rich.text import Text

        text = Text(event.text)
        if self.nodes > 1:
            text = Text.assemble((f"[{event.rank}] ", "cyan"), text)
        console.print(text, soft_wrap=True, highlight=False)

    def _finished(self, result: Any) -> None:
        colour = {"done": "green", "interrupted": "yellow", "terminated": "yellow"}.get(
            result.status, "red"
        )
        reason = f" ({result.reason})" if result.reason else ""
        attempts = f" after {result.attempts} attempts" if result.attempts > 1 else ""
        console.print(
            f"Run [bold]{result.name}[/bold] [{colour}]{result.status}[/{colour}]"
            f"{attempts}{reason}",
            highlight=False,
        )
