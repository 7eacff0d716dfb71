"""`make demo`: the whole mission over gRPC against locally started services.

Generates synthetic journeys, starts trainer, scorer and segmenter as local
processes (SQLite), checks health and reflection, imports and describes the
data, then runs Customer AI (instances, goal dry runs, training with ONNX
export and evaluation reports, batch scoring with reasons, a lookup, segments,
insights) and Segment AI (encoder, HNSW index, discovered segments in both
views, lookalike expansion of the high-propensity segment, the cluster map).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rich.console import Console

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli.trainer import evaluation_dict, print_description
from foresight.client import ForesightClient
from foresight.tools import localrun
from foresight.tools.generate import generate
from foresight.tools.reports import write_report

console = Console()


def step(title: str) -> None:
    """Print a stage header."""
    console.rule(f"[bold cyan]{title}")


def list_services(address: str) -> list[str]:
    """Service names a server lists through reflection."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        return sorted(s.name for s in answer.list_services_response.service)


def run(data: Path, profiles: int, seed: int) -> None:
    """Run every stage of the demo."""
    imports = data / "imports"
    synthetic = imports / "synthetic"
    step(f"1. Generate {profiles:,} synthetic profiles (seed {seed})")
    if (synthetic / "events.parquet").exists() and (
        synthetic / ".profiles"
    ).read_text() == f"{profiles}:{seed}":
        console.print(f"reusing {synthetic}")
    else:
        generated = generate(synthetic, profiles=profiles, seed=seed)
        (synthetic / ".profiles").write_text(f"{profiles}:{seed}")
        console.print(f"{generated.events:,} events in {generated.seconds:.1f} s")

    step("2. Start trainer, scorer and segmenter (local processes, SQLite)")
    t0 = time.perf_counter()
    # A fresh service state every run (the generated files are reused): the demo can run again.
    shutil.rmtree(data / "var", ignore_errors=True)
    services = localrun.start(data / "var", env={"FORESIGHT_IMPORT_ROOT": str(imports.resolve())})
    console.print(
        ", ".join(f"{k} on :{v}" for k, v in services.ports.items()),
        f"({time.perf_counter() - t0:.1f} s)",
    )
    try:
        with ForesightClient(services.client_config(timeout_s=600)) as client:
            for name in localrun.SERVICES:
                addr = f"127.0.0.1:{services.ports[name]}"
                console.print(
                    f"{name:10s} health={client.health(name)}  reflection={list_services(addr)}"
                )

            step("3. Import the events and profile attributes over gRPC")
            summary = client.trainer.ImportDataset(
                trainer_pb2.ImportDatasetRequest(dataset="shop", path="synthetic/events.parquet"),
                timeout=3600,
            )
            console.print(
                f"read {summary.rows_read:,}  accepted {summary.accepted:,}  rejected {summary.rejected:,}  "
                f"written {summary.written:,}  duplicates {summary.duplicates:,}"
            )
            profiles_summary = client.trainer.ImportProfiles(
                trainer_pb2.ImportProfilesRequest(path="synthetic/profiles.parquet"), timeout=3600
            )
            console.print(
                f"profiles {profiles_summary.profiles:,} with {list(profiles_summary.attributes)}"
            )

            step("4. Describe the dataset")
            print_description(
                client.trainer.DescribeDataset(trainer_pb2.DescribeDatasetRequest(dataset="shop"))
            )
            lines: list[str] = []
            customer_ai(client, data, lines)
            segment_ai(client, data, lines)
            step("Summary")
            for line in lines:
                console.print(line)
    finally:
        codes = localrun.stop(services)
        console.print(f"services stopped: {codes}")


PURCHASE = 'event_type = "commerce.purchases"'
INSTANCES = [
    trainer_pb2.Instance(
        name="churn",
        description="Customers who will not purchase in the next 30 days",
        type=trainer_pb2.INSTANCE_TYPE_CHURN,
        dataset="shop",
        goal=trainer_pb2.Goal(conditions=common_pb2.Conditions(text=PURCHASE), window_days=30),
    ),
    trainer_pb2.Instance(
        name="conversion",
        description="Customers who will purchase in the next 30 days",
        type=trainer_pb2.INSTANCE_TYPE_CONVERSION,
        dataset="shop",
        goal=trainer_pb2.Goal(conditions=common_pb2.Conditions(text=PURCHASE), window_days=30),
        profile_attributes=["loyalty_tier", "region"],
    ),
]


