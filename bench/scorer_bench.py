"""Scorer figures for `make bench` (stage "scorer").

- batch_score_1m_s: RunScoring of every eligible profile of the 1M-profile data
  set, top-5 factors included (featurize, ONNX, TreeSHAP, Parquet copy, bulk
  load into profile_scores); batch_score_{featurize,predict,explain}_s are
  summed over the shards (worker processes run them side by side),
  batch_score_{write,snapshot}_s are wall time, batch_score_shards_s the wall
  time of all shards.
- scorer_rss_mb_1m: RSS of a fresh `foresight-scorer` process serving two
  instances' snapshots (1M profiles × 5 factors each); scorer_forkserver_rss_mb
  the RSS of the idle forkserver it starts for its shard workers (a process of
  its own, FORESIGHT_PRELOAD_SHARD_WORKERS).
- lookup_rps_ratio_vs_empty: h2load throughput of GetProfileScores divided by
  that of an empty handler registered on the same server (same interceptor,
  same process, same load generator, measured back to back).
- lookup_p99_ms_at_1k_rps: p99 latency of GetProfileScores at 1,000 requests/s.
- score_profile_rps / _p99_ms: ScoreProfile of a stored journey plus 5 fresh
  events (rps: the median of three runs, all in score_profile_rps_runs);
  score_profile_first_call_ms its first call, on a cold history cache
  (removed before the server starts: the call copies the shard's event parts),
  and scorer_peak_rss_mb_1m the server's peak RSS after all of these.
- onnx_vs_lightgbm_single_row_ratio / _batch10k_ratio: ONNX time ÷ LightGBM
  time for the same model (< 1 means ONNX is faster).

The data set is ingested once into `<workdir>/var-scorer` (event store with 16
shards, catalog rows) and two instances (churn, purchase) get a model trained
here on a sample of shards with the trainer's bounds (≤ 31 leaves, depth ≤ 6,
early stopping, ≤ 300 rounds); later runs reuse them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import psutil
import pyarrow.parquet as pq
from sqlalchemy import select

from foresight import instance as instance_config
from foresight.events.store import EventStore, PartInfo
from foresight.events.validation import validate
from foresight.features.featurize import featurize
from foresight.features.labels import eligible_profiles, goal_labels
from foresight.features.spec_fit import fit_feature_spec
from foresight.shards import wait_prestarted
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import write_model_bundle
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import (
    DatasetPartRow,
    InstanceRow,
    ModelVersionRow,
    utcnow,
)

DATASET = "bench"
SHARDS = 16
TRAIN_SHARDS = 2  # ~125k profiles: plenty for a realistic model, quick to train
WINDOW = 30
PREPARED = "prepared.json"
INSTANCES: dict[str, dict[str, Any]] = {
    "churn": {"name": "churn", "type": "CHURN", "goal": {"window_days": WINDOW}},
    "purchase": {
        "name": "purchase",
        "type": "CONVERSION",
        "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": WINDOW},
    },
}
PARAMS = {
    "objective": "binary",
    "num_leaves": 31,
    "max_depth": 6,
    "min_data_in_leaf": 100,
    "learning_rate": 0.05,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "seed": 7,
    "verbosity": -1,
}


def _source(workdir: Path) -> Path:
    profiles = int(os.environ.get("FORESIGHT_BENCH_PROFILES", "1000000"))
    return workdir / "imports" / f"synthetic-{profiles}" / "events.parquet"


# --- preparation ----------------------------------------------------------------------------


def prepare(workdir: Path) -> Path:
    """Ingest the data set and publish two models once; returns the data directory."""
    source = _source(workdir)
    var = workdir / "var-scorer"
    marker = var / PREPARED
    stamp = {"source": str(source), "size": source.stat().st_size, "shards": SHARDS}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return var
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    db = Database(f"sqlite:///{var / 'foresight.db'}")
    db.migrate()
    store = EventStore(var / "events", shards=SHARDS)
    t0 = time.perf_counter()
    parts: list[PartInfo] = []
    now = datetime.now(UTC)
    for batch in pq.ParquetFile(source).iter_batches(batch_size=4_000_000):
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        accepted = validate(frame, now).accepted
        parts += store.write(DATASET, accepted, [p.path for p in parts])
    catalog.record_import(db, DATASET, [p.catalogued() for p in parts])
    with db.session() as s:
        for name, cfg in INSTANCES.items():
            s.add(InstanceRow(name=name, dataset=DATASET, config=cfg))
    print(
        f"ingested {sum(p.rows for p in parts):,} events in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    end = max(p.max_timestamp for p in parts) + timedelta(microseconds=1)
    cutoff = (end - timedelta(days=WINDOW)).replace(hour=0, minute=0, second=0, microsecond=0)
    sample = pl.concat(
        [store.read_shard(DATASET, k, [p.path for p in parts]) for k in range(TRAIN_SHARDS)]
    )
    for name in INSTANCES:
        t1 = time.perf_counter()
        trees = _publish(var, db, name, sample, cutoff)
        print(f"model {name}: {trees} trees in {time.perf_counter() - t1:.0f} s", flush=True)
    db.dispose()
    marker.write_text(json.dumps(stamp))
    return var


def _publish(var: Path, db: Database, name: str, events: pl.DataFrame, cutoff: datetime) -> int:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    config = instance_config.from_dict(INSTANCES[name])
    spec = fit_feature_spec(events, None, config, cutoff)
    eligible = eligible_profiles(events, config.population, cutoff)
    labels = goal_labels(events, config.goal, cutoff, eligible)
    matrix = featurize(events, None, cutoff, spec, profile_ids=labels.get_column("profile_id"))
    y = labels.get_column("label").to_numpy()
    rng = np.random.default_rng(0)
    valid = rng.random(len(y)) < 0.2
    train_set = lgb.Dataset(matrix.X[~valid], y[~valid])
    valid_set = lgb.Dataset(matrix.X[valid], y[valid], reference=train_set)
    booster = lgb.train(
        {**PARAMS, "metric": "auc"},
        train_set,
        300,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    auc = float(booster.best_score["valid_0"]["auc"])
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    onnx = convert_lightgbm(
        booster,
        initial_types=[("features", FloatTensorType([None, matrix.X.shape[1]]))],
        zipmap=False,
    )
    relative = f"models/{name}/v1"
    with ArtifactStore(var / "artifacts").publish(relative, owner="trainer") as folder:
        write_model_bundle(
            folder,
            onnx_model=onnx.SerializeToString(),
            model_text=booster.model_to_string(),
            feature_spec=spec.to_dict(),
            instance=instance_config.to_dict(config),
            evaluation={"auc": auc, "quality": "GOOD"},
        )
    with db.session() as s:
        s.add(
            ModelVersionRow(
                instance_name=name,
                version=1,
                status=Status.READY.value,
                artifact_path=relative,
                created_at=utcnow(),
                finished_at=utcnow(),
            )
        )
        s.query(InstanceRow).filter_by(name=name).update({"current_version": 1})
    return int(booster.num_trees())


# --- batch scoring -----------------------------------------------------------------------------


def batch_scoring(var: Path, results: dict[str, Any]) -> None:
    """batch_score_1m_s: one RunScoring of the churn instance over every shard, stored and served."""
    from services.scorer.main import build_scorer
    from services.scorer.settings import ScorerSettings

    settings = ScorerSettings(data_dir=var, port=0, log_json=False)
    db = Database(settings.resolved_database_url)
    scorer = build_scorer(settings, db)
    scorer.refresh()
    # As in a running scorer: its forkserver has imported the service (~0.7 s after start).
    wait_prestarted()
    for name in ("churn", "purchase"):
        model = scorer.registry.get(name)
        t0 = time.perf_counter()
        run = scorer.run_scoring(name, None)
        seconds = time.perf_counter() - t0
        key = "batch_score_1m_s" if name == "churn" else f"batch_score_1m_{name}_s"
        results[key] = round(seconds, 1)
        results[f"batch_score_{name}_profiles"] = run.profiles
        results[f"batch_score_{name}_trees"] = (
            len(model.explainer.fast.trees) if model.explainer.fast else None
        )
        results[f"batch_score_{name}_fast_treeshap"] = model.explainer.fast is not None
        # Where the time went: featurize (read included), predict and explain are summed
        # over shards (they run side by side in the workers); write and snapshot are wall time.
        stages = dict(scorer.engine.stage_seconds)
        stages["featurize"] = stages.get("featurize", 0.0) + stages.pop("read", 0.0)
        prefix = "batch_score" if name == "churn" else f"batch_score_{name}"
        for stage in ("featurize", "predict", "explain", "write", "snapshot", "shards"):
            results[f"{prefix}_{stage}_s"] = round(stages.get(stage, 0.0), 2)
        print(f"  stages (s): {', '.join(f'{k} {v:.1f}' for k, v in stages.items())}", flush=True)
        print(
            f"RunScoring {name}: {run.profiles:,} eligible profiles in {seconds:.1f} s", flush=True
        )
    t0 = time.perf_counter()
    scorer.engine.close()  # pruned runs' rows are deleted in the background: not during serving
    print(f"  background deletes of pruned rows: {time.perf_counter() - t0:.1f} s more", flush=True)
    db.dispose()


# --- the server: RSS and lookups -------------------------------------------------------------------

_SERVER = textwrap.dedent(
    """
    import asyncio, signal, sys
    from pathlib import Path

    import grpc

    from foresight.api.scorer.v1 import scorer_pb2
    from foresight.storage.artifacts import atomic_write_bytes
    from foresight.storage.db import Database
    from services.scorer.main import build_scorer, start_scorer
    from services.scorer.settings import ScorerSettings

    async def empty(request, context):
        return scorer_pb2.ProfileScores()

    async def main() -> None:
        var, port_file = Path(sys.argv[1]), Path(sys.argv[2])
        settings = ScorerSettings(data_dir=var, port=0, log_json=False, log_level="WARNING")
        scorer = build_scorer(settings, Database(settings.resolved_database_url))
        # The baseline: a handler that does nothing, on the same server, interceptor and process.
        handler = grpc.method_handlers_generic_handler(
            "foresight.bench.Empty",
            {
                "GetProfileScores": grpc.unary_unary_rpc_method_handler(
                    empty,
                    request_deserializer=scorer_pb2.GetProfileScoresRequest.FromString,
                    response_serializer=scorer_pb2.ProfileScores.SerializeToString,
                )
            },
        )
        running = await start_scorer(settings, scorer, extra_handlers=[handler])
        atomic_write_bytes(port_file, str(running.port).encode())
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await running.stop(0)

    asyncio.run(main())
    """
)


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MB."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _anon_mb(pid: int) -> float:
    """The process's anonymous resident memory (its heap: not file pages) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc status")


