"""Scorer commands: batch and real-time scoring, lookups, score segments, insights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.cli.app import app, client, console, follow, progress_bar
from foresight.cli.output import CsvFlag, JsonFlag, Rows, emit
from foresight.client import to_plain


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
def score(name: str, as_json: JsonFlag = False, as_of: AsOf = None) -> None:
    """Score every eligible profile of an instance (batch, with reason codes)."""
    request = scorer_pb2.RunScoringRequest(instance=name, as_of=as_of_timestamp(as_of))
    with client() as c:
        run = follow(c.scorer.RunScoring(request), f"score {name}")
    summary = f"run {run.run_id}: {run.profiles:,} profiles scored with {run.instance} v{run.model_version}"
    emit(run, as_json=as_json, summary=summary)


def _score_rows(scores: list[dict[str, Any]], profile_id: str) -> Rows:
    return Rows(
        ("profile", "instance", "score", "percentile", "bucket", "probability", "model version"),
        [
            (
                profile_id,
                s["instance"],
                s["score"],
                s["percentile"] or None,
                s["bucket"],
                s["probability"],
                s["model_version"],
            )
            for s in scores
        ],
    )


def _factor_rows(scores: list[dict[str, Any]]) -> Rows:
    return Rows(
        ("instance", "factor", "impact", "importance"),
        [
            (s["instance"], f["text"] or f["code"], f["impact"], f["importance"])
            for s in scores
            for f in s["factors"]
        ],
        title="influential factors",
    )


@app.command()
def lookup(
    profile_id: str,
    instance: Annotated[list[str] | None, typer.Option(help="Only these instances.")] = None,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """A profile's latest scores and their reasons."""
    with client() as c:
        resp = c.scorer.GetProfileScores(
            scorer_pb2.GetProfileScoresRequest(profile_id=profile_id, instances=instance or [])
        )
    scores = to_plain(resp)["scores"]
    rows = _score_rows(scores, profile_id)
    emit(resp, as_json=as_json, as_csv=as_csv, rows=rows, extra=[_factor_rows(scores)])


@app.command("score-profile")
def score_profile(
    instance: str,
    profile_id: str,
    as_json: JsonFlag = False,
) -> None:
    """Score one stored profile now (real time, from its current events), with reasons."""
    with client() as c:
        resp = c.scorer.ScoreProfile(
            scorer_pb2.ScoreProfileRequest(instance=instance, profile_id=profile_id)
        )
    scores = [to_plain(resp.score)]
    emit(resp, as_json=as_json, rows=_score_rows(scores, profile_id), extra=[_factor_rows(scores)])


_BUCKETS = {"LOW": common_pb2.BUCKET_LOW, "MEDIUM": common_pb2.BUCKET_MEDIUM}
_BUCKETS["HIGH"] = common_pb2.BUCKET_HIGH


@app.command("segment")
def create_segment(
    name: str,
    instance: Annotated[str, typer.Option(help="Instance whose latest run is filtered.")],
    bucket: Annotated[
        list[str] | None, typer.Option(help="LOW, MEDIUM or HIGH (repeatable).")
    ] = None,
    min_percentile: Annotated[int, typer.Option(min=0, max=100)] = 0,
    max_percentile: Annotated[int, typer.Option(min=0, max=100)] = 0,
    factor: Annotated[
        str, typer.Option(help="Keep profiles with this factor code in their top factors.")
    ] = "",
    as_json: JsonFlag = False,
) -> None:
    """Create a score segment from a filter."""
    unknown = [b for b in bucket or [] if b.upper() not in _BUCKETS]
    if unknown:
        raise typer.BadParameter(f"{unknown[0]!r}: use LOW, MEDIUM or HIGH", param_hint="--bucket")
    flt = scorer_pb2.SegmentFilter(
        buckets=[_BUCKETS[b.upper()] for b in bucket or []],
        min_percentile=min_percentile,
        max_percentile=max_percentile,
        factor_code=factor,
    )
    with client() as c:
        seg = c.scorer.CreateSegment(
            scorer_pb2.CreateSegmentRequest(name=name, instance=instance, filter=flt)
        )
    emit(seg, as_json=as_json, rows=_segment_rows([seg]))


def _segment_rows(segments: list[scorer_pb2.Segment]) -> Rows:
    return Rows(
        ("segment", "instance", "size", "buckets", "source", "created"),
        [
            (
                p["name"],
                p["instance"],
                p["size"],
                " ".join(f"{k}={v:,}" for k, v in sorted(p["bucket_counts"].items())),
                p["source"],
                p["created_at"],
            )
            for p in map(to_plain, segments)
        ],
    )


