"""YAML text -> Python data, remembering the line of every key and list item.

The loader is PyYAML's safe loader, the one dstack uses, so the YAML 1.1 quirks read the
same here as there: `python: 3.10` is the float 3.1, `gpu: 2:4` is the sexagesimal 124,
`retry: yes` and `max_duration: off` are booleans. `compiler.config` decides what those mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from taskstack.errors import ConfigError

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document and the 1-based line of each key and list item in it."""

    data: Any
    source: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int:
        """The line of the deepest part of `path` that the file has (1 when none)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1


def load_yaml(text: str, *, source: str) -> YamlDocument:
    """Parse one YAML document; a syntax error is a `ConfigError` with its line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(_syntax_message(exc, source=source)) from exc
    finally:
        loader.dispose()

    lines: dict[Path, int] = {}
    if node is not None:
        _collect_lines(node, path=(), lines=lines)
    return YamlDocument(data=data, source=source, lines=lines)


def _syntax_message(exc: yaml.YAMLError, *, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{source}:{line}: the file is not valid YAML ({problem}); fix the syntax on that line"


def _collect_lines(node: yaml.Node, *, path: Path, lines: dict[Path, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key_path = (*path, key_node.value)
            lines[key_path] = key_node.start_mark.line + 1
            _collect_lines(value_node, path=key_path, lines=lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = (*path, index)
            lines[item_path] = item.start_mark.line + 1
            _collect_lines(item, path=item_path, lines=lines)
