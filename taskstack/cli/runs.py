"""`dstack ps`, `dstack logs`, `dstack stop`, `dstack destroy`: runs and the stacks they left.

Runs come from this machine's records; stacks from the engines' state backends, so a stack
left by a crashed apply (or made on another machine) shows up and can be destroyed.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from taskstack.cli.app import app, confirm, console, err_console

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
    """List the runs: active ones, or all with `-a`, newest first; stacks that no apply looks
    after any more (left by a crash) are always listed, marked `stack left`."""
    from rich.table import Table

    from taskstack import records
    from taskstack.apply import leftover_processes
    from taskstack.provision import find_stacks

    listing = find_stacks()
    left = {stack.name: stack for stack in listing.stacks if stack.leftover}
    orphaned = []
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "BACKEND", "NODES", "STATUS", "SUBMITTED", "EXIT"):
        table.add_column(column)
    for record in records.list_records(include_finished=True):
        # A killed apply's local nodes go on running: such a run is listed like a stack left.
        alive = record.status == "aborted" and bool(leftover_processes(record))
        if not (all_runs or record.active or record.name in left or alive):
            continue
        colour = _STATUS_COLOURS.get(record.status, "yellow")
        status = f"[{colour}]{record.status}[/{colour}]"
        if left.pop(record.name, None) is not None:
            status += " [bold red]stack left[/bold red]"
        if alive:
            status += " [bold red]processes left[/bold red]"
            orphaned.append(record.name)
        table.add_row(
            record.name,
            record.backend,
            str(record.nodes_num),
            status,
            _age(records.age_seconds(record)),
            "" if record.exit_status is None else str(record.exit_status),
        )
    for stack in left.values():
        table.add_row(stack.name, f"({stack.engine})", "", "[bold red]stack left[/bold red]")
    console.print(table)

    if any(stack.leftover for stack in listing.stacks):
        err_console.print(
            "[yellow]A stack left behind may still cost money: "
            "`dstack destroy NAME` removes it.[/yellow]"
        )
    for name in orphaned:
        err_console.print(
            f"[yellow]Run {name} was killed but its processes still run: "
            f"`dstack stop {name}` ends them.[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
    for reason in listing.unreachable:
        err_console.print(f"[yellow]stacks not listed: {reason}[/yellow]", highlight=False)


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
    from taskstack.apply import stop_run
    from taskstack.records import load_record

    load_record(run)  # an unknown run is one line, before any question
    if not yes and not confirm(f"Stop the run [bold]{run}[/bold]?"):
        _declined(f"{run} not stopped")
    with console.status(f"Stopping {run} (a cloud run destroys its stack first)..."):
        record = stop_run(run)
    console.print(f"Run [bold]{record.name}[/bold] {record.status}", highlight=False)


@app.command()
def destroy(
    run: Annotated[str, typer.Argument(help="The run (or stack) name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Destroy the stack of a cloud run that no apply looks after (e.g. after a crash).

    Works from the run's record alone; a stack that is already gone is not an error.
    """
    from taskstack.provision import destroy_run

    if not yes and not confirm(f"Destroy the stack of [bold]{run}[/bold]?"):
        _declined(f"the stack of {run} not destroyed")
    with console.status(f"Destroying the stack of {run}...") as status:
        destroy_run(run, on_event=lambda event: status.update(event.message))
    console.print(f"Stack of [bold]{run}[/bold] destroyed", highlight=False)


def _declined(what: str) -> None:
    """The answer was no: say that nothing was done, and exit 1 as a declined apply does."""
    err_console.print(f"[yellow]{what}[/yellow]", highlight=False)
    sys.exit(1)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
