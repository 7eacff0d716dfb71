"""Dask figures: the shard functions on a 2-worker LocalCluster vs the local pool, and trainer memory.

- `dask_featurize_events_per_s`: labels + features of every shard (the
  trainer's data-sized stages) as tasks on a 2-process LocalCluster; events
  read ÷ wall seconds.
- `local_featurize_events_per_s`: the same work through the local process
  pool with 2 workers; `dask_vs_local_featurize_ratio` = Dask ÷ local.
- `dask_batch_score_1m_s` and the batch-scoring `dask_vs_local_throughput_ratio`:
  bench/dask_score_bench.py (run last, on the model `train_once` leaves).
- `train_peak_rss_mb_1m`, `train_peak_rss_mb_2m`: peak RSS of the trainer
  process (ModelTrainer.train, 1 trial, 2 local workers) at 1,000,000 and
  2,000,000 profiles, each in a fresh process, with the default sample bound
  (DEFAULT_SAMPLE_ROWS); `train_worker_peak_rss_mb_*` is its largest worker
  process. Their own stage of `make bench`, `python -m bench.run --only
  train_rss`; FORESIGHT_TRAIN_RSS_PROFILES sets another N (then 2N), and
  `train_rss_measured` always says which N, bound, load and time they had.
- `shard_costs`: per shard and stage (labels, features, embed): seconds,
  peak RSS of a fresh worker process, bytes read and bytes returned — the
  inputs of docs/scale.md.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from foresight import instance as inst
from foresight.errors import NotFound
from foresight.events.store import EventStore
from foresight.features.labels import choose_cutoffs
from foresight.features.spec import FeatureSpec
from foresight.features.spec_fit import fit_feature_spec
from foresight.shards import ShardRunner
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow
from foresight.tools.generate import generate
from services.trainer.sampling import DEFAULT_SAMPLE_ROWS
from services.trainer.shards import ShardJob, shard_features, shard_labels
from services.trainer.training import ModelTrainer

SHARDS = 16
_SLICE_SEED = 7
CONFIG: dict[str, Any] = {
    "name": "conv",
    "type": "CONVERSION",
    "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
}


def world_of(data: Path, profiles: int) -> tuple[Path, list[ShardJob], list[Any]]:
    """Generate and store `profiles` profiles once (reused); the shard jobs and cutoffs."""
    var = data / f"var-dask-{profiles}"
    store = EventStore(var / "events", SHARDS)
    db = Database(f"sqlite:///{var / 'foresight.db'}")
    db.migrate()
    if not _has_dataset(db) or not catalog.catalogued_parts(db, "shop"):
        folder = data / "imports" / f"dask-{profiles}"
        events = folder / "events.parquet"  # deterministic: a finished file is reused
        if not events.exists():
            events = generate(folder, profiles=profiles, seed=11).events_path
        # A slice of the profiles at a time: all 40M events of 2M profiles at once
        # need more memory than the shared machine has.
        slices = max(1, profiles // 500_000)
        written = []
        for k in range(slices):
            chosen = pl.col("profile_id").hash(_SLICE_SEED) % slices == k
            written += store.write("shop", pl.scan_parquet(events).filter(chosen).collect(), [])
        catalog.record_import(db, "shop", [p.catalogued() for p in written])
    parts = catalog.catalogued_parts(db, "shop")
    span = catalog.time_range(db, "shop")
    assert span is not None
    db.dispose()
    by_shard: dict[int, list[str]] = {}
    for part in parts:
        by_shard.setdefault(EventStore.shard_of_part(part), []).append(part)
    jobs = [ShardJob(store.url, SHARDS, "shop", k, tuple(v)) for k, v in sorted(by_shard.items())]
    cutoffs = list(
        choose_cutoffs(span[1] + timedelta(microseconds=1), 30, data_start=span[0]).cutoffs
    )
    return var, jobs, cutoffs


def _has_dataset(db: Database) -> bool:
    try:
        catalog.get_dataset(db, "shop")
    except NotFound:
        return False
    return True


def _pipeline(
    runner: ShardRunner, jobs: list[ShardJob], cutoffs: list[Any], spec: FeatureSpec
) -> float:
    """Labels then features of every shard; wall seconds."""
    t0 = time.perf_counter()
    labels = [
        s.labels
        for s in runner.map(shard_labels, [(j, inst.from_dict(CONFIG), cutoffs) for j in jobs])
    ]
    runner.map(
        shard_features,
        [(j, spec, cutoffs, f, None) for j, f in zip(jobs, labels, strict=True)],
    )
    return time.perf_counter() - t0


def throughput(results: dict[str, Any], jobs: list[ShardJob], cutoffs: list[Any]) -> None:
    """Dask on 2 workers vs the local pool on 2 workers, same shard functions."""
    from distributed import LocalCluster

    events = sum(j.read().height for j in jobs)
    sample = pl.concat([j.read() for j in jobs[:2]])
    spec = fit_feature_spec(sample, None, inst.from_dict(CONFIG), cutoffs[-1])
    local = ShardRunner(2, keep_alive=True)
    _pipeline(local, jobs[:2], cutoffs, spec)  # start the workers outside the clock
    local_s = _pipeline(local, jobs, cutoffs, spec)
    local.close()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        remote = ShardRunner(2, scheduler=cluster.scheduler_address)
        _pipeline(remote, jobs[:2], cutoffs, spec)
        dask_s = _pipeline(remote, jobs, cutoffs, spec)
        remote.close()
    results["dask_featurize_events_per_s"] = round(events / dask_s)
    results["local_featurize_events_per_s"] = round(events / local_s)
    results["dask_vs_local_featurize_ratio"] = round(local_s / dask_s, 3)
    results["dask_events"] = events


def _measured(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[float, float, int]:
    """Run one shard task in this (fresh) process: seconds, peak RSS MB, result bytes."""
    t0 = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - t0
    return seconds, _baseline(), len(pickle.dumps(out, protocol=5))


def _baseline() -> float:
    """Peak RSS (MB) of this process's own memory: VmHWM, which starts afresh at exec.

    Not ru_maxrss: Linux carries it across execve, so a spawned worker would
    report the peak of the parent it was forked from.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_costs(results: dict[str, Any], jobs: list[ShardJob], cutoffs: list[Any]) -> None:
    """Per-shard cost of labels and features, each task in a fresh process."""
    sample = pl.concat([j.read() for j in jobs[:2]])
    spec = fit_feature_spec(sample, None, inst.from_dict(CONFIG), cutoffs[-1])
    probe = jobs[:4]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1) as pool:
        base = max(pool.submit(_baseline).result() for _ in range(2))
        config = inst.from_dict(CONFIG)
        labels = [shard_labels(j, config, cutoffs).labels for j in probe]
        stages: dict[str, list[tuple[float, float, int]]] = {
            "labels": list(
                pool.map(
                    _measured, [shard_labels] * len(probe), [(j, config, cutoffs) for j in probe]
                )
            ),
            "features": list(
                pool.map(
                    _measured,
                    [shard_features] * len(probe),
                    [(j, spec, cutoffs, f, None) for j, f in zip(probe, labels, strict=True)],
                )
            ),
        }
    read_bytes = [sum(Path(j.store_root, p).stat().st_size for p in j.parts) for j in probe]
    rows = [j.read().height for j in probe]
    costs: dict[str, Any] = {
        "profiles_per_shard": round(results["dask_profiles"] / SHARDS),
        "events_per_shard": round(sum(rows) / len(rows)),
        "parquet_bytes_per_shard": round(sum(read_bytes) / len(read_bytes)),
        "worker_baseline_rss_mb": round(base),
        "cutoffs": len(cutoffs),
    }
    for stage, measured in stages.items():
        costs[stage] = {
            "seconds_per_shard": round(sum(m[0] for m in measured) / len(measured), 3),
            "peak_rss_mb_per_shard": round(max(m[1] for m in measured)),
            "result_bytes_per_shard": round(sum(m[2] for m in measured) / len(measured)),
        }
    results["shard_costs"] = costs


