"""Write the load tests' request data from a real run (into var/loadtest/data by default,
untracked; `--out loadtest/data` replaces the committed files on purpose).

    python -m loadtest.make_data                      # ask the running services
    python -m loadtest.make_data --from-data DIR      # a `foresight generate` folder

From the services (the default) it reads, over gRPC, the instances that have
a model (trainer), the score segments and their members (scorer) and the
discovered clusters' members (segmenter), keeps only profile ids the scorer
actually has scores for, and uses the dataset's last event time as the
`as_of` of real-time scores. From a generated folder it takes the profile ids
and time range from the Parquet files and the instance names from
`--instance`; use that only for data whose ids you know are scored.

Each file is a JSON array of request messages; ghz sends them round-robin
(one per request), the h2load fallback sends the first one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ForesightClient
from loadtest.calls import DATA_DIR, client_config

#: Where `python -m loadtest.make_data` writes by default (ignored by git, like all of var/).
GENERATED_DATA_DIR = Path("var/loadtest/data")

# How many distinct requests each file holds: enough that caches see many
# keys, small enough to commit.
GET_REQUESTS = 500
BATCH_REQUESTS = 20
BATCH_SIZE = 100
SCORE_REQUESTS = 50
EXPAND_REQUESTS = 50
SIMILAR_REQUESTS = 50
SIMILAR_K = 20
SEED_SIZE = 10
# Categories a fresh product view is drawn from (those of `foresight generate`).
CATEGORIES = ("appliances", "tools", "flooring", "paint", "garden", "lighting")


@dataclass
class RunFacts:
    """What the request data is built from."""

    profile_ids: list[str]
    instances: list[str]
    as_of: datetime | None = None
    segments: list[str] = field(default_factory=list)


def _to_json(message: Message) -> dict[str, Any]:
    # Field names as in the .proto: readable, and ghz accepts them as well.
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def build_requests(facts: RunFacts, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """Request messages for every load test, keyed by data file name (without .json).

    Deterministic for given facts and seed. Built as protobuf messages first,
    so every entry is a valid request by construction.
    """
    if not facts.profile_ids:
        raise ValueError("no profile ids to build requests from")
    if not facts.instances:
        raise ValueError("no instance names to build requests from")
    rng = random.Random(seed)
    ids = list(facts.profile_ids)

    def pick(n: int) -> list[str]:
        return rng.sample(ids, n) if len(ids) >= n else [rng.choice(ids) for _ in range(n)]

    get = [scorer_pb2.GetProfileScoresRequest(profile_id=pid) for pid in pick(GET_REQUESTS)]
    batch = [
        scorer_pb2.BatchGetProfileScoresRequest(profile_ids=sorted(set(pick(BATCH_SIZE))))
        for _ in range(BATCH_REQUESTS)
    ]
    score = []
    for i, pid in enumerate(pick(SCORE_REQUESTS)):
        request = scorer_pb2.ScoreProfileRequest(
            instance=facts.instances[i % len(facts.instances)], profile_id=pid
        )
        if facts.as_of is not None:
            request.as_of.FromDatetime(facts.as_of)
            # A fresh product view an hour before as_of: the real-time path
            # merges request events with the stored ones.
            event = common_pb2.Event(
                profile_id=pid,
                event_type="commerce.productViews",
                channel="web",
                product_category=rng.choice(CATEGORIES),
            )
            event.timestamp.FromDatetime(facts.as_of - timedelta(hours=1))
            request.events.append(event)
        score.append(request)
    expand = []
    for i in range(EXPAND_REQUESTS):
        # Mostly explicit seeds (independent of stored segment names); every
        # fifth request expands a stored score segment when there is one.
        if facts.segments and i % 5 == 4:
            expand.append(
                segmenter_pb2.ExpandSegmentRequest(
                    segment=facts.segments[i // 5 % len(facts.segments)], target_size=500
                )
            )
        else:
            expand.append(
                segmenter_pb2.ExpandSegmentRequest(
                    profile_ids=segmenter_pb2.SeedIds(profile_ids=pick(SEED_SIZE)),
                    target_size=100,
                )
            )
    similar = [
        segmenter_pb2.FindSimilarRequest(profile_id=pid, k=SIMILAR_K)
        for pid in pick(SIMILAR_REQUESTS)
    ]
    return {
        "get_profile_scores": [_to_json(m) for m in get],
        "batch_get_profile_scores": [_to_json(m) for m in batch],
        "score_profile": [_to_json(m) for m in score],
        "expand_segment": [_to_json(m) for m in expand],
        "find_similar": [_to_json(m) for m in similar],
    }


def write_requests(requests: dict[str, list[dict[str, Any]]], out_dir: Path = DATA_DIR) -> None:
    """Write one JSON array per load test."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in requests.items():
        (out_dir / f"{name}.json").write_text(json.dumps(items, indent=1) + "\n")


