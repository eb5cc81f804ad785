"""Run the real entry point in-process and read the one error line it must print."""

from __future__ import annotations

import sys

import pytest

from taskstack.cli.app import main


def one_error_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    """`dstack ARGV` must exit 1 with nothing on stdout and one line, no traceback, on stderr."""
    monkeypatch.setattr(sys, "argv", ["dstack", *argv])

    with pytest.raises(SystemExit) as exited:
        main()

    captured = capsys.readouterr()
    assert exited.value.code == 1
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    return captured.err
