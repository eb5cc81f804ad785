"""Hostile or mistaken task files: run names, oversized files, alias bombs, long values."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from taskstack.compiler.config import (
    MAX_TASK_FILE_BYTES,
    RUN_NAME_RULE,
    load_task,
    parse_task,
    validate_run_name,
)
from taskstack.compiler.source import MAX_NODES, shown
from taskstack.errors import ConfigError

MINIMAL = "type: task\ncommands:\n  - python train.py\n"
# Nine levels of nine aliases each: 9**9 (387 million) strings once expanded.
ALIAS_BOMB = "type: task\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]\n" for level in range(1, 9)
)


class TestRunName:
    @pytest.mark.parametrize("name", ["train-llm", "a1", "x" * 41, "empty", "a-"])
    def test_dstack_names_are_accepted(self, name: str) -> None:
        assert parse_task(f"{MINIMAL}name: {name}\n").name == name
        assert validate_run_name(name) == name

    @pytest.mark.parametrize(
        "name",
        [
            "../../escape",
            "a/b",
            "my run",
            "UPPER_case",
            "x" * 42,
            "x" * 200,
            "a",
            "1abc",
            "-abc",
            "run.name",
            "",
        ],
    )
    def test_other_names_are_refused_with_their_line(self, name: str) -> None:
        text = f"{MINIMAL}name: {name!r}\n"

        with pytest.raises(ConfigError, match=r"^t.yml:4: `name`: .* is not a run name;") as err:
            parse_task(text, source="t.yml")

        assert RUN_NAME_RULE in str(err.value)

    def test_cli_name_is_refused_naming_the_option(self) -> None:
        with pytest.raises(ConfigError, match=r"^`--name`: '\.\./x' is not a run name; use 2"):
            validate_run_name("../x")


class TestHostileYaml:
    def test_alias_bomb_is_refused_quickly(self, tmp_path: Path) -> None:
        path = tmp_path / "bomb.yml"
        path.write_text(ALIAS_BOMB + "commands: *a8\n")
        started = time.monotonic()

        with pytest.raises(ConfigError, match=f"more than {MAX_NODES} values through YAML alias"):
            load_task(path)

        assert time.monotonic() - started < 2

    def test_modest_aliases_still_work(self) -> None:
        text = "type: task\nx: &cmds [echo a, echo b]\n"

        with pytest.raises(ConfigError, match="`x`: unknown field"):
            parse_task(text + "commands: *cmds\n")
        task = parse_task("type: task\nenv: &e {A: '1'}\ncommands: [echo]\n")
        assert task.env == {"A": "1"}

    def test_alias_to_itself_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"^t.yml:2: a YAML alias refers to the value"):
            parse_task("type: task\ncommands: &a [echo, *a]\n", source="t.yml")

    def test_oversized_file_is_refused_unread(self, tmp_path: Path) -> None:
        path = tmp_path / "big.yml"
        path.write_text(MINIMAL + "# " + "x" * MAX_TASK_FILE_BYTES + "\n")

        with pytest.raises(ConfigError, match=r"big.yml: \d+ bytes is over the 1 MiB"):
            load_task(path)

    def test_long_values_are_cut_in_messages(self) -> None:
        value = "y" * 500_000

        with pytest.raises(ConfigError) as err:
            parse_task(f"{MINIMAL}working_dir: {value}\n")

        assert len(str(err.value)) < 300
        assert "…" in str(err.value)

    def test_long_values_are_cut_in_pydantic_messages(self) -> None:
        with pytest.raises(ConfigError) as err:
            parse_task(f"{MINIMAL}nodes: {'z' * 10_000}\n")

        assert len(str(err.value)) < 300

    def test_shown_keeps_short_values_whole(self) -> None:
        assert shown("abc") == "'abc'"
        assert len(shown("q" * 1000)) == 80


class TestWrongFile:
    def test_directory_names_the_file_to_pass(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"is a directory; pass the task file inside it"):
            load_task(tmp_path)

    def test_binary_file_says_what_to_pass(self, tmp_path: Path) -> None:
        path = tmp_path / "model.bin"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")

        with pytest.raises(ConfigError, match=r"model.bin: not a text file .*; pass the task's"):
            load_task(path)


def test_long_field_names_and_yaml_problems_are_cut() -> None:
    with pytest.raises(ConfigError) as unknown:
        parse_task(f"{MINIMAL}{'k' * 100_000}: 1\n")
    with pytest.raises(ConfigError) as syntax:
        parse_task(f"{MINIMAL}commands: *{'n' * 100_000}\n")

    assert len(str(unknown.value)) < 300
    assert len(str(syntax.value)) < 300