def _read_every_profile(var: Path, port: int, pid: int, results: dict[str, Any]) -> None:
    """scorer_rss_mb_1m_all_read: RSS once every page of both snapshots is resident.

    The snapshots are mapped from their sidecars, so a page counts in RSS once a
    lookup reads it. Every 50th profile in row order (BatchGetProfileScores, 1,000
    ids a call) reads every page of the row columns (≤ 20 bytes a profile, so ≥ 200
    profiles a page), and 20,000 binary searches read every page of the hash array
    (4 bytes a profile): a sweep of all 1M profiles made the same 279 MB of file
    pages resident on this machine, in 59 s instead of 1 s.
    """
    import grpc

    from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc

    ids = pq.read_table(
        var / "artifacts" / _scores_path(var, "churn"), columns=["profile_id"]
    ).column("profile_id")
    every = ids.take(np.arange(0, len(ids), 50))
    t0 = time.perf_counter()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        found = 0
        for start in range(0, len(every), 1000):
            reply = stub.BatchGetProfileScores(
                scorer_pb2.BatchGetProfileScoresRequest(
                    profile_ids=every.slice(start, 1000).to_pylist()
                ),
                timeout=60,
            )
            found += sum(len(p.scores) for p in reply.profiles)
    rss, _ = _rss_mb(pid)
    results["scorer_rss_mb_1m_all_read"] = round(rss)
    results["scorer_anon_mb_1m_all_read"] = round(_anon_mb(pid))
    print(
        f"read {len(every):,} profiles ({found:,} scores) in {time.perf_counter() - t0:.1f} s: "
        f"RSS {rss:.0f} MB ({results['scorer_anon_mb_1m_all_read']} MB anonymous)",
        flush=True,
    )