def _scored(client: ForesightClient, ids: Sequence[str]) -> list[str]:
    """The ids the scorer has scores for, in input order."""
    found: list[str] = []
    for start in range(0, len(ids), 1000):
        chunk = list(ids[start : start + 1000])
        resp = client.scorer.BatchGetProfileScores(
            scorer_pb2.BatchGetProfileScoresRequest(profile_ids=chunk)
        )
        found.extend(p.profile_id for p in resp.profiles if p.scores)
    return found


def facts_from_services(client: ForesightClient, max_ids: int = 5000) -> RunFacts:
    """Read instances, segments and scored profile ids from running services."""
    instances = [
        i
        for i in client.trainer.ListInstances(trainer_pb2.ListInstancesRequest()).instances
        if i.current_version > 0
    ]
    if not instances:
        raise SystemExit("no instance has a model yet: run the mission (make demo) or --start")
    as_of = None
    description = client.trainer.DescribeDataset(
        trainer_pb2.DescribeDatasetRequest(dataset=instances[0].dataset)
    )
    if description.HasField("max_timestamp"):
        as_of = description.max_timestamp.ToDatetime(tzinfo=UTC)

    candidates: list[str] = []
    segments = [
        s.name
        for s in client.scorer.ListSegments(scorer_pb2.ListSegmentsRequest()).segments
        if s.size > 0 and s.source == "score"
    ]
    for name in segments:
        members = client.scorer.ListSegmentMembers(
            scorer_pb2.ListSegmentMembersRequest(
                name=name, page=common_pb2.PageRequest(page_size=max_ids)
            )
        )
        candidates.extend(m.profile_id for m in members.members)
    clusters: list[segmenter_pb2.Cluster] = []
    # No discovery yet (or no index): the segments alone will do.
    with contextlib.suppress(grpc.RpcError):
        clusters = list(client.segmenter.ListClusters(segmenter_pb2.ListClustersRequest()).clusters)
    for cluster in clusters:
        page = client.segmenter.ListClusterMembers(
            segmenter_pb2.ListClusterMembersRequest(
                cluster_id=cluster.cluster_id, page=common_pb2.PageRequest(page_size=1000)
            )
        )
        candidates.extend(page.profile_ids)
    unique = list(dict.fromkeys(candidates))[: max_ids * 2]
    profile_ids = _scored(client, unique)[:max_ids]
    if not profile_ids:
        raise SystemExit(
            "found no scored profile ids (no score segment or cluster has members): "
            "create a segment or run DiscoverSegments first"
        )
    return RunFacts(profile_ids, [i.name for i in instances], as_of, segments)


def facts_from_generated(folder: Path, instances: list[str], max_ids: int = 5000) -> RunFacts:
    """Profile ids and the last event time of a `foresight generate` folder."""
    import polars as pl

    ids = pl.read_parquet(folder / "profiles.parquet", columns=["profile_id"])["profile_id"]
    last = pl.scan_parquet(folder / "events.parquet").select(pl.col("timestamp").max()).collect()
    as_of = last.item()
    return RunFacts(ids.head(max_ids).to_list(), instances, as_of)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the request data (default var/loadtest/data/*.json, untracked)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--from-data", type=Path, help="a `foresight generate` folder")
    parser.add_argument(
        "--instance", action="append", help="instance name(s) for --from-data (default churn)"
    )
    # Never the committed loadtest/data by default: a run's data stays out of git.
    parser.add_argument("--out", type=Path, default=GENERATED_DATA_DIR)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.from_data:
        facts = facts_from_generated(args.from_data, args.instance or ["churn"])
    else:
        with ForesightClient(client_config()) as client:
            facts = facts_from_services(client)
    write_requests(build_requests(facts, args.seed), args.out)
    print(
        f"wrote {args.out}: {len(facts.profile_ids)} profile ids, instances {facts.instances}, "
        f"segments {facts.segments}, as_of {facts.as_of}"
    )


if __name__ == "__main__":
    main()
