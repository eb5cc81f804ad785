"""`make bench`: run every benchmark module and rewrite bench/RESULTS.md.

Each module in MODULES exposes `run() -> list[dict]` whose rows carry `benchmark`,
`taskstack`, `baseline`, `unit`, `ratio` and `how`. A module that cannot run here (no
test hosts, no network for a baseline install) reports why instead of a figure.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

from bench.common import NotMeasured

MODULES = ["cli", "parse", "offers", "plan", "runtime", "local"]
RESULTS = Path(__file__).with_name("RESULTS.md")


def main(argv: list[str]) -> int:
    chosen = argv or MODULES
    _compile_taskstack()
    rows: list[dict] = []
    problems: list[str] = []
    for name in chosen:
        print(f"bench: {name} ...", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            problems.append(f"{name}: not present ({exc.name})")
            continue
        try:
            rows.extend(module.run())
        except (NotMeasured, FileNotFoundError) as exc:
            problems.append(f"{name}: {exc}")
        except Exception as exc:  # a broken benchmark is reported, the others still run
            traceback.print_exc()
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    RESULTS.write_text(_render(rows, problems))
    print(RESULTS.read_text())
    return 1 if problems and not rows else 0


def _compile_taskstack() -> None:
    """Write taskstack's bytecode, as `pip install` does for the SDKs it is compared with.

    An editable install writes none when PYTHONDONTWRITEBYTECODE is set, and every run would
    then compile taskstack's modules from source while the baselines load theirs compiled.
    """
    import compileall

    import taskstack

    compileall.compile_dir(Path(taskstack.__file__).parent, quiet=1)


def _render(rows: list[dict], problems: list[str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{_memory_gib()} GiB, Python {platform.python_version()}",
        "- each figure is the median of several runs; ratio = taskstack / baseline "
        "(below 1: taskstack is faster or smaller)",
        "",
        "| benchmark | taskstack | baseline | unit | ratio | how |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['taskstack']:.4g} | {r['baseline']:.4g} | {r['unit']} "
            f"| {r['ratio']:.2f} | {r['how']} |"
        )
    if problems:
        lines += ["", "Not measured in this run:", ""]
        lines += [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def _memory_gib() -> int:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
    return round(pages / 2**30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
