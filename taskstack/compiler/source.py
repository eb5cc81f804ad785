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

MAX_NODES = 100_000
"""Past this many values, counting each alias as the whole thing it repeats, a file is refused:
a few lines of nested aliases (a "billion laughs") would otherwise expand to gigabytes."""
SHOWN_CHARS = 80
"""How much of a value an error message repeats; the rest is an ellipsis."""


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
        # Checked before building Python values: only the node graph exists so far.
        if node is not None:
            _check_expanded_size(node, source=source)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(_syntax_message(exc, source=source)) from exc
    except RecursionError as exc:
        raise ConfigError(
            f"{source}: the file nests values too deeply to read; flatten it"
        ) from exc
    finally:
        loader.dispose()

    lines: dict[Path, int] = {}
    if node is not None:
        _collect_lines(node, path=(), lines=lines)
    return YamlDocument(data=data, source=source, lines=lines)


def shown(value: Any) -> str:
    """`repr(value)` cut to `SHOWN_CHARS` characters, so an error stays one readable line."""
    return cut(repr(value))


def cut(text: str) -> str:
    """`text` cut to `SHOWN_CHARS` characters, the last one an ellipsis when it was longer."""
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS - 1]}…"


def _check_expanded_size(root: yaml.Node, *, source: str) -> None:
    """Refuse a document whose aliases expand past `MAX_NODES` values, or refer to themselves.

    The composer shares one node per anchor, so the graph is small even when its expansion
    is not; sizes are counted once per node, which keeps this linear in the file.
    """
    sizes: dict[int, int] = {}
    if _expanded_size(root, sizes=sizes, open_nodes=set(), source=source) > MAX_NODES:
        raise ConfigError(
            f"{source}: the file expands to more than {MAX_NODES} values through YAML "
            "aliases (`*name`); write the values out or use fewer aliases"
        )


def _expanded_size(
    node: yaml.Node, *, sizes: dict[int, int], open_nodes: set[int], source: str
) -> int:
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_nodes:
        line = node.start_mark.line + 1
        raise ConfigError(
            f"{source}:{line}: a YAML alias refers to the value that contains it; remove the alias"
        )

    open_nodes.add(id(node))
    total = 1
    for child in _children(node):
        total += _expanded_size(child, sizes=sizes, open_nodes=open_nodes, source=source)
        # Stop early: a bomb's total can be astronomically large.
        if total > MAX_NODES:
            break
    open_nodes.discard(id(node))

    sizes[id(node)] = total
    return total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _syntax_message(exc: yaml.YAMLError, *, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = cut(getattr(exc, "problem", None) or str(exc).splitlines()[0])
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
