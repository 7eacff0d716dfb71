"""The Typer application, its global options and the output helpers every command uses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from foresight.api.common.v1 import common_pb2
from foresight.client import ClientConfig, ForesightClient

app = typer.Typer(
    help="Foresight: propensity scores with reasons, discovered segments, lookalikes.",
    no_args_is_help=True,
)
instance_app = typer.Typer(help="Prediction instances.", no_args_is_help=True)
app.add_typer(instance_app, name="instance")
console = Console()

_state: dict[str, ClientConfig] = {}


@app.callback()
def _main(
    trainer: Annotated[str, typer.Option(envvar="FORESIGHT_TRAINER_ADDR")] = "127.0.0.1:50051",
    scorer: Annotated[str, typer.Option(envvar="FORESIGHT_SCORER_ADDR")] = "127.0.0.1:50052",
    segmenter: Annotated[str, typer.Option(envvar="FORESIGHT_SEGMENTER_ADDR")] = "127.0.0.1:50053",
    token: Annotated[str | None, typer.Option(envvar="FORESIGHT_AUTH_TOKEN")] = None,
    tls_ca: Annotated[Path | None, typer.Option(envvar="FORESIGHT_TLS_CA_FILE")] = None,
    timeout: Annotated[float, typer.Option(help="Deadline of unary calls in seconds.")] = 30.0,
) -> None:
    _state["config"] = ClientConfig(trainer, scorer, segmenter, token, tls_ca, timeout)


def client() -> ForesightClient:
    """A client for the configured services."""
    return ForesightClient(_state.get("config"))


def show(message: Any) -> None:
    """Print a protobuf message as JSON."""
    console.print_json(json_format.MessageToJson(message, preserving_proto_field_name=True))


def follow(stream: Any, title: str) -> Any:
    """Drive a server-streaming job with a progress bar; return its result."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(title, total=1.0)

        def update(p: common_pb2.Progress) -> None:
            progress.update(
                task, completed=p.fraction, description=f"{title}: {p.stage} {p.message}"[:80]
            )

        result = ForesightClient.follow(stream, update)
        progress.update(task, completed=1.0)
    return result