def _settle(pid: int, within_s: float = 120.0) -> None:
    """Wait until a server and its children (the forkserver importing the service's
    modules after start) are idle: CPU time grows < 2% over half a second."""
    deadline = time.time() + within_s
    server = psutil.Process(pid)

    def cpu() -> float:
        total = 0.0
        for process in [server, *server.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(process.cpu_times()[:2])
        return total

    while time.time() < deadline:
        before = cpu()
        time.sleep(0.5)
        if cpu() - before < 0.01:
            return


def _frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _h2load(
    port: int, path: str, body: Path, args: list[str], log: Path | None = None
) -> tuple[float, str]:
    cmd = [
        "h2load",
        *args,
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
    ]
    if log is not None:
        cmd.append(f"--log-file={log}")
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {out.stderr[-2000:]}")
    rps = float(out.stdout.split(" req/s")[0].rsplit(",", 1)[-1].strip())
    if " 0 failed" not in out.stdout or " 0 errored" not in out.stdout:
        raise RuntimeError(f"h2load saw failures:\n{out.stdout[-1500:]}")
    return rps, out.stdout


def serving(var: Path, results: dict[str, Any]) -> None:
    """scorer_rss_mb_1m, lookup_rps_ratio_vs_empty, lookup_p99_ms_at_1k_rps."""
    from foresight.api.scorer.v1 import scorer_pb2

    if shutil.which("h2load") is None:
        raise RuntimeError("h2load not found: apt-get install -y nghttp2-client")
    # ScoreProfile's copies of the event parts: every run measures the first call on a cold
    # cache (what a scorer sees after an import), whatever an earlier run left.
    shutil.rmtree(var / "cache" / "scorer" / DATASET, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="scorer-bench-") as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(var), str(port_file)],
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
        try:
            deadline = time.time() + 300
            while not port_file.exists():
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the scorer did not start")
                time.sleep(0.2)
            port = int(port_file.read_text())
            _settle(server.pid)
            rss, _ = _rss_mb(server.pid)
            results["scorer_rss_mb_1m"] = round(rss)
            results["scorer_anon_mb_1m"] = round(_anon_mb(server.pid))
            print(
                f"scorer RSS with both snapshots loaded: {rss:.0f} MB "
                f"({results['scorer_anon_mb_1m']} MB anonymous)",
                flush=True,
            )

            profile = _a_profile(var)
            body = Path(tmp) / "body.bin"
            body.write_bytes(
                _frame(scorer_pb2.GetProfileScoresRequest(profile_id=profile).SerializeToString())
            )
            lookup, empty = (
                "/foresight.scorer.v1.ScorerService/GetProfileScores",
                "/foresight.bench.Empty/GetProfileScores",
            )
            load = ["--requests=40000", "--clients=8", "--max-concurrent-streams=16", "--threads=1"]
            _h2load(
                port, lookup, body, ["--requests=5000", "--clients=4", "--threads=1"]
            )  # warm up
            ratios, lookups, empties = [], [], []
            for _ in range(3):  # alternate, so drift on a shared machine hits both alike
                e, _ = _h2load(port, empty, body, load)
                r, _ = _h2load(port, lookup, body, load)
                empties.append(e)
                lookups.append(r)
                ratios.append(r / e)
            results["lookup_rps"] = round(statistics.median(lookups))
            results["empty_rps"] = round(statistics.median(empties))
            results["lookup_rps_ratio_vs_empty"] = round(statistics.median(ratios), 3)
            print(
                f"lookup {lookups} vs empty {empties} req/s → ratio {results['lookup_rps_ratio_vs_empty']}"
            )

            # Paced at 1,000 req/s. h2load paces each connection on its own timer; one
            # connection carries the rate smoothly, ten make bursts that queue on the
            # one event loop. Both are reported; the figure is the single connection.
            for clients, key in (
                (1, "lookup_p99_ms_at_1k_rps"),
                (10, "lookup_p99_ms_at_1k_rps_10_connections"),
            ):
                paced = [
                    "--requests=15000",
                    f"--clients={clients}",
                    f"--rps={1000 // clients}",
                    "--threads=1",
                ]
                p50, p99 = _paced(port, lookup, body, Path(tmp) / f"lat-{clients}.tsv", paced)
                results[key] = round(p99, 3)
                results[key.replace("p99", "p50")] = round(p50, 3)
                print(f"{clients} connection(s) at 1k req/s: p99 {p99:.2f} ms", flush=True)
            _real_time(var, port, Path(tmp), results)
            _, peak = _rss_mb(server.pid)
            results["scorer_peak_rss_mb_1m"] = round(peak)
            print(f"peak RSS {peak:.0f} MB", flush=True)
            _read_every_profile(var, port, server.pid, results)
            # The process the shard workers fork from (FORESIGHT_PRELOAD_SHARD_WORKERS), idle.
            forkservers = [
                child.pid
                for child in psutil.Process(server.pid).children()
                if "forkserver" in " ".join(child.cmdline())
            ]
            if forkservers:
                results["scorer_forkserver_rss_mb"] = round(_rss_mb(forkservers[0])[0])
                print(f"forkserver RSS {results['scorer_forkserver_rss_mb']} MB", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def _paced(port: int, path: str, body: Path, log: Path, args: list[str]) -> tuple[float, float]:
    """p50 and p99 (ms) of a paced h2load run, from its per-request log."""
    _h2load(port, path, body, args, log)
    micros = sorted(
        int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2
    )
    return micros[len(micros) // 2] / 1000, micros[int(0.99 * (len(micros) - 1))] / 1000


def _journey(var: Path, stored: int = 200) -> tuple[str, int]:
    """The profile whose stored history is closest to `stored` events, and its size."""
    store = EventStore(var / "events", SHARDS)
    with Database(f"sqlite:///{var / 'foresight.db'}").session() as s:
        parts = [p.path for p in s.query(DatasetPartRow).all()]
    counts = store.read_shard(DATASET, 0, parts).group_by("profile_id").len()
    row = counts.sort((pl.col("len").cast(pl.Int64) - stored).abs(), "profile_id").row(0)
    return str(row[0]), int(row[1])


SCORE_PROFILE = "/foresight.scorer.v1.ScorerService/ScoreProfile"


def _score_profile_body(var: Path, tmp: Path) -> tuple[Path, int]:
    """The framed ScoreProfile request (a stored journey plus 5 fresh events) and the
    journey's stored event count."""
    from foresight.api.common.v1 import common_pb2
    from foresight.api.scorer.v1 import scorer_pb2

    profile, stored = _journey(var)
    request = scorer_pb2.ScoreProfileRequest(instance="churn", profile_id=profile)
    now = datetime.now(UTC)
    for i, kind in enumerate(["commerce.productViews"] * 3 + ["commerce.productListAdds"] * 2):
        event = request.events.add(event_type=kind, channel="web", product_category="tools")
        event.timestamp.FromDatetime(now - timedelta(minutes=5 * (i + 1)))
    assert isinstance(event, common_pb2.Event)
    body = tmp / "score.bin"
    body.write_bytes(_frame(request.SerializeToString()))
    return body, stored


def _real_time(var: Path, port: int, tmp: Path, results: dict[str, Any]) -> None:
    """score_profile_rps and score_profile_p99_ms: a stored journey plus 5 fresh events."""
    body, stored = _score_profile_body(var, tmp)
    path = SCORE_PROFILE
    first, _ = _paced(port, path, body, tmp / "first.tsv", ["--requests=1", "--clients=1"])
    _h2load(port, path, body, ["--requests=300", "--clients=2", "--threads=1"])  # warm up
    # The median of three runs: single runs of the same code spread over ±10% here.
    runs = [
        _h2load(port, path, body, ["--requests=3000", "--clients=4", "--max-concurrent-streams=4"])[
            0
        ]
        for _ in range(3)
    ]
    rps = statistics.median(runs)
    p50, p99 = _paced(
        port, path, body, tmp / "score.tsv", ["--requests=2000", "--clients=1", "--rps=100"]
    )
    results["score_profile_stored_events"] = stored
    results["score_profile_first_call_ms"] = round(first, 1)
    results["score_profile_rps"] = round(rps)
    results["score_profile_rps_runs"] = [round(r) for r in runs]
    results["score_profile_p50_ms"] = round(p50, 2)
    results["score_profile_p99_ms"] = round(p99, 2)
    print(
        f"ScoreProfile ({stored} stored + 5 fresh events): first call {first:.0f} ms "
        f"(cold history cache), then {rps:.0f} req/s (median of {[round(r) for r in runs]}); "
        f"at 100 req/s p50 {p50:.1f} ms, p99 {p99:.1f} ms",
        flush=True,
    )


def _a_profile(var: Path) -> str:
    """A profile scored by both instances."""
    from services.scorer.snapshot import RunScores

    return str(
        RunScores.read_parquet(var / "artifacts" / _scores_path(var, "purchase")).ids[0].as_py()
    )


def _scores_path(var: Path, instance: str) -> str:
    """The Parquet copy of an instance's newest scoring run, relative to the artifacts."""
    from foresight.storage.models import ScoringRunRow

    db = Database(f"sqlite:///{var / 'foresight.db'}")
    with db.session() as s:
        path = s.scalars(
            select(ScoringRunRow.scores_path)
            .where(ScoringRunRow.instance_name == instance, ScoringRunRow.scores_path.is_not(None))
            .order_by(ScoringRunRow.finished_at.desc())
        ).first()
    db.dispose()
    assert path
    return path


# --- ONNX vs LightGBM -----------------------------------------------------------------------------


def onnx_vs_lightgbm(var: Path, results: dict[str, Any]) -> None:
    """Time per prediction through ONNX ÷ through LightGBM, one thread each (< 1: ONNX faster)."""
    from services.scorer.models import load_bundle

    model = load_bundle(var / "artifacts" / "models" / "churn" / "v1", "churn", 1)
    booster = lgb.Booster(
        model_file=str(var / "artifacts" / "models" / "churn" / "v1" / "model.txt")
    )
    store = EventStore(var / "events", SHARDS)
    with Database(f"sqlite:///{var / 'foresight.db'}").session() as s:
        parts = [p.path for p in s.query(DatasetPartRow).all()]
    events = store.read_shard(DATASET, 5, parts)
    latest = events.get_column("timestamp").max()
    assert isinstance(latest, datetime)
    X = featurize(events, None, latest + timedelta(microseconds=1), model.spec).X[:10_000]

    def clock(fn: Any, repeat: int) -> float:
        fn()  # warm
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t0) / repeat

    row = X[:1]
    onnx_1 = clock(lambda: model.predict(row), 2000)
    lgb_1 = clock(lambda: booster.predict(row, num_threads=1), 2000)
    onnx_b = clock(lambda: model.predict(X), 5)
    lgb_b = clock(lambda: booster.predict(X, num_threads=1), 5)
    results["onnx_single_row_us"] = round(onnx_1 * 1e6, 1)
    results["lightgbm_single_row_us"] = round(lgb_1 * 1e6, 1)
    results["onnx_vs_lightgbm_single_row_ratio"] = round(onnx_1 / lgb_1, 3)
    results["onnx_batch10k_ms"] = round(onnx_b * 1e3, 1)
    results["lightgbm_batch10k_ms"] = round(lgb_b * 1e3, 1)
    results["onnx_vs_lightgbm_batch10k_ratio"] = round(onnx_b / lgb_b, 3)
    print(
        f"ONNX/LightGBM single row {onnx_1 * 1e6:.0f}/{lgb_1 * 1e6:.0f} µs, "
        f"batch 10k {onnx_b * 1e3:.1f}/{lgb_b * 1e3:.1f} ms",
        flush=True,
    )


def _start_workers(var: Path, workers: int, port: int, port_file: Path) -> subprocess.Popen[bytes]:
    """`foresight-scorer` with FORESIGHT_SCORER_SERVER_PROCESSES processes on a fixed port."""
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "FORESIGHT_DATA_DIR": str(var),
        "FORESIGHT_SCORER_PORT": str(port),
        "FORESIGHT_SCORER_METRICS_PORT": "0",
        "FORESIGHT_SCORER_SERVER_PROCESSES": str(workers),
        "FORESIGHT_PORT_FILE": str(port_file),
        "FORESIGHT_LOG_LEVEL": "WARNING",
    }
    server = subprocess.Popen([sys.executable, "-m", "services.scorer.main"], env=env)
    deadline = time.time() + 300
    while not port_file.exists():
        if server.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the scorer with {workers} workers did not start")
        time.sleep(0.2)
    _settle(server.pid)  # every server process loads its snapshots, its forkserver imports
    return server