def progress_line(prefix: str) -> Callable[[common_pb2.Progress], None]:
    """A progress callback printing one line per stage change."""
    seen: set[str] = set()

    def show(p: common_pb2.Progress) -> None:
        if p.stage not in seen:
            seen.add(p.stage)
            console.print(f"  {prefix}: {p.stage:10s} {100 * p.fraction:5.1f} %  {p.message}")

    return show


def bucket(value: int) -> str:
    """Short bucket name."""
    return common_pb2.Bucket.Name(common_pb2.Bucket.ValueType(value)).removeprefix("BUCKET_")


def customer_ai(client: ForesightClient, data: Path, summary: list[str]) -> None:
    """Instances → goal check → training → scoring → lookups → segment → insights."""
    step("5. Prediction instances and goal dry runs")
    for instance in INSTANCES:
        client.trainer.CreateInstance(trainer_pb2.CreateInstanceRequest(instance=instance))
        check = client.trainer.ValidateGoal(trainer_pb2.ValidateGoalRequest(name=instance.name))
        console.print(
            f"{instance.name:10s} cutoff {check.cutoff.ToDatetime():%Y-%m-%d}: eligible {check.eligible:,}, "
            f"positive {check.positives:,}, negative {check.negatives:,}, enough data: {check.enough_data}"
        )

    step("6. Train, evaluate and export (ONNX) both models")
    for instance in INSTANCES:
        stream = client.trainer.TrainModel(trainer_pb2.TrainModelRequest(instance=instance.name))
        version = client.follow(stream, progress_line(instance.name))
        ev = client.trainer.GetEvaluation(trainer_pb2.GetEvaluationRequest(instance=instance.name))
        page, _ = write_report(
            evaluation_dict(ev), data / "reports" / f"{instance.name}-v{version.version}"
        )
        top = ", ".join(f.description for f in ev.global_factors[:3])
        console.print(
            f"{instance.name} v{version.version}: AUC {ev.auc:.3f}, PR-AUC {ev.pr_auc:.3f}, "
            f"quality {trainer_pb2.Quality.Name(ev.quality).removeprefix('QUALITY_')}; top factors: {top}"
        )
        console.print(f"  report: {page}")
        summary.append(
            f"model {instance.name} v{version.version}: AUC {ev.auc:.3f}; evaluation report {page}"
        )

    step("7. Score every eligible profile (batch, with reason codes)")
    for instance in INSTANCES:
        run = client.follow(
            client.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=instance.name)),
            progress_line(instance.name),
        )
        console.print(f"{instance.name}: run {run.run_id[:8]} scored {run.profiles:,} profiles")
        summary.append(f"scores {instance.name}: {run.profiles:,} profiles with top-5 reasons")

    step("8. One profile's scores and reasons (GetProfileScores)")
    profile_id = first_high_risk(client)
    scores = client.scorer.GetProfileScores(
        scorer_pb2.GetProfileScoresRequest(profile_id=profile_id)
    )
    for s in scores.scores:
        console.print(
            f"[bold]{profile_id}[/] {s.instance}: probability {s.probability:.3f}, score {s.score}, "
            f"percentile {s.percentile}, bucket {bucket(s.bucket)}"
        )
        for f in s.factors:
            imp = common_pb2.Importance.Name(f.importance).removeprefix("IMPORTANCE_")
            console.print(f"    {f.impact:+.3f}  {imp:6s} {f.text}")

    step("9. Segment: high churn risk")
    segment = client.scorer.CreateSegment(
        scorer_pb2.CreateSegmentRequest(
            name="high-churn-risk",
            instance="churn",
            filter=scorer_pb2.SegmentFilter(buckets=[common_pb2.BUCKET_HIGH]),
        )
    )
    console.print(f"{segment.name}: {segment.size:,} profiles")
    high_conv = client.scorer.CreateSegment(
        scorer_pb2.CreateSegmentRequest(
            name="high-propensity",
            instance="conversion",
            filter=scorer_pb2.SegmentFilter(min_percentile=95),
        )
    )
    console.print(f"{high_conv.name}: {high_conv.size:,} profiles (top 5 % conversion propensity)")
    summary.append(
        f"segments: {segment.name} {segment.size:,}, {high_conv.name} {high_conv.size:,} profiles"
    )

    step("10. Insights of the churn model")
    insights = client.scorer.GetInsights(scorer_pb2.GetInsightsRequest(instance="churn"))
    console.print(
        "score histogram: " + " ".join(f"{b.low}-{b.high}:{b.count}" for b in insights.histogram)
    )
    for b in insights.buckets:
        factors = ", ".join(f"{f.description} ({100 * f.share:.0f} %)" for f in b.factors[:3])
        console.print(
            f"  {bucket(b.bucket):6s} {b.profiles:7,} profiles, mean p {b.mean_probability:.2f}: {factors}"
        )
    if insights.outcome_available:
        for e in insights.expected_vs_actual:
            console.print(
                f"  {bucket(e.bucket):6s} expected {e.expected_rate:.2f} vs actual {e.actual_rate:.2f}"
            )
    else:
        console.print("  expected vs actual: the outcome window has not passed in the data yet")


