"""Services with scores and an index to load: `python -m loadtest.prepare` or `run --start`.

Runs the part of the mission the load tests need: import → instances (churn,
conversion) → train → score → a score segment → journey encoder → index.
Each step is skipped when its result already exists, so running it twice is
quick.

    make up && python -m loadtest.prepare   # against running services (`make up`)
    python -m loadtest.run --start          # start local services on free ports, then load them

Against running services the synthetic data is generated into the trainer's
import root (`--imports`, default var/imports as for `make up`), so the
trainer must run on this machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ForesightClient
from foresight.tools import localrun
from foresight.tools.demo import INSTANCES
from foresight.tools.generate import generate

DATASET = "shop"
SEGMENT = "loadtest-high-churn"


def instances(dataset: str = DATASET, minimum: int = 50) -> list[trainer_pb2.Instance]:
    """The demo's churn and conversion instances on the synthetic shop data.

    `minimum` lowers the 500/500 data gate so a few thousand profiles train.
    """
    out = []
    for template in INSTANCES:
        instance = trainer_pb2.Instance()
        instance.CopyFrom(template)
        instance.dataset, instance.min_positives, instance.min_negatives = dataset, minimum, minimum
        out.append(instance)
    return out


def _exists(exc: grpc.RpcError) -> bool:
    return isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.ALREADY_EXISTS


def prepare(client: ForesightClient, log: Callable[[str], None] = print) -> None:
    """Run the mission up to served scores and a served index (idempotent)."""
    datasets = {
        d.name for d in client.trainer.ListDatasets(trainer_pb2.ListDatasetsRequest()).datasets
    }
    if DATASET not in datasets:
        summary = client.trainer.ImportDataset(
            trainer_pb2.ImportDatasetRequest(dataset=DATASET, path="synthetic/events.parquet"),
            timeout=600,
        )
        client.trainer.ImportProfiles(
            trainer_pb2.ImportProfilesRequest(path="synthetic/profiles.parquet"), timeout=600
        )
        log(f"imported {summary.written:,} events")
    for instance in instances():
        try:
            client.trainer.CreateInstance(trainer_pb2.CreateInstanceRequest(instance=instance))
        except grpc.RpcError as exc:
            if not _exists(exc):
                raise
        current = client.trainer.GetInstance(trainer_pb2.GetInstanceRequest(name=instance.name))
        if current.current_version == 0:
            version = client.follow(
                client.trainer.TrainModel(trainer_pb2.TrainModelRequest(instance=instance.name))
            )
            log(f"trained {instance.name} v{version.version}: AUC {version.auc:.3f}")
        runs = client.scorer.ListScoringRuns(
            scorer_pb2.ListScoringRunsRequest(instance=instance.name)
        ).runs
        if not any(r.status == common_pb2.JOB_STATUS_READY for r in runs):
            run = client.follow(
                client.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=instance.name))
            )
            log(f"scored {instance.name}: {run.profiles:,} profiles")
    try:
        client.scorer.CreateSegment(
            scorer_pb2.CreateSegmentRequest(
                name=SEGMENT,
                instance="churn",
                filter=scorer_pb2.SegmentFilter(buckets=[common_pb2.BUCKET_HIGH]),
            )
        )
    except grpc.RpcError as exc:
        if not _exists(exc):
            raise
    encoders = client.trainer.ListEncoderVersions(trainer_pb2.ListEncoderVersionsRequest()).versions
    if not any(e.status == common_pb2.JOB_STATUS_READY for e in encoders):
        encoder = client.follow(
            client.trainer.TrainEncoder(trainer_pb2.TrainEncoderRequest(dataset=DATASET))
        )
        log(f"encoder v{encoder.version}")
    try:
        info = client.segmenter.GetIndexInfo(segmenter_pb2.GetIndexInfoRequest())
        indexed = info.count > 0
    except grpc.RpcError:
        indexed = False
    if not indexed:
        info = client.follow(
            client.segmenter.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=DATASET))
        )
        log(f"index v{info.version}: {info.count:,} profiles")


def generate_once(imports: Path, profiles: int, seed: int) -> None:
    """Synthetic data in `imports/synthetic`, unless the same is already there."""
    synthetic = imports / "synthetic"
    marker = synthetic / ".profiles"
    if not marker.exists() or marker.read_text() != f"{profiles}:{seed}":
        generate(synthetic, profiles=profiles, seed=seed)
        marker.write_text(f"{profiles}:{seed}")


def start(work: Path, profiles: int = 3000, seed: int = 7) -> localrun.LocalServices:
    """Generate data (once), start the three services on free ports, prepare them."""
    imports = (work / "imports").resolve()
    generate_once(imports, profiles, seed)
    services = localrun.start(work / "var", env={"FORESIGHT_IMPORT_ROOT": str(imports)})
    try:
        with ForesightClient(services.client_config(timeout_s=600)) as client:
            prepare(client)
    except BaseException:
        localrun.stop(services)
        raise
    return services


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: prepare running services (addresses from FORESIGHT_*_ADDR)."""
    from loadtest.calls import client_config

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--imports", type=Path, default=Path("var/imports"))
    parser.add_argument("--profiles", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    generate_once(args.imports, args.profiles, args.seed)
    with ForesightClient(client_config(timeout_s=600)) as client:
        prepare(client)


if __name__ == "__main__":
    main()
