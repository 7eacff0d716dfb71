"""Trainer figures: featurize throughput, 200k end-to-end training, parity, AUCs.

- `featurize_events_per_s`: the pure shard function over the 1M-profile data
  set (20M events), shard by shard in one process per core.
- `train_200k_s`: TrainModel over gRPC on 200k generated profiles (~4M events):
  labels, features, model, evaluation, export and parity, end to end.
- `onnx_parity_max_abs_diff`, `auc_conversion`, `auc_churn`: from the trained
  versions' stored evaluations (held-out half of the latest cutoff).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ForesightClient
from foresight.conditions import parse
from foresight.events.partitions import shard_of
from foresight.features.featurize import featurize
from foresight.features.spec import FeatureSpec
from foresight.features.spec_fit import fit_feature_spec
from foresight.instance import Goal, InstanceConfig, InstanceType
from foresight.tools import localrun
from foresight.tools.generate import generate

SHARDS = 16
PURCHASE = 'event_type = "commerce.purchases"'


def _featurize_shard(args: tuple[str, dict[str, Any], str]) -> tuple[int, float]:
    path, spec_dict, as_of_text = args
    events = pl.read_parquet(path)
    t0 = time.perf_counter()
    featurize(events, None, datetime.fromisoformat(as_of_text), FeatureSpec.from_dict(spec_dict))
    return events.height, time.perf_counter() - t0


def featurize_figure(results: dict[str, Any], events_path: Path, work: Path) -> None:
    """Events per second through `featurize` on all cores (shard reads not counted)."""
    events = pl.read_parquet(events_path).with_columns(
        pl.col("timestamp").cast(pl.Datetime("us", "UTC"))
    )
    as_of: datetime = events["timestamp"].max() + timedelta(microseconds=1)  # type: ignore[operator,assignment]
    config = InstanceConfig(name="bench", type=InstanceType.CONVERSION, goal=Goal(parse(PURCHASE)))
    spec = fit_feature_spec(events.head(2_000_000), None, config, as_of)
    shards_dir = work / "featurize-shards"
    shutil.rmtree(shards_dir, ignore_errors=True)
    shards_dir.mkdir(parents=True)
    events = events.with_columns(shard_of(events["profile_id"], SHARDS).alias("__shard"))
    paths = []
    for (shard,), frame in events.partition_by("__shard", as_dict=True).items():
        path = shards_dir / f"{shard}.parquet"
        frame.drop("__shard").write_parquet(path)
        paths.append(str(path))
    del events
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    # spawn, not fork: forking a process that has run Polars' thread pool can deadlock.
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(
            pool.map(_featurize_shard, [(p, spec.to_dict(), as_of.isoformat()) for p in paths])
        )
    wall = time.perf_counter() - t0
    total = sum(n for n, _ in done)
    busy = sum(sec for _, sec in done)
    results["featurize_events_per_s"] = round(total / (busy / cores))
    results["featurize_events"] = total
    results["featurize_wall_s_incl_reads"] = round(wall, 1)
    shutil.rmtree(shards_dir, ignore_errors=True)


def train_figures(results: dict[str, Any], data: Path) -> None:
    """Train conversion and churn on 200k profiles over gRPC; record time, AUC and parity."""
    imports = data / "imports"
    synthetic = imports / "synthetic-200000"
    if not (synthetic / "events.parquet").exists():
        generate(synthetic, profiles=200_000, seed=11)
    var = data / "var-train"
    shutil.rmtree(var, ignore_errors=True)
    services = localrun.start(
        var, env={"FORESIGHT_IMPORT_ROOT": str(imports.resolve())}, services=("trainer",)
    )
    try:
        with ForesightClient(services.client_config(timeout_s=3600)) as client:
            client.trainer.ImportDataset(
                trainer_pb2.ImportDatasetRequest(
                    dataset="shop", path="synthetic-200000/events.parquet"
                )
            )
            for name, kind in (
                ("conversion", trainer_pb2.INSTANCE_TYPE_CONVERSION),
                ("churn", trainer_pb2.INSTANCE_TYPE_CHURN),
            ):
                instance = trainer_pb2.Instance(
                    name=name,
                    type=kind,
                    dataset="shop",
                    goal=trainer_pb2.Goal(
                        conditions=common_pb2.Conditions(text=PURCHASE), window_days=30
                    ),
                )
                client.trainer.CreateInstance(trainer_pb2.CreateInstanceRequest(instance=instance))
                t0 = time.perf_counter()
                version = client.follow(
                    client.trainer.TrainModel(trainer_pb2.TrainModelRequest(instance=name))
                )
                seconds = time.perf_counter() - t0
                evaluation = json.loads(
                    (var / "artifacts" / version.artifact_path / "evaluation.json").read_text()
                )
                results[f"auc_{name}"] = round(version.auc, 4)
                calibration = evaluation["calibrator"]
                results[f"ece_before_{name}"] = round(calibration["ece_before"], 4)
                results[f"ece_after_{name}"] = round(calibration["ece_after"], 4)
                results[f"calibration_{name}"] = calibration["method"]
                results[f"train_200k_{name}_s"] = round(seconds, 1)
                parity = evaluation["parity"]["max_abs_diff"]
                results["onnx_parity_max_abs_diff"] = max(
                    parity, results.get("onnx_parity_max_abs_diff", 0.0)
                )
    finally:
        localrun.stop(services)
    results["train_200k_s"] = results["train_200k_conversion_s"]


def run(results: dict[str, Any], data: Path) -> None:
    """All trainer figures."""
    events = (
        data
        / "imports"
        / f"synthetic-{results.get('machine', {}).get('profiles', 1_000_000)}"
        / "events.parquet"
    )
    if events.exists():
        featurize_figure(results, events, data)
    train_figures(results, data)
