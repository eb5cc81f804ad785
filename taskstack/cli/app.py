"""The typer application and the one place where errors meet the person."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from taskstack.errors import TaskstackError
from taskstack.home import logs_dir

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="dstack",
    help="Run dstack-style tasks on clouds, compiled into infrastructure-as-code stacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("taskstack")

# The module of each command, in the order `--help` lists them. A command line that names
# one imports only that module: `dstack plan --json` does not pay for what `apply` imports.
COMMAND_MODULES = {
    "apply": "apply",
    "config": "config",
    "offer": "offer",
    "plan": "plan",
    "ps": "runs",
    "logs": "runs",
    "stop": "runs",
    "destroy": "runs",
    "validate": "validate",
}

# True while `main` runs a command: the process exits when the command returns.
_ends_process = False


def __getattr__(name: str) -> Console:
    """`console` (stdout) and `err_console` (stderr), made on first use.

    Importing rich's console takes some 30 ms and 1.5 MiB, and `plan --json` never prints
    through it.
    """
    if name not in ("console", "err_console"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    made = Console(stderr=name == "err_console")
    globals()[name] = made
    return made


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
) -> None:
    _setup_logging(verbose=verbose)


def main() -> None:
    """Entry point of the `dstack` and `taskstack` scripts."""
    global _ends_process
    register_commands(sys.argv[1:])

    _ends_process = True
    try:
        code = _run()
    finally:
        _ends_process = False
    sys.exit(code)


def command_ends_process() -> bool:
    """Whether the running command is the last thing its process does.

    True under `main`, the `dstack` program, which exits when the command returns; False
    for a command invoked in-process (`CliRunner`, a host program), whose process goes on.
    """
    return _ends_process


def register_commands(args: list[str]) -> None:
    """Import the module of the command `args` name, or of every command.

    Commands register themselves on `app` when their modules are imported. Every module
    is imported for `--help`, no command, or a name that is no command (so the error can
    list the commands). The root takes flags only, so its first other word is the command.
    """
    name = next((arg for arg in args if not arg.startswith("-")), None)
    chosen = [COMMAND_MODULES[name]] if name in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in dict.fromkeys(chosen):
        importlib.import_module(f"taskstack.cli.{module}")


def _run() -> int:
    """Run the command line; the exit code, after our errors are printed as one line."""
    try:
        # Without standalone mode click hands back `typer.Exit`'s code instead of exiting.
        code = app(standalone_mode=False)
    except TaskstackError as exc:
        from rich.markup import escape

        log.debug("command failed", exc_info=True)
        _stderr().print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        _stderr().print("[yellow]interrupted[/yellow]")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        _stderr().print("[yellow]aborted[/yellow]")
        return 130
    except typer.TyperException as exc:
        # Usage errors (an unknown command or option): typer's own one-line message.
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        return getattr(exc, "exit_code", 2)
    return code if isinstance(code, int) else 0


def confirm(question: str) -> bool:
    """Ask `question`; no answer at all (stdin at its end, or closed) is a no."""
    from rich.prompt import Confirm

    try:
        return Confirm.ask(question, console=sys.modules[__name__].console)
    except EOFError:
        return False
    except RuntimeError as exc:
        if "stdin" not in str(exc):  # `input()` with stdin closed: "lost sys.stdin"
            raise
        return False
    except KeyboardInterrupt:
        # What follows starts on a line of its own, not after the question.
        sys.modules[__name__].console.print()
        raise


def _stderr() -> Console:
    # Through the module, so that its `__getattr__` makes the console on first use.
    return sys.modules[__name__].err_console


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
