"""`dstack plan`: what a task would create on a cloud, offline, with no credentials."""

from __future__ import annotations

import gc
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taskstack.cli.app import app, command_ends_process

if TYPE_CHECKING:
    from rich.text import Text
    from rich.tree import Tree

    from taskstack.stacks.preview import TaskPreview


class Backend(StrEnum):
    """The clouds `dstack plan` can preview."""

    aws = "aws"
    gcp = "gcp"
    azure = "azure"


@app.command()
def plan(
    file: Annotated[Path, typer.Option("--file", "-f", help="The task file.")],
    backends: Annotated[
        list[Backend] | None,
        typer.Option("--backend", "-b", help="The cloud to plan for, configured or not."),
    ] = None,
    nodes: Annotated[
        int | None, typer.Option(min=1, help="Plan this many nodes instead of the task's.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="The run name (default: the task's).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print stable JSON (offer, plan, resources).")
    ] = False,
) -> None:
    """Preview the cloud resources a task would create, offline: nothing is created.

    Takes the cheapest offer of the backend (the cheapest cloud offer without `--backend`),
    builds the run's plan and runs its Pulumi program under the SDK's mocks. The SSH key
    shown is a placeholder; `dstack apply` generates the run's own key.
    """
    from taskstack.stacks.preview import paused_gc, preview_task

    backend = _one_backend(backends or [])

    # The command imports and builds tens of MB of short-lived objects and then ends; the
    # cyclic collector would spend a third of its time walking them.
    with paused_gc():
        result = preview_task(file, backend=backend, nodes=nodes, run_name=name)
        if command_ends_process():
            # Frozen before the collector is back on: its first collection and those at
            # exit would walk them all again, a quarter of the command's CPU time, only to
            # free what the exit frees anyway.
            gc.freeze()

    if as_json:
        typer.echo(result.to_json())
        return
    from taskstack.cli.app import console

    console.print(_tree(result))


def _one_backend(backends: list[Backend]) -> str | None:
    """The one `-b` given, if any; a plan previews a single cloud, so several are refused."""
    from taskstack.errors import ConfigError

    if len(backends) > 1:
        given = " ".join(f"-b {backend.value}" for backend in backends)
        raise ConfigError(
            f"`--backend`: `{given}` names {len(backends)} clouds; a plan previews one, "
            "so pass a single `-b` (run `dstack plan` once per cloud)"
        )
    return backends[0].value if backends else None


def _tree(result: TaskPreview) -> Tree:
    """Header with the offer, then one branch per resource with the inputs a reviewer checks."""
    from rich.text import Text
    from rich.tree import Tree

    from taskstack.stacks.preview import highlights

    tree = Tree(_header(result))
    for resource in result.preview.resources:
        # Text, not markup: inputs such as `[secret]` must print as they are.
        branch = tree.add(Text.assemble((resource.type, "bold cyan"), " ", resource.name))
        for label, value in highlights(resource):
            branch.add(Text.assemble((f"{label}: ", "dim"), value))

    counts = ", ".join(f"{count} {kind}" for kind, count in result.preview.counts.items())
    tree.add(Text(f"{len(result.preview.resources)} resources: {counts}", style="bold"))
    return tree


def _header(result: TaskPreview) -> Text:
    from rich.text import Text

    from taskstack.compiler.offers import format_price

    plan = result.plan
    where = f"{plan.region}/{plan.zone}" if plan.zone else plan.region
    market = "spot" if plan.spot else "on-demand"
    return Text.assemble(
        ("run ", "dim"),
        (plan.run_name, "bold"),
        ": ",
        (f"{plan.cloud} {plan.instance_type} x {plan.node_count}", "bold green"),
        f" in {where}, {market}, {format_price(plan.price)}/h per node",
    )
