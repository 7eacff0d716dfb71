"""The Typer application: global options, one-line errors with exit codes, progress bars.

Every failure ends in one line on stderr, ``error: <STATUS>: <message>`` (plus
the offending field when the service names one), and an exit code per class
of failure (:class:`ExitCode`); ``--debug`` prints the traceback as well.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer import _click
from typer.core import TyperGroup

from foresight.api.common.v1 import common_pb2
from foresight.client import ClientConfig, ForesightClient
from foresight.errors import ForesightError


class ExitCode(IntEnum):
    """Exit status of `foresight`, one per class of failure."""

    OK = 0
    FAILED = 1  # anything else: internal, unknown, cancelled
    USAGE = 2  # wrong command line (click's own code)
    INVALID_INPUT = 3  # INVALID_ARGUMENT, OUT_OF_RANGE, a bad local file
    NOT_FOUND = 4  # NOT_FOUND, a missing local file
    CONFLICT = 5  # ALREADY_EXISTS, ABORTED
    PRECONDITION = 6  # FAILED_PRECONDITION (e.g. too little data), RESOURCE_EXHAUSTED
    DENIED = 7  # PERMISSION_DENIED, UNAUTHENTICATED
    UNAVAILABLE = 8  # UNAVAILABLE, DEADLINE_EXCEEDED, a service not SERVING
    INTERRUPTED = 130  # Ctrl-C


_EXIT_BY_STATUS: dict[grpc.StatusCode, ExitCode] = {
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID_INPUT,
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.CONFLICT,
    grpc.StatusCode.ABORTED: ExitCode.CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.DENIED,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.DENIED,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
}

#: Metadata key the services put the offending field of an INVALID_ARGUMENT in.
FIELD_METADATA_KEY = "foresight-field"

# Results go to stdout; progress and errors to stderr, so `--json` output stays clean.
# When piped, lines are never wrapped at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 10_000)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 10_000)

_state: dict[str, Any] = {}


class CliError(Exception):
    """A failure the CLI itself detects (bad local file, unhealthy service)."""

    def __init__(self, status: str, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def error_line(exc: BaseException) -> tuple[str, ExitCode]:
    """The one line printed for a failure, and the exit code."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        status = exc.code()
        message = exc.details() or ""
        field = dict(exc.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")
        if field and not message.startswith(f"{field}:"):
            message = f"{message} (field: {field})"
        return f"error: {status.name}: {message}", _EXIT_BY_STATUS.get(status, ExitCode.FAILED)
    if isinstance(exc, CliError):
        return f"error: {exc.status}: {exc.message}", exc.code
    if isinstance(exc, ForesightError):
        from foresight.runtime.errors import status_for

        status = status_for(exc)
        return f"error: {status.name}: {exc.message}", _EXIT_BY_STATUS.get(status, ExitCode.FAILED)
    if isinstance(exc, FileNotFoundError):
        return f"error: NOT_FOUND: no such file: {exc.filename}", ExitCode.NOT_FOUND
    if isinstance(exc, OSError):
        return f"error: FAILED: {exc.strerror or exc}: {exc.filename or ''}", ExitCode.FAILED
    return f"error: FAILED: {exc} (run with --debug for details)", ExitCode.FAILED


class ForesightGroup(TyperGroup):
    """Runs a command and turns any failure into one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _click.exceptions.ClickException as exc:  # a wrong command line
            context = getattr(exc, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            err_console.print(
                f"error: USAGE: {exc.format_message()}{hint}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("error: CANCELLED: aborted", highlight=False)
            sys.exit(ExitCode.INTERRUPTED)
        sys.exit(code if isinstance(code, int) else ExitCode.OK)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort) as exc:
            raise exc
        except KeyboardInterrupt:
            err_console.print("error: CANCELLED: interrupted", highlight=False)
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as exc:
            if type(exc).__module__.startswith(("click", "typer")):
                raise  # usage errors: click prints them and exits 2
            if _state.get("debug"):
                err_console.print_exception()
            line, code = error_line(exc)
            err_console.print(line, highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(code) from None


app = typer.Typer(
    cls=ForesightGroup,
    help="Foresight: propensity scores with reasons, discovered segments, lookalikes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
instance_app = typer.Typer(help="Prediction instances.", no_args_is_help=True)
app.add_typer(instance_app, name="instance")


@app.callback()
def _main(
    trainer: Annotated[str, typer.Option(envvar="FORESIGHT_TRAINER_ADDR")] = "127.0.0.1:50051",
    scorer: Annotated[str, typer.Option(envvar="FORESIGHT_SCORER_ADDR")] = "127.0.0.1:50052",
    segmenter: Annotated[str, typer.Option(envvar="FORESIGHT_SEGMENTER_ADDR")] = "127.0.0.1:50053",
    token: Annotated[str | None, typer.Option(envvar="FORESIGHT_AUTH_TOKEN")] = None,
    tls_ca: Annotated[Path | None, typer.Option(envvar="FORESIGHT_TLS_CA_FILE")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline of unary calls in seconds.")] = 30.0,
    debug: Annotated[bool, typer.Option(help="Print the traceback of a failure.")] = False,
) -> None:
    _state["config"] = ClientConfig(trainer, scorer, segmenter, token, tls_ca, timeout)
    _state["debug"] = debug


def client() -> ForesightClient:
    """A client for the configured services."""
    return ForesightClient(_state.get("config"))


def follow(stream: Iterable[Any], title: str) -> Any:
    """Drive a server-streaming job with a progress bar and ETA; return its result."""
    with Progress(*_bar_columns(), console=err_console, transient=True) as progress:
        task = progress.add_task(title, total=1.0)

        def update(p: common_pb2.Progress) -> None:
            if p.stage == "warning":  # in full, not squeezed into the bar
                progress.console.print(f"[yellow]warning:[/yellow] {p.message}")
                return
            progress.update(
                task, completed=p.fraction, description=f"{title}: {p.stage} {p.message}"[:80]
            )

        result = ForesightClient.follow(stream, update)
        progress.update(task, completed=1.0)
    return result


def _bar_columns() -> tuple[Any, ...]:
    return (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


def progress_bar() -> Progress:
    """A progress bar (stderr) for work the CLI measures itself, such as streaming a file."""
    return Progress(*_bar_columns(), console=err_console, transient=True)


def waiting(title: str) -> Progress:
    """A spinner with elapsed time for a single call that reports no progress."""
    progress = Progress(
        SpinnerColumn(), TextColumn(title), TimeElapsedColumn(), console=err_console, transient=True
    )
    progress.add_task(title, total=None)
    return progress
