"""How `dstack apply` shows a working-directory upload."""

from __future__ import annotations

from rich.console import Console

from taskstack import apply
from taskstack.cli import apply as cli_apply


def test_a_large_upload_gets_a_bar_per_node_and_a_small_one_none(monkeypatch) -> None:
    screen = Console(record=True, width=100, force_terminal=False)
    monkeypatch.setattr(cli_apply, "console", screen)
    printer = cli_apply._EventPrinter(nodes=2)
    big = cli_apply.UPLOAD_BAR_BYTES * 2

    printer(apply.UploadProgress(rank=0, sent=1024, total=1024))
    assert printer._uploads is None

    for rank in (0, 1):
        printer(apply.UploadProgress(rank=rank, sent=big // 2, total=big))
    assert len(printer._upload_tasks) == 2
    for rank in (0, 1):
        printer(apply.UploadProgress(rank=rank, sent=big, total=big))

    assert printer._uploads is None
    text = screen.export_text()
    assert "upload to node 0" in text and "upload to node 1" in text