def workers_ratio(var: Path, results: dict[str, Any]) -> None:
    """lookup_rps_2_workers_ratio: lookups/s with FORESIGHT_SCORER_WORKERS=2 ÷ with 1, same load.

    Eight connections, so SO_REUSEPORT has enough of them to spread over both
    workers (with two, the kernel can hash both onto one worker).
    """
    from foresight.api.scorer.v1 import scorer_pb2

    base = int(os.environ.get("FORESIGHT_BENCH_PORT", "50952"))
    load = ["--requests=40000", "--clients=8", "--max-concurrent-streams=16", "--threads=1"]
    path = "/foresight.scorer.v1.ScorerService/GetProfileScores"
    with tempfile.TemporaryDirectory(prefix="scorer-workers-") as tmp:
        body = Path(tmp) / "body.bin"
        request = scorer_pb2.GetProfileScoresRequest(profile_id=_a_profile(var))
        body.write_bytes(_frame(request.SerializeToString()))
        rps: dict[int, list[float]] = {1: [], 2: []}
        servers = {n: _start_workers(var, n, base + n, Path(tmp) / f"port-{n}") for n in (1, 2)}
        try:
            for n in (1, 2):
                _h2load(base + n, path, body, ["--requests=5000", "--clients=8"])  # warm up
            for _ in range(3):  # alternate, so drift on a shared machine hits both alike
                for n in (1, 2):
                    rps[n].append(_h2load(base + n, path, body, load)[0])
            # ScoreProfile is CPU-bound in one process (the GIL): more processes, more cores.
            score_body, _ = _score_profile_body(var, Path(tmp))
            score_load = ["--requests=3000", "--clients=8", "--max-concurrent-streams=4"]
            for n in (1, 2):
                _h2load(base + n, SCORE_PROFILE, score_body, ["--requests=300", "--clients=8"])
                score_rps = _h2load(base + n, SCORE_PROFILE, score_body, score_load)[0]
                key = "score_profile_rps_1_process" if n == 1 else "score_profile_rps_2_processes"
                results[key] = round(score_rps)
                print(
                    f"ScoreProfile with {n} server process(es): {score_rps:.0f} req/s", flush=True
                )
        finally:
            for server in servers.values():
                server.send_signal(signal.SIGTERM)
            for server in servers.values():
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    server.kill()
    one, two = statistics.median(rps[1]), statistics.median(rps[2])
    results["lookup_rps_1_worker"] = round(one)
    results["lookup_rps_2_workers"] = round(two)
    results["lookup_rps_2_workers_ratio"] = round(two / one, 3)
    print(f"lookups 1 worker {rps[1]}, 2 workers {rps[2]} req/s → ×{two / one:.2f}", flush=True)


def run(results: dict[str, Any], workdir: Path) -> None:
    """The scorer stage of `make bench`."""
    var = prepare(workdir)
    batch_scoring(var, results)
    onnx_vs_lightgbm(var, results)
    serving(var, results)
    workers_ratio(var, results)
