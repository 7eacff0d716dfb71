"""Batch scoring on Dask vs the local pool (`python -m bench.run --only dask_score`; part of "dask").

`dask_batch_score_1m_s`: one RunScoring (every eligible profile, top-5
reason codes, stored and served) whose shards run as tasks on a 2-process
LocalCluster, at `dask_batch_score_profiles` profiles (the name keeps
"1m"). In the same bench run: `local_warm_batch_score_s`, the scorer's
local process pool with 2 workers kept alive between runs (its workers hold
the model, as the Dask workers do), and `local_batch_score_s`, that pool as
the scorer runs it (processes started on every run).
`dask_vs_local_throughput_ratio` = warm local seconds ÷ Dask seconds (goal
≥ 0.8), medians of 3 alternating runs each (`dask_vs_local_rounds`: each
round's ratio); `dask_vs_local_as_shipped_ratio` uses `local_batch_score_s`.
Each backend scores once untimed first; `*_shards_s` is the shard map alone.

The data set and its model are bench/dask_bench.py's (generated and trained
there once at FORESIGHT_BENCH_PROFILES profiles, reused).
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.dask_bench import SHARDS, train_once, world_of
from foresight.errors import FailedPrecondition, NotFound
from foresight.storage.db import Database
from services.trainer.sampling import DEFAULT_SAMPLE_ROWS


def _scorer(var: Path, scheduler: str | None) -> Any:
    from services.scorer.service import Scorer, ScorerConfig

    config = ScorerConfig(
        artifacts_dir=var / "artifacts",
        events_dir=var / "events",
        scoring_threads=2,
        shards=SHARDS,
        dask_scheduler=scheduler,
    )
    return Scorer(Database(f"sqlite:///{var / 'foresight.db'}"), config)


def _timed(scorer: Any) -> tuple[float, float]:
    """(seconds, shard-map seconds) of one RunScoring."""
    t0 = time.perf_counter()
    run = scorer.run_scoring("conv", None)
    seconds = time.perf_counter() - t0
    assert run.status.value == "READY", run.error
    return seconds, scorer.engine.stage_seconds["shards"]


def _returned_bytes(scorer: Any) -> tuple[int, int]:
    """(profiles, bytes) the shard tasks of the last run returned: ids, probabilities,
    top-k factor codes, impacts and values."""
    scorer.refresh()  # the newest succeeded run becomes its snapshot
    scores = scorer.engine.run_scores("conv")
    scorer.db.dispose()
    factors = scores.factors
    returned = scores.ids.nbytes + scores.probability.nbytes
    returned += factors.codes.nbytes + factors.impacts.nbytes + factors.values.nbytes
    return len(scores), returned


def _rounds(scorers: dict[str, Any], rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Each scorer once untimed, then `rounds` timed runs of each, alternating (load drifts)."""
    for scorer in scorers.values():
        scorer.run_scoring("conv", None)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in scorers}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            timings[name].append(_timed(scorer))
    for scorer in scorers.values():
        scorer.engine.runner.close()
        scorer.db.dispose()
    return timings


def batch_scoring(results: dict[str, Any], data: Path, profiles: int, rounds: int = 3) -> None:
    """RunScoring on a 2-worker LocalCluster vs the scorer's local pool of 2 processes.

    Medians of `rounds` alternating runs: the local pool kept warm (its workers
    hold the model, as Dask's do) against Dask, then the pool as the scorer
    runs it (processes started on every run).
    """
    from distributed import LocalCluster

    var, _, _ = world_of(data, profiles)
    probe = _scorer(var, None)
    try:
        probe.model("conv")
    except (NotFound, FailedPrecondition):
        train_once(data, profiles, max(1_000, DEFAULT_SAMPLE_ROWS * profiles // 1_000_000))
    finally:
        probe.db.dispose()
    warm = _scorer(var, None)
    warm.engine.runner.keep_alive = True
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        remote = _scorer(var, cluster.scheduler_address)
        timings = _rounds({"local_warm_batch_score": warm, "dask_batch_score": remote}, rounds)
    timings |= _rounds({"local_batch_score": _scorer(var, None)}, 1)
    scored, returned = _returned_bytes(_scorer(var, None))
    for name, runs in timings.items():
        results[f"{name}_s"] = round(statistics.median(r[0] for r in runs), 2)
        results[f"{name}_shards_s"] = round(statistics.median(r[1] for r in runs), 2)
    results["dask_batch_score_1m_s"] = results.pop("dask_batch_score_s")
    results["dask_batch_score_profiles"] = profiles
    results["dask_batch_score_scored_profiles"] = scored
    results["dask_batch_score_result_bytes_per_shard"] = round(returned / SHARDS)
    # Like for like (workers that hold the model on both sides), and as the scorer ships.
    dask_s = results["dask_batch_score_1m_s"]
    results["dask_vs_local_throughput_ratio"] = round(
        results["local_warm_batch_score_s"] / dask_s, 3
    )
    results["dask_vs_local_as_shipped_ratio"] = round(results["local_batch_score_s"] / dask_s, 3)
    results["dask_vs_local_rounds"] = [
        round(w[0] / d[0], 3)
        for w, d in zip(timings["local_warm_batch_score"], timings["dask_batch_score"], strict=True)
    ]
    results["dask_vs_local_basis"] = (
        f"RunScoring with top-5 reason codes, median of {rounds} alternating runs: local pool "
        "of 2 processes kept warm ÷ 2 Dask worker processes"
    )
    results["dask_batch_score_measured"] = {
        "profiles": profiles,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
    }


def run_batch_scoring(results: dict[str, Any], data: Path) -> None:
    """Only the batch-scoring figures, at FORESIGHT_BENCH_PROFILES (stage `dask_score`)."""
    batch_scoring(results, data, int(os.environ.get("FORESIGHT_BENCH_PROFILES", "1000000")))
