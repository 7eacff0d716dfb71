"""Trainer commands: data (generate, import, ingest, datasets), instances, training, evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.table import Table

from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli import instance_file
from foresight.cli.app import (
    app,
    client,
    console,
    error_line,
    follow,
    instance_app,
    progress_bar,
    waiting,
)
from foresight.cli.output import CsvFlag, JsonFlag, Rows, emit, print_json
from foresight.client import ForesightClient, to_plain
from foresight.convert import instance_to_proto

# ---------------------------------------------------------------- data


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("var/imports/synthetic"),
    profiles: Annotated[int, typer.Option(min=1, help="Profiles to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
) -> None:
    """Generate synthetic e-commerce journeys with planted personas and ground truth."""
    from foresight.tools.generate import generate as run

    summary = run(out, profiles=profiles, seed=seed)
    console.print(
        f"{summary.profiles:,} profiles, {summary.events:,} events in {summary.seconds:.1f} s → {summary.out_dir}",
        highlight=False,
    )


def _ingest_rows(s: trainer_pb2.IngestSummary) -> tuple[str, Rows]:
    line = (
        f"{s.dataset}: read {s.rows_read:,}, accepted {s.accepted:,}, rejected {s.rejected:,}, "
        f"written {s.written:,}, duplicates {s.duplicates:,}"
    )
    if s.quarantine_path:
        line += f"; rejected rows in {s.quarantine_path}"
    return line, Rows(("reject reason", "rows"), [(r.reason, r.rows) for r in s.reject_reasons])


def _emit_ingest(s: trainer_pb2.IngestSummary, as_json: bool) -> None:
    line, reasons = _ingest_rows(s)
    emit(s, as_json=as_json, summary=line, extra=[reasons] if reasons.rows else [])


@app.command("import")
def import_dataset(
    path: Annotated[str, typer.Argument(help="Server-side path under the trainer's import root.")],
    dataset: Annotated[str, typer.Option(help="Target dataset.")],
    as_json: JsonFlag = False,
) -> None:
    """Import a server-side file or folder (Parquet, CSV, JSON Lines) into a dataset."""
    request = trainer_pb2.ImportDatasetRequest(dataset=dataset, path=path)
    with client() as c:
        summary = follow(c.trainer.ImportDatasetWithProgress(request), f"import {path}")
    _emit_ingest(summary, as_json)


@app.command("import-profiles")
def import_profiles(
    path: Annotated[str, typer.Argument(help="Server-side profile file under the import root.")],
    as_json: JsonFlag = False,
) -> None:
    """Import profile attributes (a file keyed by profile_id)."""
    with client() as c, waiting(f"import profiles {path}"):
        s = c.trainer.ImportProfiles(trainer_pb2.ImportProfilesRequest(path=path), timeout=3600)
    summary = (
        f"{s.profiles:,} profiles from {s.rows_read:,} rows ({s.rejected:,} rejected); "
        f"attributes: {', '.join(s.attributes) or '-'}"
    )
    emit(s, as_json=as_json, summary=summary)


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="Local Parquet / CSV / JSON Lines file to stream.")],
    dataset: Annotated[str, typer.Option(help="Target dataset.")],
    as_json: JsonFlag = False,
) -> None:
    """Stream a local file to the trainer (IngestEvents): the same checks as `import`."""
    from foresight.events.readers import count_rows

    total = count_rows(file) or None
    with client() as c, progress_bar() as bar:
        task = bar.add_task(f"ingest {file.name}", total=total)
        summary = c.ingest_file(dataset, file, on_rows=lambda n: bar.advance(task, n))
    _emit_ingest(summary, as_json)


@app.command()
def datasets(as_json: JsonFlag = False, as_csv: CsvFlag = False) -> None:
    """List datasets."""
    with client() as c:
        resp = c.trainer.ListDatasets(trainer_pb2.ListDatasetsRequest())
    rows = Rows(
        ("dataset", "rows", "parts", "updated"),
        [(d.name, d.rows, d.parts, _when(d.updated_at)) for d in resp.datasets],
    )
    emit(resp, as_json=as_json, as_csv=as_csv, rows=rows)


def _when(ts: Any) -> str:
    return str(ts.ToDatetime().isoformat(timespec="seconds")) if ts.seconds else ""


dataset_app = typer.Typer(help="Dataset health: verify and repair.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("verify")
def dataset_verify(dataset: str) -> None:
    """Check every part of a dataset; exit 1 when some are damaged."""
    with client() as c:
        health = c.trainer.VerifyDataset(trainer_pb2.VerifyDatasetRequest(dataset=dataset))
    _print_health(health)
    if health.damaged:
        raise typer.Exit(1)


@dataset_app.command("repair")
def dataset_repair(dataset: str) -> None:
    """Drop damaged parts from the catalogue; re-import the source to restore them."""
    with client() as c:
        _print_health(c.trainer.RepairDataset(trainer_pb2.RepairDatasetRequest(dataset=dataset)))


def _print_health(health: trainer_pb2.DatasetHealth) -> None:
    verb = "dropped" if health.repaired else "damaged"
    console.print(
        f"[bold]{health.dataset}[/]: {health.parts_checked} parts checked, "
        f"{len(health.damaged)} {verb} ({health.rows_lost:,} events)"
    )
    if health.damaged:
        table = Table("part", "shard", "events", "problem")
        for p in health.damaged:
            table.add_row(p.part, str(p.shard), f"{p.rows:,}", p.problem)
        console.print(table)


@app.command()
def describe(dataset: str, as_json: JsonFlag = False) -> None:
    """Describe a dataset: rows, profiles, time range, event types, completeness."""
    with client() as c:
        d = c.trainer.DescribeDataset(trainer_pb2.DescribeDatasetRequest(dataset=dataset))
    if as_json:
        emit(d, as_json=True)
    else:
        print_description(d)


def print_description(d: trainer_pb2.DatasetDescription) -> None:
    """Render a dataset description as a line and two tables."""
    emit(
        d,
        summary=(
            f"{d.dataset.name}: {d.dataset.rows:,} events, {d.profiles:,} profiles, "
            f"{d.min_timestamp.ToDatetime():%Y-%m-%d} → {d.max_timestamp.ToDatetime():%Y-%m-%d}, "
            f"{d.quarantined_rows:,} rows in quarantine"
        ),
        extra=[
            Rows(("event type", "events"), [(t.event_type, t.rows) for t in d.event_types]),
            Rows(("field", "complete %"), [(f.field, round(f.percent, 1)) for f in d.completeness]),
        ],
    )


# ---------------------------------------------------------------- instances


@instance_app.command("init")
def instance_init(
    out: Annotated[Path, typer.Argument(help="File to write.")] = Path("instance.yaml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write an annotated starting instance file (every key, with its default)."""
    if out.exists() and not force:
        raise typer.BadParameter(f"{out} exists; pass --force to overwrite", param_hint="OUT")
    out.write_text(instance_file.EXAMPLE)
    console.print(f"wrote {out}; edit it, then: foresight instance create -f {out}")


