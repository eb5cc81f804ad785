"""Offers: one query over the packaged catalog, against gpuhunt's own query of the same CSV.

Two rows:
- load + match: taskstack parses the packaged CSV and matches (what an apply pays), against
  `gpuhunt.Catalog.query` with `GPUHUNT_CATALOG_DIR`, which reads and matches the same rows
  (split into gpuhunt's one file per provider) on every query.
- match only: both catalogs already in memory.
Both sides must return the same offers; a benchmark that compares different answers is void.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import median_seconds, row

REPEAT = 51
CLOUDS = ("aws", "gcp", "azure")

# The same question asked both ways: an A100, any count from 1, on-demand, dstack's defaults.
GPUHUNT_QUERY: dict[str, Any] = {
    "provider": list(CLOUDS),
    "min_cpu": 2,
    "min_memory": 8,
    "gpu_name": ["A100"],
    "min_gpu_count": 1,
    "spot": False,
}


def run() -> list[dict]:
    """Median query times in milliseconds, taskstack against gpuhunt (one warm-up each)."""
    import gpuhunt
    from gpuhunt._internal.catalog import ProviderCatalog

    from taskstack.compiler.catalog import load_packaged
    from taskstack.compiler.offers import Requirements, Span, find_offers

    requirements = Requirements(gpu_names=("A100",), gpu_count=Span(min=1))
    loaded = load_packaged()

    def ours_cold() -> list[Any]:
        return list(find_offers(requirements, backends=CLOUDS, catalog=load_packaged()).offers)

    def ours_warm() -> list[Any]:
        return list(find_offers(requirements, backends=CLOUDS, catalog=loaded).offers)

    with tempfile.TemporaryDirectory() as folder:
        _split_per_provider(Path(folder))
        previous = os.environ.get("GPUHUNT_CATALOG_DIR")
        os.environ["GPUHUNT_CATALOG_DIR"] = folder
        try:
            from_files = gpuhunt.Catalog(auto_reload=False)
            _check_same_answer(ours_cold(), from_files.query(**GPUHUNT_QUERY))
            cold = _interleaved(ours_cold, lambda: from_files.query(**GPUHUNT_QUERY))
            items = {name: from_files.query(provider=[name]) for name in CLOUDS}
        finally:
            _restore("GPUHUNT_CATALOG_DIR", previous)

    in_memory = gpuhunt.Catalog(auto_reload=False)
    for name in CLOUDS:
        in_memory.catalog[name] = ProviderCatalog(version="packaged", items=items[name])
    in_memory.loaded_at = time.monotonic()
    _check_same_answer(ours_warm(), in_memory.query(**GPUHUNT_QUERY))
    warm = _interleaved(ours_warm, lambda: in_memory.query(**GPUHUNT_QUERY))

    how = (
        f"`gpu: A100`, on-demand, {len(loaded.offers)} rows, median of {REPEAT}; "
        "same offers both sides"
    )
    return [
        row(
            "offers: load packaged CSV + query",
            taskstack=cold[0] * 1000,
            baseline=cold[1] * 1000,
            unit="ms",
            how=how + "; baseline gpuhunt Catalog.query with GPUHUNT_CATALOG_DIR",
        ),
        row(
            "offers: query a loaded catalog",
            taskstack=warm[0] * 1000,
            baseline=warm[1] * 1000,
            unit="ms",
            how=how + "; baseline gpuhunt Catalog.query over loaded items",
        ),
    ]


def _interleaved(ours: Callable[[], Any], theirs: Callable[[], Any]) -> tuple[float, float]:
    """Median seconds of both, run turn about so a busy machine slows both alike."""
    ours_times: list[float] = []
    their_times: list[float] = []
    for _ in range(REPEAT):
        ours_times.append(median_seconds(ours, repeat=1, warmup=0))
        their_times.append(median_seconds(theirs, repeat=1, warmup=0))
    return statistics.median(ours_times), statistics.median(their_times)


def _split_per_provider(folder: Path) -> None:
    """gpuhunt's layout: `aws.csv`, `gcp.csv`, `azure.csv`, without the provider column."""
    from importlib import resources

    text = resources.files("taskstack.compiler").joinpath("data/offers.csv").read_text("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    columns = [name for name in reader.fieldnames or [] if name != "provider"]
    buffers = {name: io.StringIO() for name in CLOUDS}
    writers = {name: csv.DictWriter(buffers[name], fieldnames=columns) for name in CLOUDS}
    for writer in writers.values():
        writer.writeheader()
    for line in reader:
        provider = line.pop("provider")
        writers[provider].writerow(line)
    for name, buffer in buffers.items():
        (folder / f"{name}.csv").write_text(buffer.getvalue(), encoding="utf-8")


def _check_same_answer(ours: list[Any], theirs: list[Any]) -> None:
    mine = sorted((o.backend, o.instance_type, o.region, o.price) for o in ours)
    gpuhunt = sorted((i.provider, i.instance_name, i.location, i.price) for i in theirs)
    if mine != gpuhunt:
        raise RuntimeError(f"taskstack and gpuhunt disagree: {mine} vs {gpuhunt}")


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
