"""Config parsing: every conformance case parsed in one process, taskstack against dstack 0.22.5.

Both sides run `bench/parse_loop.py` (the same loop, texts read before timing, PyYAML's safe
loader on both): taskstack's `parse_task` in the project's interpreter, dstack's
`yaml.safe_load` + `parse_apply_configuration` (what `dstack apply -f` runs) in the dstack
virtualenv. The two processes alternate, several passes each; the figure is the median pass
divided by the number of cases.

The cases live in ../shared/conformance, which exists only where taskstack is developed;
without it there is nothing to parse and the benchmark says so instead of a figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.baseline import DSTACK_VERSION, dstack_baseline
from bench.common import row

CASES = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "cases"
LOOP = Path(__file__).with_name("parse_loop.py")
ROUNDS = 5
PASSES = 20


def run() -> list[dict]:
    """One row: milliseconds per case, taskstack's parser against dstack's own."""
    if not any(CASES.glob("*.dstack.yml")):
        raise FileNotFoundError(
            f"{CASES} is absent (it exists only in the development tree); no cases to parse"
        )
    dstack = dstack_baseline()
    interpreters = {"taskstack": Path(sys.executable), "dstack": dstack.python}

    results: dict[str, list[dict[str, Any]]] = {side: [] for side in interpreters}
    for _ in range(ROUNDS):
        for side, python in interpreters.items():
            results[side].append(_loop(python, side=side))

    cases = results["taskstack"][0]["cases"]
    _check_dstack_answers(results["dstack"][0]["accepted"])
    per_case = {side: _median_pass(runs) / cases * 1000 for side, runs in results.items()}
    how = (
        f"{cases} conformance cases (valid and invalid) parsed from text, YAML included; "
        f"`parse_task` vs dstack {DSTACK_VERSION} `yaml.safe_load` + "
        f"`parse_apply_configuration`; median of {ROUNDS}x{PASSES} passes, processes "
        f"alternating; accepted: taskstack {len(results['taskstack'][0]['accepted'])}, "
        f"dstack {len(results['dstack'][0]['accepted'])}"
    )
    return [
        row(
            "parse: conformance cases, per case",
            taskstack=per_case["taskstack"],
            baseline=per_case["dstack"],
            unit="ms",
            how=how,
        )
    ]


def _loop(python: Path, *, side: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), str(LOOP), side, str(CASES), str(PASSES)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{side} parse loop failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def _median_pass(runs: list[dict[str, Any]]) -> float:
    return statistics.median(seconds for run in runs for seconds in run["passes"])


def _check_dstack_answers(accepted: list[str]) -> None:
    # The baseline must be dstack's real parser: it accepts exactly the cases that its own
    # recorded answers (`*.expected.json`, made with dstack 0.22.5) call valid.
    recorded = {
        path.name.removesuffix(".expected.json")
        for path in CASES.glob("*.expected.json")
        if not json.loads(path.read_text())["error"]
    }
    if set(accepted) != recorded:
        differ = sorted(set(accepted) ^ recorded)
        raise RuntimeError(f"dstack's parser disagrees with its recorded answers on {differ}")