@instance_app.command("schema")
def instance_schema() -> None:
    """Print the JSON Schema of the instance file."""
    typer.echo(instance_file.json_schema())


@instance_app.command("create")
def instance_create(
    file: Annotated[Path, typer.Option("-f", "--file", help="Instance YAML.")],
    as_json: JsonFlag = False,
) -> None:
    """Create an instance from a YAML file (conditions may be text)."""
    request = trainer_pb2.CreateInstanceRequest(instance=instance_from_yaml(file.read_text()))
    with client() as c:
        created = c.trainer.CreateInstance(request)
    emit(created, as_json=as_json, summary=f"created instance {created.name}")


def instance_from_yaml(text: str) -> trainer_pb2.Instance:
    """Read an instance YAML (the instance fields plus `dataset`) into the protobuf message."""
    config, dataset = instance_file.load(text)
    return instance_to_proto(config, dataset)


@instance_app.command("list")
def instance_list(as_json: JsonFlag = False, as_csv: CsvFlag = False) -> None:
    """List instances."""
    with client() as c:
        resp = c.trainer.ListInstances(trainer_pb2.ListInstancesRequest())
    rows = Rows(
        ("name", "type", "dataset", "window days", "current version"),
        [
            (
                i["name"],
                i["type"],
                i["dataset"],
                i["goal"]["window_days"],
                i["current_version"] or None,
            )
            for i in to_plain(resp)["instances"]
        ],
    )
    emit(resp, as_json=as_json, as_csv=as_csv, rows=rows)


