"""Where taskstack keeps what the user did not choose: `~/.taskstack/` or `$TASKSTACK_HOME`."""

from __future__ import annotations

import os
from pathlib import Path


def taskstack_home() -> Path:
    """The state folder: run records, engine state, generated keys, logs."""
    override = os.environ.get("TASKSTACK_HOME")
    home = Path(override).expanduser() if override else Path.home() / ".taskstack"
    return home


def runs_dir() -> Path:
    return taskstack_home() / "runs"


def logs_dir() -> Path:
    return taskstack_home() / "logs"
