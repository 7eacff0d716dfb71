"""Trainer commands: data (generate, import, ingest, datasets), instances, training, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from google.protobuf import json_format
from rich.table import Table

from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli.app import app, client, console, follow, instance_app, show
from foresight.convert import event_from_row


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("var/imports/synthetic"),
    profiles: Annotated[int, typer.Option(help="Profiles to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
) -> None:
    """Generate synthetic e-commerce journeys with planted personas and ground truth."""
    from foresight.tools.generate import generate as run

    summary = run(out, profiles=profiles, seed=seed)
    console.print(
        f"{summary.profiles:,} profiles, {summary.events:,} events in {summary.seconds:.1f} s → {summary.out_dir}"
    )


@app.command("import")
def import_dataset(
    path: Annotated[str, typer.Argument(help="Server-side path under the trainer's import root.")],
    dataset: Annotated[str, typer.Option(help="Target dataset.")],
) -> None:
    """Import a server-side file or folder into a dataset."""
    with client() as c:
        show(
            c.trainer.ImportDataset(
                trainer_pb2.ImportDatasetRequest(dataset=dataset, path=path), timeout=3600
            )
        )


@app.command("import-profiles")
def import_profiles(
    path: Annotated[str, typer.Argument(help="Server-side profile file under the import root.")],
) -> None:
    """Import profile attributes."""
    with client() as c:
        show(c.trainer.ImportProfiles(trainer_pb2.ImportProfilesRequest(path=path), timeout=3600))


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="Local Parquet / CSV / JSON Lines file to stream.")],
    dataset: Annotated[str, typer.Option(help="Target dataset.")],
) -> None:
    """Stream a local file to the trainer over gRPC (IngestEvents)."""
    from foresight.events.readers import read_batches

    def events() -> Any:
        for batch in read_batches(file):
            for row in batch.with_columns(
                pl.col("timestamp").cast(pl.Datetime("us", "UTC"), strict=False)
            ).iter_rows(named=True):
                yield event_from_row(row)

    with client() as c:
        show(c.ingest_events(dataset, events()))


@app.command()
def datasets() -> None:
    """List datasets."""
    with client() as c:
        resp = c.trainer.ListDatasets(trainer_pb2.ListDatasetsRequest())
    table = Table("dataset", "rows", "parts", "updated")
    for d in resp.datasets:
        table.add_row(
            d.name,
            f"{d.rows:,}",
            str(d.parts),
            d.updated_at.ToDatetime().isoformat(timespec="seconds"),
        )
    console.print(table)


@app.command()
def describe(dataset: str) -> None:
    """Describe a dataset: rows, profiles, time range, event types, completeness."""
    with client() as c:
        print_description(
            c.trainer.DescribeDataset(trainer_pb2.DescribeDatasetRequest(dataset=dataset))
        )


def print_description(d: trainer_pb2.DatasetDescription) -> None:
    """Render a dataset description as tables."""
    console.print(
        f"[bold]{d.dataset.name}[/]: {d.dataset.rows:,} events, {d.profiles:,} profiles, "
        f"{d.min_timestamp.ToDatetime():%Y-%m-%d} → {d.max_timestamp.ToDatetime():%Y-%m-%d}, "
        f"{d.quarantined_rows:,} rows in quarantine"
    )
    types = Table("event type", "events")
    for t in d.event_types:
        types.add_row(t.event_type, f"{t.rows:,}")
    fields = Table("field", "complete %")
    for f in d.completeness:
        fields.add_row(f.field, f"{f.percent:.1f}")
    console.print(types, fields)


@instance_app.command("create")
def instance_create(
    file: Annotated[Path, typer.Option("-f", "--file", help="Instance YAML.")],
) -> None:
    """Create an instance from a YAML file (conditions may be text)."""
    with client() as c:
        show(
            c.trainer.CreateInstance(
                trainer_pb2.CreateInstanceRequest(instance=instance_from_yaml(file.read_text()))
            )
        )


def instance_from_yaml(text: str) -> trainer_pb2.Instance:
    """Read an instance YAML (the instance fields plus `dataset`) into the protobuf message."""
    import yaml

    from foresight import instance as inst
    from foresight.convert import instance_to_proto

    data = yaml.safe_load(text) or {}
    dataset = data.pop("dataset", "")
    cfg = inst.from_dict(data)
    return instance_to_proto(cfg, dataset)


@instance_app.command("list")
def instance_list() -> None:
    """List instances."""
    with client() as c:
        resp = c.trainer.ListInstances(trainer_pb2.ListInstancesRequest())
    table = Table("name", "type", "dataset", "window", "current version")
    for i in resp.instances:
        table.add_row(
            i.name,
            trainer_pb2.InstanceType.Name(i.type).removeprefix("INSTANCE_TYPE_"),
            i.dataset,
            f"{i.goal.window_days} d",
            str(i.current_version or "-"),
        )
    console.print(table)


@instance_app.command("get")
def instance_get(name: str) -> None:
    """Show one instance."""
    with client() as c:
        show(c.trainer.GetInstance(trainer_pb2.GetInstanceRequest(name=name)))


@instance_app.command("delete")
def instance_delete(name: str) -> None:
    """Delete an instance."""
    with client() as c:
        c.trainer.DeleteInstance(trainer_pb2.DeleteInstanceRequest(name=name))
    console.print(f"deleted {name}")


@app.command("validate-goal")
def validate_goal(name: str) -> None:
    """Dry run: eligible, positive and negative counts at the training cutoff."""
    with client() as c:
        show(c.trainer.ValidateGoal(trainer_pb2.ValidateGoalRequest(name=name), timeout=600))


@app.command()
def train(
    name: str, max_trials: Annotated[int, typer.Option(help="Search trials (0 = default).")] = 0
) -> None:
    """Train, evaluate, export and publish a model for an instance."""
    with client() as c:
        stream = c.trainer.TrainModel(
            trainer_pb2.TrainModelRequest(instance=name, max_trials=max_trials)
        )
        show(follow(stream, f"train {name}"))


@app.command()
def versions(name: str) -> None:
    """List an instance's model versions."""
    with client() as c:
        resp = c.trainer.ListModelVersions(trainer_pb2.ListModelVersionsRequest(instance=name))
    table = Table("version", "status", "current", "AUC", "features", "error")
    for v in resp.versions:
        status = common_pb2.JobStatus.Name(v.status).removeprefix("JOB_STATUS_")
        table.add_row(
            str(v.version),
            status,
            "*" if v.current else "",
            f"{v.auc:.3f}",
            str(v.feature_count),
            v.error[:60],
        )
    console.print(table)


