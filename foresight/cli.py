"""`foresight` — the command-line client (progress bars for long jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ClientConfig, ForesightClient
from foresight.convert import event_from_row

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


# ---------------------------------------------------------------- data


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("var/imports/synthetic"),
    profiles: Annotated[int, typer.Option(help="Profiles to generate.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 7,
) -> None:
    """Generate synthetic e-commerce journeys with planted personas and ground truth."""
    from foresight.generate import generate as run

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


# ---------------------------------------------------------------- instances


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
    from foresight.reports import write_report

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


# ---------------------------------------------------------------- scorer


@app.command()
def score(name: str) -> None:
    """Score every eligible profile of an instance (batch, with reason codes)."""
    with client() as c:
        show(
            follow(
                c.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=name)), f"score {name}"
            )
        )


@app.command()
def lookup(
    profile_id: str,
    instance: Annotated[list[str] | None, typer.Option(help="Only these instances.")] = None,
) -> None:
    """A profile's latest scores and their reasons."""
    with client() as c:
        show(
            c.scorer.GetProfileScores(
                scorer_pb2.GetProfileScoresRequest(profile_id=profile_id, instances=instance or [])
            )
        )


@app.command("segment")
def create_segment(
    name: str,
    instance: Annotated[str, typer.Option(help="Instance whose latest run is filtered.")],
    bucket: Annotated[
        list[str] | None, typer.Option(help="LOW, MEDIUM or HIGH (repeatable).")
    ] = None,
    min_percentile: Annotated[int, typer.Option()] = 0,
    max_percentile: Annotated[int, typer.Option()] = 0,
    factor: Annotated[
        str, typer.Option(help="Keep profiles with this factor code in their top factors.")
    ] = "",
) -> None:
    """Create a score segment from a filter."""
    buckets = [common_pb2.Bucket.Value(f"BUCKET_{b.upper()}") for b in bucket or []]
    flt = scorer_pb2.SegmentFilter(
        buckets=buckets,
        min_percentile=min_percentile,
        max_percentile=max_percentile,
        factor_code=factor,
    )
    with client() as c:
        show(
            c.scorer.CreateSegment(
                scorer_pb2.CreateSegmentRequest(name=name, instance=instance, filter=flt)
            )
        )


@app.command("export-segment")
def export_segment(
    name: str,
    out: Annotated[Path, typer.Option(help="Output file (.csv or .parquet).")],
) -> None:
    """Download a segment as CSV or Parquet."""
    fmt = (
        scorer_pb2.EXPORT_FORMAT_PARQUET
        if out.suffix == ".parquet"
        else scorer_pb2.EXPORT_FORMAT_CSV
    )
    with client() as c, out.open("wb") as fh:
        for chunk in c.scorer.ExportSegment(scorer_pb2.ExportSegmentRequest(name=name, format=fmt)):
            fh.write(chunk.data)
    console.print(f"wrote {out}")


@app.command()
def insights(name: str) -> None:
    """Score distribution, factors per bucket, expected vs actual."""
    with client() as c:
        show(c.scorer.GetInsights(scorer_pb2.GetInsightsRequest(instance=name)))


# ---------------------------------------------------------------- segmenter


@app.command("train-encoder")
def train_encoder(dataset: str, dimensions: Annotated[int, typer.Option()] = 0) -> None:
    """Fit the journey encoder (chosen by measurement) and export it as ONNX."""
    with client() as c:
        stream = c.trainer.TrainEncoder(
            trainer_pb2.TrainEncoderRequest(dataset=dataset, dimensions=dimensions)
        )
        show(follow(stream, "encoder"))


@app.command("build-index")
def build_index(dataset: str) -> None:
    """Embed every profile and build the HNSW index."""
    with client() as c:
        show(
            follow(
                c.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=dataset)), "index"
            )
        )


@app.command()
def discover(clusters: Annotated[int, typer.Option(help="0 = choose automatically.")] = 0) -> None:
    """Discover segments; print each with its High Influence and High Popularity traits."""
    with client() as c:
        d = follow(
            c.segmenter.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest(clusters=clusters)),
            "discover",
        )
    console.print(f"discovery v{d.version}: {d.chosen_by}")
    for cl in d.clusters:
        console.print(f"[bold]#{cl.cluster_id} {cl.name}[/] {cl.size:,} ({100 * cl.share:.1f} %)")
        console.print(
            "  influence : " + "; ".join(f"{t.description} ×{t.lift:.1f}" for t in cl.influence[:4])
        )
        console.print(
            "  popularity: "
            + "; ".join(f"{t.description} ({t.count:,})" for t in cl.popularity[:4])
        )


@app.command()
def expand(
    segment: Annotated[str, typer.Option(help="Seed: a stored segment.")] = "",
    profile: Annotated[
        list[str] | None, typer.Option(help="Seed: profile ids (repeatable).")
    ] = None,
    target_size: Annotated[int, typer.Option()] = 0,
    min_similarity: Annotated[float, typer.Option()] = 0.0,
) -> None:
    """Lookalikes of a seed, with the reach curve."""
    request = segmenter_pb2.ExpandSegmentRequest(
        target_size=target_size, min_similarity=min_similarity
    )
    if segment:
        request.segment = segment
    else:
        request.profile_ids.profile_ids.extend(profile or [])
    with client() as c:
        resp = c.segmenter.ExpandSegment(request)
    console.print(
        f"seed {resp.seed_size:,}, {len(resp.lookalikes):,} lookalikes, {resp.query_points} query points"
    )
    if resp.unknown_seed_ids:
        console.print(f"unknown seed ids: {list(resp.unknown_seed_ids)[:10]}")
    for r in resp.reach:
        console.print(f"  similarity ≥ {r.similarity:.2f}: {r.audience_size:,}")


@app.command("cluster-map")
def cluster_map(
    out: Annotated[
        Path, typer.Option(help="Folder for cluster-map.html and cluster-map.png.")
    ] = Path("reports"),
    sample_size: Annotated[int, typer.Option()] = 5_000,
) -> None:
    """Write the cluster map as PNG and a self-contained HTML page."""
    from foresight.mapview import write_map

    with client() as c:
        vis = c.segmenter.GetVisualization(
            segmenter_pb2.GetVisualizationRequest(sample_size=sample_size)
        )
    page, png = write_map(vis, out)
    console.print(f"wrote {page} and {png}")


@app.command()
def health() -> None:
    """Health of the three services."""
    with client() as c:
        for name in ("trainer", "scorer", "segmenter"):
            try:
                status = c.health(name)
            except Exception as exc:
                status = f"unreachable ({type(exc).__name__})"
            console.print(f"{name:10s} {status}")
