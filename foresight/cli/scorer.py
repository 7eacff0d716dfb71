"""Scorer commands: batch scoring, lookups, score segments, insights."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.cli.app import app, client, console, follow, show


def as_of_timestamp(text: str | None) -> Timestamp | None:
    """`--as-of` text (ISO date or date-time; no offset = UTC) as a protobuf Timestamp."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"expected a date like 2024-03-31 or 2024-03-31T12:00:00Z, got {text!r}"
        ) from None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


AsOf = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="Score as of this date or time (UTC unless an offset is given); "
        "default: the dataset's latest event.",
    ),
]


@app.command()
def score(name: str, as_of: AsOf = None) -> None:
    """Score every eligible profile of an instance (batch, with reason codes)."""
    request = scorer_pb2.RunScoringRequest(instance=name, as_of=as_of_timestamp(as_of))
    with client() as c:
        show(follow(c.scorer.RunScoring(request), f"score {name}"))


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


@app.command("export-scores")
def export_scores(
    instance: str,
    out: Annotated[Path, typer.Option(help="Output file (.csv or .parquet).")],
    run_id: Annotated[str, typer.Option(help="Run to export; default: the latest.")] = "",
) -> None:
    """Download a whole run's scores (probability, score, percentile, bucket, reasons)."""
    fmt = (
        scorer_pb2.EXPORT_FORMAT_PARQUET
        if out.suffix == ".parquet"
        else scorer_pb2.EXPORT_FORMAT_CSV
    )
    request = scorer_pb2.ExportScoresRequest(instance=instance, run_id=run_id, format=fmt)
    with client() as c, out.open("wb") as fh:
        for chunk in c.scorer.ExportScores(request):
            fh.write(chunk.data)
    console.print(f"wrote {out}")


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
