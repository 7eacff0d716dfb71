"""Batch scoring: every eligible profile of an instance, shard by shard on all cores.

A shard (all events of its profiles) goes through the same pure functions as
training: eligibility at the as-of time, `featurize`, ONNX probabilities and
TreeSHAP reason codes (see explain.py). `score_job` is a pure function of a
picklable `ShardJob`, run through the shared `ShardRunner`: worker processes
on this machine (each loads the model bundle once) or Dask tasks at scale.
Percentiles need the whole population, so they are computed once all shards
are in. The run is stored as a Parquet copy (the snapshot's source) while it is
bulk loaded into `profile_scores` (COPY on PostgreSQL); with an artifact mirror
(`FORESIGHT_ARTIFACTS_URL`) its files are uploaded there, and only then is it
marked SUCCEEDED and swapped into the lookup snapshot. A scorer that does not
have a run's files (another replica wrote them) copies them from the mirror.
`stage_seconds` records where the time went (featurize, predict, explain summed
over shards; write, mirror, snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import polars as pl
import pyarrow as pa
from prometheus_client import Counter, Histogram
from sqlalchemy import select, update

from foresight.errors import FailedPrecondition, NotFound
from foresight.features.labels import as_utc, staleness_warning
from foresight.shards import ShardRunner
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status, ending_of
from foresight.storage.models import ScoringRunRow, utcnow
from services.scorer.batch import (
    LoadJob,
    ShardJob,
    ShardScores,
    load_job,
    profiles_of,
    score_job,
)
from services.scorer.catalog import Catalog, DatasetParts
from services.scorer.factors import (
    TopFactors,
    percentiles_of,
    scores_of,
)
from services.scorer.health import summarize, summary_file, write_summary
from services.scorer.models import LoadedModel, ModelRegistry
from services.scorer.records import Progress, ScoringRun
from services.scorer.recovery import drop_pruned_rows, end_runs, score_files, scores_path_of
from services.scorer.snapshot import IdIndex, RunScores, SnapshotStore

log = logging.getLogger("foresight.scorer.scoring")

RUNS = Counter("foresight_scorer_runs_total", "Scoring runs", ["instance", "status"])
RUN_SECONDS = Histogram(
    "foresight_scorer_run_seconds",
    "Scoring run duration",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 3600),
)

ProgressFn = Callable[[Progress], None]
_DB_CHUNK = 50_000
# How long pruned runs' rows wait for a moment with no run in progress before they are
# deleted anyway (runs back to back, all day, must not let them pile up).
PRUNE_PATIENCE_S = 600.0


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


class ScoringEngine:
    """Runs batch scoring and keeps the run history."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        registry: ModelRegistry,
        snapshots: SnapshotStore,
        artifacts: ArtifactStore,
        threads: int,
        top_k: int,
        keep_runs: int = 3,
        health_sample: int = 20_000,
        scheduler: str | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.registry = registry
        self.snapshots = snapshots
        self.artifacts = artifacts  # score copies live under its scores folder, mirrored
        self.threads = max(1, threads)
        self.top_k = top_k
        self.keep_runs = keep_runs
        self.health_sample = health_sample  # profiles whose probability the run summary keeps
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when no run is in progress
        self._closing = False
        # Shards and row loads run in worker processes that end with the last run in
        # progress (one start-up per run, not per stage), or as tasks on the Dask cluster
        # at `scheduler` (FORESIGHT_DASK_SCHEDULER).
        self.runner = ShardRunner(self.threads, keep_alive=True, scheduler=scheduler)
        self.stage_seconds: dict[str, float] = {}  # of the last run, for logs and the benchmark
        # Deletes pruned runs' rows, one at a time, off the RunScoring path.
        self._housekeeping = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-prune")

    def close(self) -> None:
        """End the shard workers (or the Dask client) and finish pending row deletes."""
        self.runner.close()
        with self._idle:
            self._closing = True
            self._idle.notify_all()
        self._housekeeping.shutdown(wait=True)

    # --- runs ---------------------------------------------------------------------

    def run(
        self, instance: str, as_of: datetime | None, progress: ProgressFn | None = None
    ) -> ScoringRun:
        """Score every eligible profile of `instance`; blocks until stored and served."""
        notify = progress or (lambda _p: None)
        model = self.registry.get(instance)
        parts = self.catalog.parts(self.catalog.dataset_of(instance))
        as_of = parts.end if as_of is None else as_utc(as_of)
        warning = staleness_warning(as_of, parts.end, model.config.goal.window_days, utcnow())
        if warning is not None:
            log.warning("stale data for instance %s: %s", instance, warning)
        self._claim(instance)
        try:
            run_id = self._begin(instance, model.version, as_of)
            try:
                with RUN_SECONDS.time():
                    if warning is not None:  # in the stream, once the run exists
                        notify(Progress("warning", 0.0, warning))
                    scores = self._score(run_id, model, parts, as_of, notify)
                    relative = self._store(scores, notify)
                    self._mirror(scores, relative)
            except BaseException as exc:
                status = self._fail(run_id, instance, exc)
                RUNS.labels(instance=instance, status=status.value).inc()
                raise
            result, finished = self._mark_ready(run_id, len(scores), relative)
            # Serve the run mapped from its sidecar: the arrays built here are freed, and
            # the pages are shared with every other process serving the run.
            self.snapshots.swap(self._load_files(run_id, relative), finished)
            RUNS.labels(instance=instance, status=Status.READY.value).inc()
            notify(Progress("done", 1.0, f"{len(scores):,} profiles scored"))
            log.info(
                "scoring run succeeded",
                extra={"instance": instance, "run_id": run_id, "profiles": len(scores)},
            )
            self._prune(instance)
            return result
        finally:
            self._release(instance)

    def _claim(self, instance: str) -> None:
        """One run per instance at a time: FailedPrecondition while another is in progress."""
        with self._lock:
            if instance in self._running:
                raise FailedPrecondition(
                    f"a scoring run of instance '{instance}' is already in progress"
                )
            self._running.add(instance)

    def _release(self, instance: str) -> None:
        """The end of a run: the last one in progress closes the pool and lets deletes go."""
        with self._idle:  # held while closing: a run starting now waits for a new pool
            self._running.discard(instance)
            if not self._running:
                self.runner.close()
                self._idle.notify_all()

    def _begin(self, instance: str, model_version: int, as_of: datetime) -> str:
        """The RUNNING row of a new run; returns its id."""
        run_id = str(uuid.uuid4())
        with self.db.session() as session:
            session.add(
                ScoringRunRow(
                    run_id=run_id,
                    instance_name=instance,
                    model_version=model_version,
                    status=Status.RUNNING.value,
                    as_of=as_of,
                    started_at=utcnow(),
                )
            )
        log.info(
            "scoring run started",
            extra={"instance": instance, "run_id": run_id, "as_of": str(as_of)},
        )
        return run_id

    def _mark_ready(self, run_id: str, profiles: int, relative: str) -> tuple[ScoringRun, datetime]:
        """The run READY with its profile count and scores file; (the run, when it finished)."""
        finished = utcnow()
        with self.db.session() as session:
            session.execute(
                update(ScoringRunRow)
                .where(ScoringRunRow.run_id == run_id)
                .values(
                    status=Status.READY.value,
                    finished_at=finished,
                    profiles=profiles,
                    scores_path=relative,
                )
            )
            return run_from_row(session.get_one(ScoringRunRow, run_id)), finished

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
        jobs = self._jobs(model, parts, shards, as_of)

        def done(count: int, total: int) -> None:
            notify(Progress("score", 0.8 * count / total, f"{count}/{total} shards scored"))

        t0 = time.perf_counter()
        results = self.runner.map(score_job, jobs, done)  # the job's cancel token ends it
        self.stage_seconds = {"shards": time.perf_counter() - t0}
        for r in results:
            for stage, seconds in r.seconds.items():
                self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds
        t1 = time.perf_counter()
        scores = self._collect(run_id, model, as_of, results)
        self.stage_seconds["snapshot"] = time.perf_counter() - t1
        # Model health: the run's distributions and outcome sample (removed if the run fails).
        summary = summarize(scores, [r.features for r in results], self.health_sample)
        write_summary(self.artifacts, summary)
        return scores

    def _jobs(
        self, model: LoadedModel, parts: DatasetParts, shards: list[int], as_of: datetime
    ) -> list[tuple[ShardJob, pl.DataFrame | None]]:
        """One job per shard: where its events and the model bundle are, and its profiles."""
        profiles = self.catalog.profiles([a.name for a in model.spec.attributes])
        store = self.catalog.events
        if model.folder is None:
            raise FailedPrecondition(f"model of instance '{model.instance}' has no bundle folder")
        # Absolute locations: a Dask worker's working directory is not the service's.
        root = store.url if store.remote else str(store.root.resolve())
        return [
            (
                ShardJob(
                    root,
                    store.shards,
                    parts.dataset,
                    shard,
                    tuple(parts.paths_of(shard)),
                    self.registry.bundle_ref(model.folder),
                    model.instance,
                    model.version,
                    as_of,
                    self.top_k,
                    str(self.registry.explainers) if self.registry.explainers else None,
                ),
                profiles_of(profiles, shard, store.shards),
            )
            for shard in shards
        ]

    def _collect(
        self, run_id: str, model: LoadedModel, as_of: datetime, results: list[ShardScores]
    ) -> RunScores:
        """The shards' scores joined into one run, with scores and percentiles, in profile
        id order: the key index of `profile_scores` then grows at its end while the rows
        load (~30% faster than in shard order on SQLite), and the Parquet copy is sorted."""
        ids = (
            pa.concat_arrays([r.profile_ids for r in results])
            if results
            else pa.array([], type=pa.large_string())
        )
        order = pl.Series(ids).arg_sort().to_numpy()  # on all cores: ~25% less than pc's
        probability = (
            np.concatenate([r.probability for r in results])[order]
            if results
            else np.zeros(0, dtype=np.float32)
        )
        factors = TopFactors.concat([r.factors for r in results], self.top_k)
        factors = TopFactors(factors.codes[order], factors.impacts[order], factors.values[order])
        hashes = (
            np.concatenate([r.id_hashes for r in results])
            if results
            else np.zeros(0, dtype=np.uint32)
        )
        ids = ids.take(order)
        return RunScores(
            run_id=run_id,
            instance=model.instance,
            model_version=model.version,
            as_of=as_of,
            features=model.features,
            ids=ids,
            probability=probability.astype(np.float32),
            score=scores_of(probability),
            percentile=percentiles_of(probability),
            factors=factors,
            id_index=IdIndex.of(ids, hashes[order]),  # hashed by the shards
        )

    def _store(self, scores: RunScores, notify: ProgressFn) -> str:
        relative = scores_path_of(scores.instance, scores.run_id)
        t0 = time.perf_counter()
        notify(Progress("store", 0.85, f"storing {len(scores):,} scores"))
        # The files (Parquet copy, sidecar) are written here while the shard workers
        # render and load the rows, a chunk per task (`load_job`).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="score-store") as pool:
            files = pool.submit(scores.write, self.artifacts.path(relative))
            self._load_rows(scores, notify)
            files.result()
        self.stage_seconds["write"] = time.perf_counter() - t0
        return relative

    def _mirror(self, scores: RunScores, relative: str) -> None:
        """Upload the run's files to the artifact mirror (if any) before it may become READY."""
        if self.artifacts.mirror is None:
            return
        t0 = time.perf_counter()
        for name in (*score_files(relative), summary_file(scores.instance, scores.run_id)):
            self.artifacts.mirror_file(name)
        self.stage_seconds["mirror"] = time.perf_counter() - t0

    def _load_rows(self, scores: RunScores, notify: ProgressFn) -> None:
        """Bulk load the run into `profile_scores`: chunks rendered and loaded side by side
        in the shard workers (each chunk its own transaction; a failed run's rows are
        deleted with it)."""
        n = len(scores)
        jobs = [
            (
                LoadJob(
                    self.db.url,
                    scores.run_id,
                    tuple(scores.features),
                    # A copy of the slice: a sliced Arrow array pickles its whole buffers
                    # (24 MB of ids per chunk at 1M profiles instead of 1.2 MB).
                    pa.concat_arrays([scores.ids.slice(start, _DB_CHUNK)]),
                    scores.probability[start : start + _DB_CHUNK],
                    scores.score[start : start + _DB_CHUNK],
                    scores.percentile[start : start + _DB_CHUNK],
                    scores.bucket[start : start + _DB_CHUNK],
                    scores.factors.rows(start, start + _DB_CHUNK),
                ),
            )
            for start in range(0, n, _DB_CHUNK)
        ]

        def done(count: int, total: int) -> None:
            stored = min(n, count * _DB_CHUNK)
            notify(
                Progress("store", 0.85 + 0.15 * count / total, f"{stored:,}/{n:,} scores stored")
            )

        self.runner.map(load_job, jobs, done)

    def _fail(self, run_id: str, instance: str, exc: BaseException) -> Status:
        """End a run FAILED or CANCELLED: its stored scores and score files are removed."""
        status, message = ending_of(exc)
        log.error("scoring run ended", extra={"run_id": run_id, "status": status.value})
        if status is Status.FAILED and not hasattr(exc, "message"):
            log.error("scoring run failed", exc_info=exc)
        try:
            end_runs(self.db, self.artifacts, {run_id: instance}, status, message)
        except Exception:
            log.exception("could not record the ended run", extra={"run_id": run_id})
        return status

    def _prune(self, instance: str) -> None:
        """Keep the scores of the newest `keep_runs` succeeded runs; the run history stays.

        The runs and their files go now; their rows (a million per run: seconds of
        DELETE) are deleted in the background, once no run is in progress (see
        `_drop_when_idle`). A scorer killed before that leaves rows of runs with no
        scores path, which start-up recovery deletes (`recovery.drop_pruned_rows`).
        """
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
            session.execute(
                update(ScoringRunRow)
                .where(ScoringRunRow.run_id.in_([run_id for run_id, _ in old]))
                .values(scores_path=None)
            )
        for _, path in old:
            for name in score_files(path) if path else ():
                self.artifacts.remove_file(name)  # at the mirror too
        if old:
            self._housekeeping.submit(self._drop_when_idle)

    def _drop_when_idle(self) -> None:
        """Delete pruned runs' rows while no run is in progress (this one included), a
        transaction at a time, pausing when a run starts meanwhile: beside the next run
        (another instance's, right after) the deletes took its cores and SQLite's write
        lock: 28.2 s instead of 24.7 s for a run of 1M profiles. After
        `PRUNE_PATIENCE_S` of waiting in all they go on regardless."""
        deadline = time.monotonic() + PRUNE_PATIENCE_S

        def until_idle() -> None:
            with self._idle:
                self._idle.wait_for(
                    lambda: self._closing or not self._running,
                    max(0.0, deadline - time.monotonic()),
                )

        drop_pruned_rows(self.db, until_idle)

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
        """Map a run from its sidecar, else read its Parquet copy; a file this scorer does
        not have is copied from the artifact mirror first (another replica scored the run)."""
        assert row.scores_path is not None
        return self._load_files(row.run_id, row.scores_path)

    def _load_files(self, run_id: str, scores_path: str) -> RunScores:
        parquet, sidecar = score_files(scores_path)
        path = self.artifacts.local_file(sidecar)
        if path is not None:
            return RunScores.read_sidecar(path)
        path = self.artifacts.local_file(parquet)
        if path is None:
            raise FailedPrecondition(
                f"the score files of run '{run_id}' are missing from the artifact store"
            )
        return RunScores.read_parquet(path)
