"""`dstack offer`: the offers that fit a task or a few flags, cheapest first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from taskstack.cli.app import app, console

if TYPE_CHECKING:
    from rich.table import Table

    from taskstack.compiler.offers import OfferQuery, Requirements

_NOT_CONFIGURED = "*"


@app.command()
def offer(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="A task file whose requirements to match.")
    ] = None,
    gpu: Annotated[
        str | None, typer.Option(help="GPUs, as in `resources.gpu`: A100:2, 24GB..:1, tpu.")
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPUs, e.g. 8.. or arm:4..8.")] = None,
    memory: Annotated[str | None, typer.Option(help="RAM, e.g. 64GB..")] = None,
    disk: Annotated[str | None, typer.Option(help="Disk, e.g. 500GB..")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot offers only.")] = False,
    on_demand: Annotated[bool, typer.Option("--on-demand", help="On-demand only.")] = False,
    spot_auto: Annotated[bool, typer.Option("--spot-auto", help="Spot and on-demand.")] = False,
    max_price: Annotated[float | None, typer.Option(help="USD per hour at most.")] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option("--backend", "-b", help="Look at this backend, configured or not."),
    ] = None,
    region: Annotated[list[str] | None, typer.Option("--region", "-r")] = None,
    instance_type: Annotated[list[str] | None, typer.Option("--instance-type")] = None,
    max_offers: Annotated[int, typer.Option(min=1, help="How many offers to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON, not a table.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Use the packaged catalog, never the network.")
    ] = False,
) -> None:
    """Show the offers that fit a task file or the given resources, cheapest first.

    Without a file, an unset `--spot`/`--on-demand` shows both. Backends that are not
    configured can be looked at with `--backend`; their offers are marked with `*`.
    """
    from taskstack.compiler.catalog import load_catalog
    from taskstack.compiler.offers import find_offers
    from taskstack.settings import backends_in_use

    requirements = _requirements(
        file=file,
        flags={"gpu": gpu, "cpu": cpu, "memory": memory, "disk": disk},
        spot_policy=_spot_policy(spot=spot, on_demand=on_demand, spot_auto=spot_auto),
        placement={
            "max_price": max_price,
            "backends": backend,
            "regions": region,
            "instance_types": instance_type,
        },
    )
    query = find_offers(
        requirements,
        backends=backends_in_use(),
        catalog=load_catalog(offline=True if offline else None),
        any_backend=requirements.backends is not None,
    )

    if as_json:
        typer.echo(offers_json(query, max_offers=max_offers))
        return
    shown = query.offers[:max_offers]
    table = offers_table(shown, total=query.total, shown=len(shown))
    console.print(table)
    console.print(f"[dim]Offers from the {query.source}[/dim]", highlight=False)


def offers_table(offers: Any, *, total: int, shown: int) -> Table:
    """The offers as dstack shows them, with "Shown N of M offers" under them.

    Offers of a backend that is not configured carry a `*` after the backend's name.
    """
    from rich.table import Table

    from taskstack.compiler.offers import format_price, format_resources

    table = Table(box=None, header_style="bold", pad_edge=True, show_edge=False)
    for name, justify in _COLUMNS:
        table.add_column(name, justify=justify, no_wrap=name != "RESOURCES")
    for number, item in enumerate(offers, start=1):
        table.add_row(
            str(number),
            item.backend + ("" if item.configured else _NOT_CONFIGURED),
            item.region,
            format_resources(item),
            item.instance_type,
            "yes" if item.spot else "no",
            format_price(item.price),
        )

    table.caption = _caption(offers, total=total, shown=shown)
    table.caption_justify = "left"
    return table


def offers_json(query: OfferQuery, *, max_offers: int) -> str:
    """The query as JSON with sorted keys: the catalog, the counts and the offers shown."""
    shown = query.offers[:max_offers]
    document = {
        "catalog": query.catalog.model_dump(mode="json"),
        "requirements": query.requirements.model_dump(mode="json"),
        "total": query.total,
        "shown": len(shown),
        "offers": [item.model_dump(mode="json") for item in shown],
    }
    return json.dumps(document, sort_keys=True, indent=2)


_COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (
    ("#", "right"),
    ("BACKEND", "left"),
    ("REGION", "left"),
    ("RESOURCES", "left"),
    ("INSTANCE TYPE", "left"),
    ("SPOT", "left"),
    ("PRICE", "right"),
)


def _caption(offers: Any, *, total: int, shown: int) -> str:
    from taskstack.settings import config_path

    caption = f"Shown {shown} of {total} offers"
    if any(not item.configured for item in offers):
        caption += f"; {_NOT_CONFIGURED} backend not configured (see {config_path()})"
    return caption


def _spot_policy(*, spot: bool, on_demand: bool, spot_auto: bool) -> str | None:
    chosen = [name for name, on in (("spot", spot), ("on-demand", on_demand)) if on]
    if spot_auto:
        chosen.append("auto")
    if len(chosen) > 1:
        raise typer.BadParameter("give one of --spot, --on-demand, --spot-auto")
    return chosen[0] if chosen else None


def _requirements(
    *,
    file: Path | None,
    flags: dict[str, str | None],
    spot_policy: str | None,
    placement: dict[str, Any],
) -> Requirements:
    """The file's requirements (or the defaults), with the flags laid over them."""
    from taskstack.compiler.catalog import BACKENDS
    from taskstack.compiler.offers import Requirements
    from taskstack.errors import ConfigError

    if file is not None:
        base = Requirements.from_task(_load_task(file))
    else:
        base = Requirements(spot_policy="auto")

    if placement["max_price"] is not None and placement["max_price"] <= 0:
        # The file's own rule for `max_price`.
        raise typer.BadParameter("must be greater than 0 (USD per hour)", param_hint="--max-price")
    unknown = sorted(set(placement["backends"] or ()) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"`--backend {unknown[0]}`: not a backend; use aws, gcp, azure or local")

    update: dict[str, Any] = _resource_flags(flags)
    if spot_policy is not None:
        update["spot_policy"] = spot_policy
    for key, value in placement.items():
        if value:
            update[key] = tuple(value) if isinstance(value, list) else value
    return base.model_copy(update=update)


def _resource_flags(flags: dict[str, str | None]) -> dict[str, Any]:
    """Only the resources the flags name, parsed with the `resources:` grammar of a task."""
    from pydantic import ValidationError

    from taskstack.compiler.offers import Requirements
    from taskstack.compiler.resources import ResourcesSpec
    from taskstack.errors import ConfigError

    given = {key: value for key, value in flags.items() if value is not None}
    if not given:
        return {}
    try:
        spec = ResourcesSpec.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = f"--{error['loc'][0]}" if error["loc"] else "--" + next(iter(given))
        message = str(error.get("ctx", {}).get("error") or error["msg"])
        raise ConfigError(f"`{flag} {given.get(flag[2:], '')}`: {message}") from None

    fields = Requirements.resource_fields(spec)
    wanted = {
        "cpu": ("cpu", "cpu_arch"),
        "memory": ("memory_gb",),
        "disk": ("disk_gb",),
        "gpu": (
            "gpu_vendor",
            "gpu_names",
            "gpu_count",
            "gpu_memory_gb",
            "gpu_total_memory_gb",
            "compute_capability",
        ),
    }
    return {key: fields.get(key) for flag in given for key in wanted[flag]}


def _load_task(path: Path) -> Any:
    from taskstack.compiler.config import load_task

    return load_task(path)