@instance_app.command("get")
def instance_get(name: str) -> None:
    """Show one instance (as JSON: it nests)."""
    with client() as c:
        print_json(to_plain(c.trainer.GetInstance(trainer_pb2.GetInstanceRequest(name=name))))


@instance_app.command("delete")
def instance_delete(name: str) -> None:
    """Delete an instance."""
    with client() as c:
        c.trainer.DeleteInstance(trainer_pb2.DeleteInstanceRequest(name=name))
    console.print(f"deleted {name}")


@app.command("validate-goal")
def validate_goal(name: str, as_json: JsonFlag = False) -> None:
    """Dry run: eligible, positive and negative counts at the training cutoff."""
    with client() as c, waiting(f"validate {name}"):
        r = c.trainer.ValidateGoal(trainer_pb2.ValidateGoalRequest(name=name), timeout=600)
    summary = (
        f"cutoff {r.cutoff.ToDatetime():%Y-%m-%d}: {r.eligible:,} eligible, "
        f"{r.positives:,} positive, {r.negatives:,} negative; "
        f"{'enough data' if r.enough_data else 'NOT enough data'}. {r.message}"
    )
    emit(r, as_json=as_json, summary=summary)


@app.command()
def train(
    name: str,
    max_trials: Annotated[int, typer.Option(help="Search trials (0 = default).")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train, evaluate, export and publish a model for an instance."""
    with client() as c:
        stream = c.trainer.TrainModel(
            trainer_pb2.TrainModelRequest(instance=name, max_trials=max_trials)
        )
        v = follow(stream, f"train {name}")
    emit(v, as_json=as_json, rows=_version_rows([v]))


def _version_rows(versions: list[trainer_pb2.ModelVersion]) -> Rows:
    return Rows(
        ("instance", "version", "status", "current", "AUC", "features", "error"),
        [
            (
                p["instance"],
                p["version"],
                p["status"],
                p["current"],
                p["auc"],
                p["feature_count"],
                p["error"][:80],
            )
            for p in map(to_plain, versions)
        ],
    )


@app.command()
def versions(name: str, as_json: JsonFlag = False, as_csv: CsvFlag = False) -> None:
    """List an instance's model versions."""
    with client() as c:
        resp = c.trainer.ListModelVersions(trainer_pb2.ListModelVersionsRequest(instance=name))
    emit(resp, as_json=as_json, as_csv=as_csv, rows=_version_rows(list(resp.versions)))


@app.command()
def evaluation(
    name: str,
    version: Annotated[int, typer.Option(help="Model version (0 = current).")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.html and the PNG charts.")] = Path(
        "reports"
    ),
    as_json: JsonFlag = False,
) -> None:
    """Fetch a model's evaluation; write PNG charts and a self-contained HTML page."""
    from foresight.tools.reports import write_report

    with client() as c:
        ev = c.trainer.GetEvaluation(
            trainer_pb2.GetEvaluationRequest(instance=name, version=version)
        )
        health, why = _model_health(c, name)
    data = evaluation_dict(ev)
    page, pngs = write_report(data, out / f"{name}-v{ev.version}", health)
    summary = (
        f"AUC {ev.auc:.3f}  PR-AUC {ev.pr_auc:.3f}  quality {data['quality']}\n"
        f"report: {page}  charts: {', '.join(p.name for p in pngs)}"
        + (f"\nmodel health left out: {why}" if why else "")
    )
    emit(ev, as_json=as_json, summary=summary)


def _model_health(c: ForesightClient, name: str) -> tuple[dict[str, Any] | None, str]:
    """The instance's model health for the page, or None and why (the scorer is optional here)."""
    try:
        resp = c.scorer.GetModelHealth(scorer_pb2.GetModelHealthRequest(instance=name))
    except grpc.RpcError as exc:
        return None, error_line(exc)[0].removeprefix("error: ")
    if not resp.runs:
        return None, "no scoring run yet"
    return to_plain(resp), ""


def evaluation_dict(ev: trainer_pb2.Evaluation) -> dict[str, Any]:
    """The evaluation as typed values with short enum names, for the report writer."""
    return to_plain(ev)