@app.command()
def segments(
    instance: Annotated[str, typer.Option(help="Only this instance's segments.")] = "",
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """List segments (score segments and saved clusters)."""
    with client() as c:
        resp = c.scorer.ListSegments(scorer_pb2.ListSegmentsRequest(instance=instance))
    emit(resp, as_json=as_json, as_csv=as_csv, rows=_segment_rows(list(resp.segments)))


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
    request = scorer_pb2.ExportSegmentRequest(name=name, format=fmt)
    data = bytearray()
    with client() as c, progress_bar() as bar:
        task = bar.add_task(f"export {name}", total=None)
        for chunk in c.scorer.ExportSegment(request):
            data += chunk.data
            bar.advance(task, len(chunk.data))
    # Written only once the whole segment arrived: a failed export leaves no partial file.
    out.write_bytes(bytes(data))
    console.print(f"wrote {out} ({len(data):,} bytes)")


@app.command()
def insights(name: str, as_json: JsonFlag = False) -> None:
    """Score distribution, factors per bucket, expected vs actual."""
    with client() as c:
        resp = c.scorer.GetInsights(scorer_pb2.GetInsightsRequest(instance=name))
    p = to_plain(resp)
    buckets = Rows(
        ("bucket", "profiles", "mean probability", "top factors"),
        [
            (
                b["bucket"],
                b["profiles"],
                b["mean_probability"],
                "; ".join(f["description"] or f["code"] for f in b["factors"][:3]),
            )
            for b in p["buckets"]
        ],
    )
    histogram = Rows(
        ("scores", "profiles"), [(f"{h['low']}–{h['high']}", h["count"]) for h in p["histogram"]]
    )
    actual = Rows(
        ("bucket", "expected rate", "actual rate", "profiles"),
        [
            (e["bucket"], e["expected_rate"], e["actual_rate"], e["profiles"])
            for e in p["expected_vs_actual"]
        ],
        title="expected vs actual",
    )
    extra = [buckets, histogram] + ([actual] if p["outcome_available"] else [])
    emit(resp, as_json=as_json, summary=f"insights of {name}", extra=extra)


def _last_day(window_end: str | None) -> str:
    """The last whole day of an outcome window from its exclusive end."""
    if not window_end:
        return "-"
    return (datetime.fromisoformat(window_end) - timedelta(days=1)).date().isoformat()


def health_rows(plain: dict[str, Any]) -> Rows:
    """One row per run of a model health report (newest first)."""
    rows = []
    for r in plain["runs"]:
        run, realized, drift = r["run"], r["realized"] or {}, r["drift"] or {}
        top = (drift.get("top_features") or [{}])[0]
        rows.append(
            (
                run["run_id"],
                (run["as_of"] or "")[:10],
                run["model_version"],
                "closed" if r["window_closed"] else f"open to {_last_day(r['window_end'])}",
                realized.get("auc"),
                r["validation_auc"] or None,
                realized.get("lift_top_decile"),
                realized.get("brier"),
                realized.get("ece"),
                drift.get("score_psi"),
                f"{top['code']} {top['psi']:.3f}" if top else None,
                r["note"],
            )
        )
    return Rows(
        (
            "run",
            "as of",
            "model v",
            "outcome window",
            "realized AUC",
            "validation AUC",
            "lift top 10%",
            "Brier",
            "ECE",
            "score PSI",
            "top feature PSI",
            "note",
        ),
        rows,
    )


@app.command("model-health")
def model_health(
    name: str,
    max_runs: Annotated[
        int, typer.Option(min=0, max=100, help="Runs to report, newest first (0 = 12).")
    ] = 0,
    as_json: JsonFlag = False,
    as_csv: CsvFlag = False,
) -> None:
    """Realized quality of past runs, score and feature drift, and whether to retrain."""
    with client() as c:
        resp = c.scorer.GetModelHealth(
            scorer_pb2.GetModelHealthRequest(instance=name, max_runs=max_runs)
        )
    if resp.retrain_recommended:
        summary = "retrain recommended: " + "; ".join(resp.reasons)
    else:
        summary = (
            f"no retrain needed for {name} v{resp.serving_version} "
            f"(realized AUC within {resp.auc_drop_threshold:g} of validation, "
            f"PSI at most {resp.psi_threshold:g})"
        )
    emit(resp, as_json=as_json, as_csv=as_csv, rows=health_rows(to_plain(resp)), summary=summary)
