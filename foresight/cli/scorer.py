"""Scorer commands: batch scoring, lookups, score segments, insights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.cli.app import app, client, console, follow, show


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
