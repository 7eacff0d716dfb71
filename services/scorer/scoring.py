"""Batch scoring: every eligible profile of an instance, shard by shard on all cores.

A shard (all events of its profiles) goes through the same pure functions as
training: eligibility at the as-of time, `featurize`, ONNX probabilities and
TreeSHAP reason codes (see explain.py). Shards run on a thread pool: Polars,
onnxruntime and NumPy release the GIL in their heavy loops, so threads use
every core without copying events between processes. Percentiles need the whole population, so they are
computed once all shards are in. The run is stored as a Parquet copy (the
snapshot's source), bulk loaded into `profile_scores` (COPY on PostgreSQL),
and only then swapped into the lookup snapshot and marked SUCCEEDED.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from prometheus_client import Counter, Histogram
from sqlalchemy import delete, select, update

from foresight.errors import FailedPrecondition, NotFound
from foresight.features.featurize import featurize
from foresight.features.labels import as_utc, eligible_profiles
from foresight.features.spec import format_factor_value
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status, ending_of
from foresight.storage.models import ProfileScoreRow, ScoringRunRow, utcnow
from services.scorer.catalog import Catalog, DatasetParts
from services.scorer.factors import (
    NO_FACTOR,
    TopFactors,
    importance_of,
    percentiles_of,
    scores_of,
    top_factors,
)
from services.scorer.models import LoadedModel, ModelRegistry
from services.scorer.records import Bucket, Importance, Progress, ScoringRun
from services.scorer.recovery import end_runs
from services.scorer.snapshot import RunScores, SnapshotStore, sidecar_of

log = logging.getLogger("foresight.scorer.scoring")

RUNS = Counter("foresight_scorer_runs_total", "Scoring runs", ["instance", "status"])
RUN_SECONDS = Histogram(
    "foresight_scorer_run_seconds",
    "Scoring run duration",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600),
)

ProgressFn = Callable[[Progress], None]
_DB_CHUNK = 50_000
_IMPORTANCE_NAMES = {int(i): i.name for i in Importance}
_BUCKET_NAMES = {int(b): b.name for b in Bucket}


@dataclass(frozen=True)
class ShardScores:
    """Scores of one shard's eligible profiles."""

    profile_ids: np.ndarray
    probability: np.ndarray
    factors: TopFactors


def score_shard(
    events: pl.DataFrame,
    profiles: pl.DataFrame | None,
    as_of: datetime,
    model: LoadedModel,
    k: int,
    threads: int = 1,
) -> ShardScores:
    """Score the eligible profiles of one shard as of `as_of` (pure: no I/O)."""
    eligible = eligible_profiles(events, model.config.population, as_of)
    if eligible.len() == 0:
        return ShardScores(
            np.array([], dtype=object), np.zeros(0, dtype=np.float32), TopFactors.empty(k)
        )
    matrix = featurize(events, profiles, as_of, model.spec, profile_ids=eligible)
    probability = model.predict(matrix.X)
    contributions = model.contributions(matrix.X, threads)
    return ShardScores(matrix.profile_ids, probability, top_factors(contributions, matrix.X, k))


def run_from_row(row: ScoringRunRow) -> ScoringRun:
    """Domain record of a `scoring_runs` row."""
    return ScoringRun(
        run_id=row.run_id,
        instance=row.instance_name,
        model_version=row.model_version,
        status=Status(row.status),
        as_of=row.as_of,
        started_at=row.started_at,
        finished_at=row.finished_at,
        profiles=row.profiles,
        error=row.error or "",
    )


def factor_json(scores: RunScores, start: int, stop: int) -> Iterator[str]:
    """The `profile_scores.factors` JSON of rows [start, stop): code, text, impact, importance."""
    features = scores.features
    codes = scores.factors.codes[start:stop].tolist()
    impacts = scores.factors.impacts[start:stop].astype(np.float64).round(6).tolist()
    values = scores.factors.values[start:stop].tolist()
    importance = importance_of(scores.factors.impacts[start:stop]).tolist()
    dumps = json.dumps
    for row_codes, row_impacts, row_values, row_importance in zip(
        codes, impacts, values, importance, strict=True
    ):
        items = []
        for code, impact, value, imp in zip(
            row_codes, row_impacts, row_values, row_importance, strict=True
        ):
            if code == NO_FACTOR:
                break
            feature = features[code]
            items.append(
                {
                    "code": feature.code,
                    "text": format_factor_value(feature, value),
                    "impact": impact,
                    "importance": _IMPORTANCE_NAMES[imp],
                }
            )
        yield dumps(items, separators=(",", ":"))