@app.command()
def evaluation(
    name: str,
    version: Annotated[int, typer.Option(help="Model version (0 = current).")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.html and the PNG charts.")] = Path(
        "reports"
    ),
) -> None:
    """Fetch a model's evaluation; write PNG charts and a self-contained HTML page."""
    from foresight.tools.reports import write_report

    with client() as c:
        ev = c.trainer.GetEvaluation(
            trainer_pb2.GetEvaluationRequest(instance=name, version=version)
        )
    data = evaluation_dict(ev)
    page, pngs = write_report(data, out / f"{name}-v{ev.version}")
    console.print(f"AUC {ev.auc:.3f}  PR-AUC {ev.pr_auc:.3f}  quality {data['quality']}")
    console.print(f"report: {page}  charts: {', '.join(p.name for p in pngs)}")


def evaluation_dict(ev: trainer_pb2.Evaluation) -> dict[str, Any]:
    """The evaluation as a plain mapping with short enum names, for the report writer."""
    data = json_format.MessageToDict(
        ev, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    data["quality"] = str(data.get("quality", "")).removeprefix("QUALITY_")
    for entry in data.get("bucket_factors", []):
        entry["bucket"] = str(entry.get("bucket", "")).removeprefix("BUCKET_")
        entry["profiles"] = int(entry.get("profiles", 0))
    return data
