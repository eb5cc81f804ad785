"""Time one parser over a folder of task files; run by path with either side's interpreter.

usage: python parse_loop.py {taskstack|dstack} CASES_DIR PASSES

The same loop serves both sides, so only the parser differs: every file's text is read
before timing starts, then each pass parses every text once, YAML loading included, and
an invalid file (the parser's own error) counts as parsed. Prints one JSON object:
`{"passes": [seconds, ...], "cases": N, "accepted": [case, ...]}`.

It imports nothing from `bench` or `taskstack` at module level: the dstack virtualenv has
neither, and each side must pay only for its own parser.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SUFFIX = ".dstack.yml"


def main(argv: list[str]) -> int:
    side, cases_dir, passes = argv[0], Path(argv[1]), int(argv[2])
    texts = {
        path.name.removesuffix(SUFFIX): path.read_text(encoding="utf-8")
        for path in sorted(cases_dir.glob(f"*{SUFFIX}"))
    }
    parse, rejected = _taskstack_parser() if side == "taskstack" else _dstack_parser()

    accepted = _accepted(texts, parse=parse, rejected=rejected)
    times = [_one_pass(texts, parse=parse, rejected=rejected) for _ in range(passes)]

    print(json.dumps({"passes": times, "cases": len(texts), "accepted": accepted}))
    return 0


def _taskstack_parser() -> tuple[Callable[[str, str], Any], tuple[type[Exception], ...]]:
    from taskstack.compiler.config import parse_task
    from taskstack.errors import ConfigError

    return (lambda text, name: parse_task(text, source=name)), (ConfigError,)


def _dstack_parser() -> tuple[Callable[[str, str], Any], tuple[type[Exception], ...]]:
    import yaml
    from dstack._internal.core.errors import ConfigurationError
    from dstack._internal.core.models.configurations import parse_apply_configuration

    # What `dstack apply -f` does with the file (cli/services/configurators, 0.22.5):
    # `yaml.safe_load`, then `parse_apply_configuration`. dstack raises a bare TypeError on
    # some malformed values (e.g. `ports: ["8080:"]`), so those count as rejections too.
    def parse(text: str, name: str) -> Any:
        return parse_apply_configuration(yaml.safe_load(text))

    return parse, (ConfigurationError, yaml.YAMLError, TypeError, ValueError)


def _accepted(
    texts: dict[str, str],
    *,
    parse: Callable[[str, str], Any],
    rejected: tuple[type[Exception], ...],
) -> list[str]:
    accepted = []
    for name, text in texts.items():
        try:
            parse(text, name)
        except rejected:
            continue
        accepted.append(name)
    return accepted


def _one_pass(
    texts: dict[str, str],
    *,
    parse: Callable[[str, str], Any],
    rejected: tuple[type[Exception], ...],
) -> float:
    start = time.perf_counter()
    for name, text in texts.items():
        try:
            parse(text, name)
        except rejected:
            pass
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