class ScoringEngine:
    """Runs batch scoring and keeps the run history."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        registry: ModelRegistry,
        snapshots: SnapshotStore,
        scores_root: Path,
        threads: int,
        top_k: int,
        keep_runs: int = 3,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.registry = registry
        self.snapshots = snapshots
        self.scores_root = scores_root
        self.threads = max(1, threads)
        self.top_k = top_k
        self.keep_runs = keep_runs
        self._running: set[str] = set()
        self._lock = threading.Lock()

    # --- runs ---------------------------------------------------------------------

    def run(
        self, instance: str, as_of: datetime | None, progress: ProgressFn | None = None
    ) -> ScoringRun:
        """Score every eligible profile of `instance`; blocks until stored and served."""
        notify = progress or (lambda _p: None)
        model = self.registry.get(instance)
        parts = self.catalog.parts(self.catalog.dataset_of(instance))
        as_of = parts.end if as_of is None else as_utc(as_of)
        with self._lock:
            if instance in self._running:
                raise FailedPrecondition(
                    f"a scoring run of instance '{instance}' is already in progress"
                )
            self._running.add(instance)
        run_id = str(uuid.uuid4())
        started = utcnow()
        try:
            with self.db.session() as session:
                session.add(
                    ScoringRunRow(
                        run_id=run_id,
                        instance_name=instance,
                        model_version=model.version,
                        status=Status.RUNNING.value,
                        as_of=as_of,
                        started_at=started,
                    )
                )
            log.info(
                "scoring run started",
                extra={"instance": instance, "run_id": run_id, "as_of": str(as_of)},
            )
            try:
                with RUN_SECONDS.time():
                    scores = self._score(run_id, model, parts, as_of, notify)
                    relative = self._store(scores, notify)
            except BaseException as exc:
                status = self._fail(run_id, instance, exc)
                RUNS.labels(instance=instance, status=status.value).inc()
                raise
            finished = utcnow()
            with self.db.session() as session:
                session.execute(
                    update(ScoringRunRow)
                    .where(ScoringRunRow.run_id == run_id)
                    .values(
                        status=Status.READY.value,
                        finished_at=finished,
                        profiles=len(scores),
                        scores_path=relative,
                    )
                )
                result = run_from_row(session.get_one(ScoringRunRow, run_id))
            self.snapshots.swap(scores, finished)
            RUNS.labels(instance=instance, status=Status.READY.value).inc()
            notify(Progress("done", 1.0, f"{len(scores):,} profiles scored"))
            log.info(
                "scoring run succeeded",
                extra={"instance": instance, "run_id": run_id, "profiles": len(scores)},
            )
            self._prune(instance)
            return result
        finally:
            with self._lock:
                self._running.discard(instance)

    def _score(
        self,
        run_id: str,
        model: LoadedModel,
        parts: DatasetParts,
        as_of: datetime,
        notify: ProgressFn,
    ) -> RunScores:
        shards = sorted(set(parts.shards))
        notify(Progress("features", 0.0, f"scoring {len(shards)} shards as of {as_of.isoformat()}"))
        profiles = self.catalog.profiles([a.name for a in model.spec.attributes])
        # Several shards in flight keep every core busy through the single-threaded
        # phases; each TreeSHAP call gets its share of the remaining threads.
        concurrent = max(1, min(len(shards), self.threads))
        per_call = max(1, self.threads // concurrent)

        def one(shard: int) -> ShardScores:
            events = self.catalog.read_shard(parts, shard)
            return score_shard(events, profiles, as_of, model, self.top_k, per_call)

        results: list[ShardScores] = []
        with ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="score-shard") as pool:
            futures = [pool.submit(one, shard) for shard in shards]
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    results.append(future.result())
                    notify(
                        Progress(
                            "score", 0.8 * done / len(shards), f"{done}/{len(shards)} shards scored"
                        )
                    )
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)  # a cancelled run stops now
                raise
        ids = (
            np.concatenate([r.profile_ids for r in results])
            if results
            else np.array([], dtype=object)
        )
        probability = (
            np.concatenate([r.probability for r in results])
            if results
            else np.zeros(0, dtype=np.float32)
        )
        factors = TopFactors.concat([r.factors for r in results], self.top_k)
        score = scores_of(probability)
        return RunScores(
            run_id=run_id,
            instance=model.instance,
            model_version=model.version,
            as_of=as_of,
            features=model.features,
            ids=pa.array(ids, type=pa.large_string()),
            probability=probability.astype(np.float32),
            score=score,
            percentile=percentiles_of(probability),
            factors=factors,
        )

    def _store(self, scores: RunScores, notify: ProgressFn) -> str:
        relative = f"{scores.instance}/{scores.run_id}.parquet"
        scores.write(self.scores_root / relative)
        notify(Progress("store", 0.85, f"storing {len(scores):,} scores"))
        columns = (
            "run_id",
            "profile_id",
            "probability",
            "score",
            "percentile",
            "bucket",
            "factors",
        )
        table = ProfileScoreRow.__table__
        ids = scores.ids.to_pylist()
        probability = scores.probability.astype(np.float64).tolist()
        score = scores.score.tolist()
        percentile = scores.percentile.tolist()
        bucket = [_BUCKET_NAMES[b] for b in scores.bucket.tolist()]
        n = len(scores)
        for start in range(0, n, _DB_CHUNK):
            stop = min(n, start + _DB_CHUNK)
            rows = list(
                zip(
                    [scores.run_id] * (stop - start),
                    ids[start:stop],
                    probability[start:stop],
                    score[start:stop],
                    percentile[start:stop],
                    bucket[start:stop],
                    factor_json(scores, start, stop),
                    strict=True,
                )
            )
            self.db.bulk_load(table, columns, rows)  # type: ignore[arg-type]
            notify(
                Progress("store", 0.85 + 0.15 * stop / max(n, 1), f"{stop:,}/{n:,} scores stored")
            )
        return f"scores/{relative}"

    def _fail(self, run_id: str, instance: str, exc: BaseException) -> Status:
        """End a run FAILED or CANCELLED: its stored scores and score files are removed."""
        status, message = ending_of(exc)
        log.error("scoring run ended", extra={"run_id": run_id, "status": status.value})
        if status is Status.FAILED and not hasattr(exc, "message"):
            log.error("scoring run failed", exc_info=exc)
        try:
            end_runs(self.db, self.scores_root, {run_id: instance}, status, message)
        except Exception:
            log.exception("could not record the ended run", extra={"run_id": run_id})
        return status

    def _prune(self, instance: str) -> None:
        """Keep the scores of the newest `keep_runs` succeeded runs; the run history stays."""
        with self.db.session() as session:
            old = session.execute(
                select(ScoringRunRow.run_id, ScoringRunRow.scores_path)
                .where(
                    ScoringRunRow.instance_name == instance,
                    ScoringRunRow.status == Status.READY.value,
                    ScoringRunRow.scores_path.is_not(None),
                )
                .order_by(ScoringRunRow.finished_at.desc())
                .offset(self.keep_runs)
            ).all()
            for run_id, path in old:
                session.execute(delete(ProfileScoreRow).where(ProfileScoreRow.run_id == run_id))
                session.execute(
                    update(ScoringRunRow)
                    .where(ScoringRunRow.run_id == run_id)
                    .values(scores_path=None)
                )
                if path:
                    (self.scores_root.parent / path).unlink(missing_ok=True)
                    sidecar_of(self.scores_root.parent / path).unlink(missing_ok=True)

    # --- history --------------------------------------------------------------------

    def list_runs(self, instance: str) -> list[ScoringRun]:
        """Runs of an instance, newest first."""
        with self.db.session() as session:
            rows = session.scalars(
                select(ScoringRunRow)
                .where(ScoringRunRow.instance_name == instance)
                .order_by(ScoringRunRow.started_at.desc())
            ).all()
            return [run_from_row(r) for r in rows]

    def get_run(self, run_id: str) -> ScoringRunRow:
        """One run row; NotFound when unknown."""
        with self.db.session() as session:
            row = session.get(ScoringRunRow, run_id)
            if row is None:
                raise NotFound(f"scoring run '{run_id}' not found")
            session.expunge(row)
            return row

    def latest_runs(self) -> dict[str, ScoringRunRow]:
        """The newest SUCCEEDED run with stored scores of every instance."""
        with self.db.session() as session:
            rows = session.scalars(
                select(ScoringRunRow)
                .where(
                    ScoringRunRow.status == Status.READY.value,
                    ScoringRunRow.scores_path.is_not(None),
                )
                .order_by(ScoringRunRow.finished_at)
            ).all()
            latest = {r.instance_name: r for r in rows}  # ascending order: the last one wins
            for r in latest.values():
                session.expunge(r)
            return latest

    def run_scores(self, instance: str, run_id: str = "") -> RunScores:
        """Scores of a run (default: latest succeeded), from the snapshot when it is the served run."""
        current = self.snapshots.get(instance)
        if not run_id:
            if current is not None:
                return current
            raise NotFound(f"instance '{instance}' has no succeeded scoring run")
        if current is not None and current.run_id == run_id:
            return current
        row = self.get_run(run_id)
        if row.instance_name != instance:
            raise NotFound(f"scoring run '{run_id}' is not a run of instance '{instance}'")
        if row.status != Status.READY.value:
            raise FailedPrecondition(f"scoring run '{run_id}' is {row.status}, not SUCCEEDED")
        if not row.scores_path:
            raise FailedPrecondition(
                f"the scores of run '{run_id}' were pruned (only recent runs keep them)"
            )
        return self.load(row)

    def load(self, row: ScoringRunRow) -> RunScores:
        """Read a run's Parquet copy."""
        assert row.scores_path is not None
        return RunScores.load(self.scores_root.parent / row.scores_path)