def _train_rss(data: Path, profiles: int, sample_rows: int) -> tuple[float, float, float]:
    """(peak RSS MB, largest worker's peak RSS MB, seconds) of ModelTrainer.train at `profiles`.

    The training runs in a fresh process; its data is ready before it starts.
    """
    world_of(data, profiles)
    script = (
        "import json,resource,time;from pathlib import Path;"
        "from bench.dask_bench import train_once;"
        "t=time.perf_counter();"
        f"train_once(Path({str(data)!r}), {profiles}, {sample_rows});"
        "s=time.perf_counter()-t;"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, s]))"
    )
    out = (
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()
    )
    peak, worker, seconds = json.loads(out[-1])
    return float(peak), float(worker), float(seconds)


def train_rss(results: dict[str, Any], data: Path) -> None:
    """Trainer peak RSS at N and 2N profiles (default 1M and 2M), the default sample bound."""
    profiles = int(os.environ.get("FORESIGHT_TRAIN_RSS_PROFILES", "1000000"))
    measured: dict[str, Any] = {"profiles": [profiles, 2 * profiles]}
    measured["sample_rows"] = DEFAULT_SAMPLE_ROWS
    measured["load_average_1m_before"] = round(os.getloadavg()[0], 1)
    figures = [_train_rss(data, n, DEFAULT_SAMPLE_ROWS) for n in (profiles, 2 * profiles)]
    for suffix, (peak, worker, seconds) in zip(("1m", "2m"), figures, strict=True):
        results[f"train_peak_rss_mb_{suffix}"] = round(peak)
        results[f"train_worker_peak_rss_mb_{suffix}"] = round(worker)
        results[f"train_seconds_{suffix}"] = round(seconds)
    results["train_rss_2m_over_1m"] = round(
        results["train_peak_rss_mb_2m"] / results["train_peak_rss_mb_1m"], 3
    )
    results.pop("train_sample_rows", None)  # older runs' name for the bound
    results["train_rss_measured"] = {
        **measured,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in results.items() if k.startswith("train_")}, indent=1))


