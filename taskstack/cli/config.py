"""`dstack config`: inspect the settings in `~/.taskstack/config.yml` and the environment."""

from __future__ import annotations

import typer

from taskstack.cli.app import app, console

config_app = typer.Typer(help="Inspect taskstack's settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check() -> None:
    """Say which settings are set (secrets masked) and what is missing; exit 1 if anything is."""
    from rich.table import Table

    from taskstack.settings import check_settings

    entries = check_settings()

    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("setting")
    table.add_column("value")
    table.add_column("missing", style="red")
    for entry in entries:
        table.add_row(entry.key, entry.value, entry.missing or "")
    console.print(table)

    missing = [entry for entry in entries if entry.missing]
    if missing:
        console.print(f"[red]{len(missing)} setting(s) missing[/red]")
        raise typer.Exit(1)
    console.print("[green]settings complete[/green]")