def first_high_risk(client: ForesightClient) -> str:
    """A profile from the top of the churn run, to show its reasons."""
    segment = client.scorer.CreateSegment(
        scorer_pb2.CreateSegmentRequest(
            name="demo-top-churn",
            instance="churn",
            filter=scorer_pb2.SegmentFilter(min_percentile=99),
        )
    )
    page = client.scorer.ListSegmentMembers(
        scorer_pb2.ListSegmentMembersRequest(
            name=segment.name, page=common_pb2.PageRequest(page_size=1)
        )
    )
    return page.members[0].profile_id


def segment_ai(client: ForesightClient, data: Path, summary: list[str]) -> None:
    """Encoder → index → discovered segments (both views) → expansion → cluster map."""
    step("11. Journey encoder (chosen by measurement) and HNSW index")
    encoder = client.follow(
        client.trainer.TrainEncoder(trainer_pb2.TrainEncoderRequest(dataset="shop")),
        progress_line("encoder"),
    )
    kind = trainer_pb2.EncoderKind.Name(encoder.kind).removeprefix("ENCODER_KIND_")
    console.print(
        f"encoder v{encoder.version}: {kind}, {encoder.dimensions} dims, metrics {dict(encoder.metrics)}"
    )
    index = client.follow(
        client.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset="shop")),
        progress_line("index"),
    )
    console.print(
        f"index v{index.version}: {index.count:,} profiles, {index.dimensions} dims, M={index.m}"
    )

    step("12. Discover segments")
    discovery = client.follow(
        client.segmenter.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest()),
        progress_line("discover"),
    )
    console.print(f"{len(discovery.clusters)} clusters ({discovery.chosen_by})")
    names = ", ".join(c.name for c in discovery.clusters)
    summary.append(f"discovered {len(discovery.clusters)} clusters: {names}")
    for cluster in discovery.clusters:
        console.print(
            f"[bold]#{cluster.cluster_id} {cluster.name}[/]  {cluster.size:,} profiles ({100 * cluster.share:.1f} %)"
        )
        influence = "; ".join(
            f"{t.description} ×{t.lift:.1f} ({t.cluster_percent:.0f} %)"
            for t in cluster.influence[:3]
        )
        popularity = "; ".join(f"{t.description} ({t.count:,})" for t in cluster.popularity[:3])
        console.print(f"    high influence : {influence}")
        console.print(f"    high popularity: {popularity}")

    step("13. Expand the high-propensity segment with lookalikes")
    expansion = client.segmenter.ExpandSegment(
        segmenter_pb2.ExpandSegmentRequest(segment="high-propensity")
    )
    reach = ", ".join(f"≥{r.similarity:.2f}: {r.audience_size:,}" for r in expansion.reach[:6])
    console.print(
        f"seed {expansion.seed_size:,} → {len(expansion.lookalikes):,} lookalikes "
        f"from {expansion.query_points} query points; reach {reach}"
    )

    step("14. Cluster map")
    vis = client.segmenter.GetVisualization(segmenter_pb2.GetVisualizationRequest(sample_size=3000))
    from foresight.tools.mapview import write_map

    html_path, png_path = write_map(vis, data / "reports" / "cluster-map")
    console.print(f"map: {html_path} and {png_path} ({len(vis.points):,} points)")
    summary.append(
        f"lookalikes of high-propensity: {len(expansion.lookalikes):,}; cluster map {html_path}"
    )


def main() -> None:
    """`python -m foresight.tools.demo --data DIR`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("var/demo"))
    parser.add_argument("--profiles", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    run(args.data, args.profiles, args.seed)


if __name__ == "__main__":
    main()
