"""The typer application and the one place where errors meet the person."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from taskstack.errors import TaskstackError
from taskstack.home import logs_dir

app = typer.Typer(
    name="dstack",
    help="Run dstack-style tasks on clouds, compiled into infrastructure-as-code stacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

console = Console()
err_console = Console(stderr=True)

log = logging.getLogger("taskstack")


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
) -> None:
    _setup_logging(verbose=verbose)


def main() -> None:
    """Entry point of the `dstack` and `taskstack` scripts."""
    # Commands register themselves on `app` when their modules are imported.
    from taskstack.cli import apply, config, offer, plan, runs, validate  # noqa: F401

    try:
        # Without standalone mode click hands back `typer.Exit`'s code instead of exiting.
        code = app(standalone_mode=False)
    except TaskstackError as exc:
        log.debug("command failed", exc_info=True)
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[yellow]aborted[/yellow]")
        sys.exit(130)
    except typer.TyperException as exc:
        # Usage errors (an unknown command or option): typer's own one-line message.
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


def _setup_logging(*, verbose: bool) -> None:
    """Debug logs go to a file under the state folder; `-v` shows them on stderr too."""
    root = logging.getLogger("taskstack")
    root.setLevel(logging.DEBUG)
    root.handlers.clear()
    try:
        logs_dir().mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(logs_dir() / "taskstack.log")
        file_handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
        root.addHandler(file_handler)
    except OSError:
        pass
    if verbose:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(stream)
