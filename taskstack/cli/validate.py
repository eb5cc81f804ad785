"""`dstack validate`: check a task file and show what it means."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskstack.cli.app import app

if TYPE_CHECKING:
    from rich.table import Table

    from taskstack.compiler.config import TaskConfig


@app.command()
def validate(
    file: Annotated[Path, typer.Option("--file", "-f", help="The task file, e.g. .dstack.yml.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the normalized config as JSON.")
    ] = False,
) -> None:
    """Check a task file; print a summary, or the normalized config with `--json`."""
    from taskstack.compiler.config import load_task, normalized_json

    task = load_task(file)

    if as_json:
        typer.echo(json.dumps(normalized_json(task), indent=2))
        return
    from taskstack.cli.app import console

    console.print(_summary(task, source=file))


def _summary(task: TaskConfig, *, source: Path) -> Table:
    from rich.table import Table
    from rich.text import Text

    from taskstack.compiler.resources import resources_pretty

    table = Table(title=f"{source} is a valid task", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("name", task.name or "(generated at apply)"),
        ("image", task.image or _default_image(task)),
        ("nodes", task.nodes),
        ("resources", resources_pretty(task.resources)),
        ("spot policy", task.spot_policy),
        ("max price", f"${task.max_price:g}/h" if task.max_price else "-"),
        ("max duration", f"{task.max_duration}s" if task.max_duration else "off"),
        ("retry", _retry_text(task)),
        ("ports", ", ".join(_port_text(port) for port in task.ports) or "-"),
        ("env", ", ".join(_env_text(name, value) for name, value in task.env.items()) or "-"),
        ("commands", "\n".join(task.commands) or "(the image's own)"),
    ]
    for label, value in rows:
        # Text, not markup: commands like `x = [1, 2]` must print as written.
        table.add_row(label, Text(str(value)))
    return table


def _default_image(task: TaskConfig) -> str:
    python = f", python {task.python}" if task.python else ""
    return f"the default image{python}{' with nvcc' if task.nvcc else ''}"


def _retry_text(task: TaskConfig) -> str:
    if task.retry is None:
        return "no"
    return f"on {', '.join(task.retry.on_events)} for {task.retry.duration}s"


def _port_text(port: Any) -> str:
    local = "*" if port.local_port is None else port.local_port
    return f"{local}:{port.container_port}"


def _env_text(name: str, value: str | None) -> str:
    # Values may be secrets: show only which variables are set and which must be supplied.
    return name if value is not None else f"{name} (required at apply)"
