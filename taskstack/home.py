"""Where taskstack keeps what the user did not choose: `~/.taskstack/` or `$TASKSTACK_HOME`."""

from __future__ import annotations

import os
from pathlib import Path

from taskstack.errors import ConfigError


def taskstack_home() -> Path:
    """The state folder: run records, engine state, generated keys, logs.

    Only the path; `ensure_home` checks and creates it before anything is written there.
    """
    override = os.environ.get("TASKSTACK_HOME")
    home = Path(override).expanduser() if override else Path.home() / ".taskstack"
    # Absolute: nodes get paths below it (their hostfile, the run's virtualenv) and work in
    # other folders.
    return home.absolute()


def ensure_home(*parts: str) -> Path:
    """Create (if needed) and return the state folder, or the folder `parts` below it.

    Raises:
        ConfigError: one line naming TASKSTACK_HOME (or ~/.taskstack) when the folder cannot
            be a directory: it is a file, sits below a file, or cannot be written.
    """
    home = taskstack_home()
    _check_not_a_file(home)
    folder = home.joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise ConfigError(
            f"{_described(home)}: {folder} is a file, not a folder; move the file away"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"{_described(home)} cannot be used as the state folder ({exc.strerror}: "
            f"{exc.filename}); point TASKSTACK_HOME at a folder you can write"
        ) from exc
    return folder


def runs_dir() -> Path:
    """The folder of run records (a path; `ensure_home("runs")` creates it)."""
    return taskstack_home() / "runs"


def logs_dir() -> Path:
    """The folder of debug logs (a path; `ensure_home("logs")` creates it)."""
    return taskstack_home() / "logs"


def _check_not_a_file(home: Path) -> None:
    if home.exists() and not home.is_dir():
        raise ConfigError(
            f"{_described(home)} is a file, not a folder; point TASKSTACK_HOME at a folder "
            "(it is created if missing) or unset it to use ~/.taskstack"
        )


def _described(home: Path) -> str:
    if os.environ.get("TASKSTACK_HOME"):
        return f"TASKSTACK_HOME={home}"
    return f"the state folder {home}"