def train_once(data: Path, profiles: int, sample_rows: int) -> None:
    """Train the conversion instance once on the stored data (run in a fresh process)."""
    var = data / f"var-dask-{profiles}"
    db = Database(f"sqlite:///{var / 'foresight.db'}")
    artifacts_dir = var / "artifacts"
    shutil.rmtree(artifacts_dir, ignore_errors=True)
    with db.session() as s:
        s.query(InstanceRow).filter(InstanceRow.name == "conv").delete()
        s.add(InstanceRow(name="conv", dataset="shop", config=inst.to_dict(inst.from_dict(CONFIG))))
    trainer = ModelTrainer(
        db,
        EventStore(var / "events", SHARDS),
        ArtifactStore(artifacts_dir),
        2,
        sample_rows=sample_rows,
    )
    try:
        info = trainer.train("conv", 1)
        assert info.status.value == "READY", info.error
    finally:
        trainer.close()


def pg_load_rate(results: dict[str, Any], rows: int = 200_000) -> None:
    """Score rows (5 factors as JSON) bulk loaded into PostgreSQL's profile_scores per second.

    The same `Database.bulk_load` (COPY) a scoring run uses, into a fresh
    database on FORESIGHT_TEST_PG's server; skipped when none is reachable.
    """
    import uuid as _uuid

    import psycopg

    from foresight.storage.models import ProfileScoreRow, ScoringRunRow

    admin = os.environ.get("FORESIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"foresight_bench_{_uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError:
        results["pg_copy_score_rows_per_s"] = "not measured (no PostgreSQL)"
        return
    db = Database(f"{admin.rsplit('/', 1)[0]}/{name}")
    try:
        db.migrate()
        now = datetime.now(UTC)
        with db.session() as s:
            s.add(
                ScoringRunRow(
                    run_id="r", instance_name="i", model_version=1, status="RUNNING", as_of=now
                )
            )
        factors = json.dumps(
            [{"code": f"f{i}", "value": 1.5, "impact": 0.1, "importance": "HIGH"} for i in range(5)]
        )
        data: dict[str, list[Any]] = {
            "run_id": ["r"] * rows,
            "profile_id": [f"p{i:09d}" for i in range(rows)],
            "probability": [0.5] * rows,
            "score": [50] * rows,
            "percentile": [50] * rows,
            "bucket": ["MEDIUM"] * rows,
            "factors": [factors] * rows,
        }
        t0 = time.perf_counter()
        for start in range(0, rows, 50_000):
            chunk = {name: values[start : start + 50_000] for name, values in data.items()}
            db.bulk_load(ProfileScoreRow.__table__, chunk)  # type: ignore[arg-type]
        results["pg_copy_score_rows_per_s"] = round(rows / (time.perf_counter() - t0))
        results["pg_copy_rows"] = rows
    finally:
        db.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(results: dict[str, Any], data: Path) -> None:
    """The Dask figures at FORESIGHT_BENCH_PROFILES profiles (trainer memory: `train_rss`)."""
    profiles = int(os.environ.get("FORESIGHT_BENCH_PROFILES", "1000000"))
    results["dask_profiles"] = profiles
    _, jobs, cutoffs = world_of(data, profiles)
    throughput(results, jobs, cutoffs)
    shard_costs(results, jobs, cutoffs)
    pg_load_rate(results)
    from bench import dask_score_bench  # trains the model at N first when there is none

    dask_score_bench.batch_scoring(results, data, profiles)
    results["dask_measured"] = {
        "profiles": profiles,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }
    mine = ("dask", "train_", "local_", "shard", "pg_")
    print(json.dumps({k: v for k, v in results.items() if k.startswith(mine)}, indent=1))
