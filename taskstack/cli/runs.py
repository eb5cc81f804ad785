"""`dstack ps`, `dstack logs`, `dstack stop`: the runs this machine applied, from their records."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from taskstack.cli.app import app, console

_STATUS_COLOURS = {
    "done": "green",
    "running": "cyan",
    "provisioning": "cyan",
    "submitted": "cyan",
    "failed": "red",
    "aborted": "red",
}


@app.command()
def ps(
    all_runs: Annotated[
        bool, typer.Option("--all", "-a", help="Show finished runs too, not only active ones.")
    ] = False,
) -> None:
    """List the runs: active ones, or all with `-a`, newest first."""
    from rich.table import Table

    from taskstack import records

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "BACKEND", "NODES", "STATUS", "SUBMITTED", "EXIT"):
        table.add_column(column)
    for record in records.list_records(include_finished=all_runs):
        colour = _STATUS_COLOURS.get(record.status, "yellow")
        table.add_row(
            record.name,
            record.backend,
            str(record.nodes_num),
            f"[{colour}]{record.status}[/{colour}]",
            _age(records.age_seconds(record)),
            "" if record.exit_status is None else str(record.exit_status),
        )
    console.print(table)


@app.command()
def logs(run: Annotated[str, typer.Argument(help="The run name.")]) -> None:
    """Print the logs of a run (every node's output; prefixed by rank on multi-node runs)."""
    from taskstack import records

    records.load_record(run)  # a clear error for a run that does not exist
    with open(records.log_path(run), "rb") as handle:
        sys.stdout.flush()
        while chunk := handle.read(65536):
            sys.stdout.buffer.write(chunk)
    sys.stdout.flush()


@app.command()
def stop(
    run: Annotated[str, typer.Argument(help="The run name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Stop a run: every node's processes end and the record says `terminated`."""
    from rich.prompt import Confirm

    from taskstack.apply import stop_run

    if not yes and not Confirm.ask(f"Stop the run [bold]{run}[/bold]?", console=console):
        sys.exit(1)
    record = stop_run(run)
    console.print(f"Run [bold]{record.name}[/bold] {record.status}", highlight=False)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
