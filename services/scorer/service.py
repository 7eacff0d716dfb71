"""The scorer's domain facade: what the servicer calls, one method per use case.

It wires the model registry follower, the batch scoring engine, the lookup
snapshot, segments and insights over the shared stores. Everything here is
synchronous and transport-free; the servicer decides what runs on the event
loop (snapshot lookups: microseconds) and what goes to a thread (I/O, scoring).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
from sqlalchemy import func, select

from foresight import instance as instance_config
from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.evaluation_report import ModelEvaluation
from foresight.events.partitions import DEFAULT_SHARDS
from foresight.events.store import EventStore
from foresight.instance import Goal, InstanceConfig
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import read_model_documents
from foresight.storage.db import Database
from foresight.storage.models import InstanceRow, ModelVersionRow, ScoringRunRow
from services.scorer import insights as insight_math
from services.scorer import lookups, realtime
from services.scorer.catalog import Catalog
from services.scorer.export import export_run
from services.scorer.health import ModelHealth, Thresholds
from services.scorer.health_monitor import HealthMonitor
from services.scorer.memory import release_unused_memory
from services.scorer.models import LoadedModel, ModelRegistry
from services.scorer.records import (
    Insights,
    InstanceScore,
    MembersPage,
    ModelStatus,
    ProfileScores,
    ScoringRun,
    Segment,
    SegmentFilter,
)
from services.scorer.schedule import is_due
from services.scorer.scoring import ProgressFn, ScoringEngine, run_from_row
from services.scorer.segments import SegmentStore
from services.scorer.snapshot import SnapshotStore

log = logging.getLogger("foresight.scorer")


@dataclass(frozen=True)
class ScorerConfig:
    """Where the stores are and how hard to work."""

    artifacts_dir: Path
    events_dir: Path | str
    scoring_threads: int
    top_factors: int = 5
    keep_runs: int = 3
    cache_dir: Path | None = None  # derived data (indexed event copies, built explainers)
    shards: int = DEFAULT_SHARDS  # event-store shards (profiles hash into them)
    health_sample: int = 20_000  # profiles per run kept to measure realized quality
    health: Thresholds = field(default_factory=Thresholds)  # when to recommend a retrain
    dask_scheduler: str | None = None  # batch scoring's shards run as tasks on this cluster
    artifacts_url: str | None = None  # the artifact store's mirror (Dask workers, replicas)


class Scorer:
    """Batch and real-time scores, lookups, segments and insights of every instance."""

    def __init__(self, db: Database, config: ScorerConfig) -> None:
        self.db = db
        self.config = config
        self.artifacts = ArtifactStore(config.artifacts_dir, config.artifacts_url)
        self.catalog = Catalog(db, EventStore(config.events_dir, config.shards), config.cache_dir)
        explainers = None if config.cache_dir is None else config.cache_dir / "explainers"
        if explainers is not None:
            explainers.mkdir(parents=True, exist_ok=True)
        self.registry = ModelRegistry(db, self.artifacts, explainers=explainers)
        self.snapshots = SnapshotStore()
        self.engine = ScoringEngine(
            db,
            self.catalog,
            self.registry,
            self.snapshots,
            self.artifacts,
            config.scoring_threads,
            config.top_factors,
            config.keep_runs,
            config.health_sample,
            config.dask_scheduler,
        )
        self.health = HealthMonitor(
            db,
            self.catalog,
            self.artifacts,
            self._version_documents,
            self._serving_version,
            config.health,
        )
        self.segments = SegmentStore(db)
        self._outcomes: dict[tuple[str, datetime], np.ndarray] = {}
        self._snapshot_lock = threading.Lock()
        self._logged: dict[str, float] = {}  # see _first_in_a_while

    # --- following the registry -------------------------------------------------------

    def refresh(self) -> None:
        """Load new model versions and newer runs' snapshots (other processes' runs too)."""
        self.catalog.forget()
        changed = self.registry.refresh()
        swapped = self.refresh_snapshots()
        if changed or swapped:
            release_unused_memory()

    def refresh_snapshots(self) -> list[str]:
        """Swap in the newest succeeded run of every instance; returns instances swapped."""
        with self._snapshot_lock:
            latest = self.engine.latest_runs()
            swapped: list[str] = []
            with self.db.session() as session:
                existing = set(session.scalars(select(InstanceRow.name)).all())
            self.snapshots.drop([name for name in self.snapshots.current() if name not in existing])
            for instance, row in latest.items():
                if instance not in existing or row.finished_at is None:
                    continue
                current = self.snapshots.get(instance)
                served = self.snapshots.finished_at(instance)
                if current is not None and (
                    current.run_id == row.run_id or (served and served >= row.finished_at)
                ):
                    continue
                try:
                    scores = self.engine.load(row)
                except Exception:
                    log.exception(
                        "could not load run scores",
                        extra={"instance": instance, "run_id": row.run_id},
                    )
                    continue
                if self.snapshots.swap(scores, row.finished_at):
                    swapped.append(instance)
                    log.info(
                        "snapshot swapped",
                        extra={"instance": instance, "run_id": row.run_id, "profiles": len(scores)},
                    )
            return swapped

    # --- scoring ----------------------------------------------------------------------

    def run_scoring(
        self, instance: str, as_of: datetime | None, progress: ProgressFn | None = None
    ) -> ScoringRun:
        """Score every eligible profile of an instance, with the version the registry serves now.

        The registry is read first, so a version that became READY (or current)
        since the last poll scores this run, not the one before it.
        """
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        self.catalog.dataset_of(instance)  # NotFound for an unknown instance
        if self.registry.refresh():
            release_unused_memory()
        self.model(instance)
        return self.engine.run(instance, as_of, progress)

    def list_runs(self, instance: str) -> list[ScoringRun]:
        """Runs of an instance, newest first."""
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        self.catalog.dataset_of(instance)  # NotFound for an unknown instance
        return self.engine.list_runs(instance)

    def due_instances(self, now: datetime) -> list[str]:
        """Instances whose scoring schedule selected a minute since their last run."""
        due: list[str] = []
        with self.db.session() as session:
            last_started = dict(
                session.execute(
                    select(
                        ScoringRunRow.instance_name, func.max(ScoringRunRow.started_at)
                    ).group_by(ScoringRunRow.instance_name)
                ).all()
            )
        for name, model in self.registry.models().items():
            schedule = model.config.scoring_schedule
            if not schedule:
                continue
            last = last_started.get(name) or model.created_at or model.loaded_at
            try:
                if is_due(schedule, last, now):
                    due.append(name)
            except InvalidArgument as exc:
                log.warning("bad scoring schedule", extra={"instance": name, "error": exc.message})
        return due

    def run_due(self, now: datetime) -> list[ScoringRun]:
        """Run every instance whose schedule is due (called by the scheduler task)."""
        runs: list[ScoringRun] = []
        for name in self.due_instances(now):
            try:
                runs.append(self.engine.run(name, None))
            except Exception:
                log.exception("scheduled scoring run failed", extra={"instance": name})
        return runs

    def model(self, instance: str) -> LoadedModel:
        """The serving model of an instance; looks at the registry once more before giving up.

        NotFound for an unknown instance, FailedPrecondition for one without a
        loadable READY model (a version that became READY since the last poll
        is picked up here rather than after the poll interval).
        """
        self.catalog.dataset_of(instance)
        try:
            return self.registry.get(instance)
        except NotFound:
            self.registry.refresh()
        try:
            return self.registry.get(instance)
        except NotFound:
            raise FailedPrecondition(
                f"instance '{instance}' has no READY model version; train it first"
            ) from None

    # --- lookups and real time -----------------------------------------------------------

    def get_profile_scores(self, profile_id: str, instances: Sequence[str]) -> ProfileScores:
        """Latest scores of one profile, from memory."""
        return lookups.get_profile_scores(self.snapshots, profile_id, instances)

    def batch_get_profile_scores(
        self, profile_ids: Sequence[str], instances: Sequence[str]
    ) -> tuple[list[ProfileScores], list[str]]:
        """Latest scores of up to 1,000 profiles, from memory."""
        return lookups.batch_get_profile_scores(self.snapshots, profile_ids, instances)

    def score_profile(
        self, instance: str, profile_id: str, events: pl.DataFrame, as_of: datetime | None
    ) -> tuple[InstanceScore, list[str]]:
        """Score one profile (as of the data's end by default); nothing is stored.

        Returns the score and the warnings about it (data stale for the goal's window).
        """
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        try:  # the model as of the last poll; `model` looks again (and names the error)
            model = self.registry.get(instance)
        except (NotFound, FailedPrecondition):
            model = self.model(instance)
        score, warning = realtime.score_profile(
            model, self.catalog, profile_id, events, as_of, self.config.top_factors
        )
        if warning is not None and self._first_in_a_while(f"stale:{instance}"):
            # Every answer carries the warning; the log says it once per instance and hour.
            log.warning("stale data for instance %s: %s", instance, warning)
        return score, [] if warning is None else [warning]

    def _first_in_a_while(self, key: str, seconds: float = 3600.0) -> bool:
        """True at most once per `seconds` for each key (log what repeats, not every time)."""
        now = time.monotonic()  # no lock: at worst two threads both log once
        if now - self._logged.get(key, -seconds) < seconds:
            return False
        self._logged[key] = now
        return True

    # --- segments ------------------------------------------------------------------------

    def create_segment(
        self, name: str, instance: str, segment_filter: SegmentFilter, run_id: str
    ) -> Segment:
        """Store the profiles of a run that pass the filter as a named segment."""
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        if not name:
            raise InvalidArgument("name", "must not be empty")
        scores = self.engine.run_scores(instance, run_id)
        return self.segments.create(name, segment_filter, scores)

    def get_segment(self, name: str) -> Segment:
        """One segment."""
        return self.segments.get(name)

    def list_segments(self, instance: str) -> list[Segment]:
        """Segments, optionally of one instance."""
        return self.segments.list_all(instance)

    def list_segment_members(self, name: str, page_size: int, page_token: str) -> MembersPage:
        """A page of members."""
        if not name:
            raise InvalidArgument("name", "must not be empty")
        return self.segments.members(name, page_size, page_token)

    def export_segment(self, name: str, parquet: bool) -> Iterator[bytes]:
        """Members as CSV or Parquet bytes."""
        if not name:
            raise InvalidArgument("name", "must not be empty")
        return self.segments.export(name, parquet)

    def export_scores(self, instance: str, run_id: str, parquet: bool) -> Iterator[bytes]:
        """A whole run's scores (default: the latest succeeded run) as CSV or Parquet bytes."""
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        self.catalog.dataset_of(instance)  # NotFound for an unknown instance
        return export_run(self.engine.run_scores(instance, run_id), parquet)

    # --- insights and status ------------------------------------------------------------

    def insights(self, instance: str, run_id: str) -> Insights:
        """Distribution, buckets, factors, evaluation and (when known) outcomes of a run."""
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        scores = self.engine.run_scores(instance, run_id)
        run = run_from_row(self.engine.get_run(scores.run_id))
        evaluation, config = self._bundle_documents(instance, scores.model_version)
        goal: Goal = config.goal if config else self.registry.get(instance).config.goal
        parts = self.catalog.parts(self.catalog.dataset_of(instance))
        available = insight_math.outcome_available(scores.as_of, goal.window_days, parts.end)
        expected = []
        if available:
            key = (scores.run_id, parts.end)
            labels = self._outcomes.get(key)
            if labels is None:
                labels = insight_math.observed_labels(
                    self.catalog.scan(parts), goal, scores.as_of, scores.ids
                )
                self._outcomes = {key: labels}  # keep one: insights of one run are read repeatedly
            expected = insight_math.expected_vs_actual(scores, labels)
        return Insights(
            run=run,
            histogram=insight_math.histogram(scores.score),
            buckets=insight_math.bucket_insights(scores),
            evaluation=insight_math.evaluation_summary(evaluation, scores.model_version),
            outcome_available=available,
            expected_vs_actual=expected,
        )

    def model_health(self, instance: str, max_runs: int) -> ModelHealth:
        """Realized quality, drift and retrain advice over an instance's recent runs."""
        return self.health.report(instance, max_runs)

    def _version_documents(
        self, instance: str, version: int
    ) -> tuple[ModelEvaluation | None, Goal]:
        """The evaluation and the goal of a model version."""
        evaluation, config = self._bundle_documents(instance, version)
        goal = config.goal if config else self.registry.get(instance).config.goal
        return evaluation, goal

    def _serving_version(self, instance: str) -> int | None:
        """The model version serving an instance (None: none loaded)."""
        try:
            return self.registry.get(instance).version
        except (NotFound, FailedPrecondition):
            return None

    def _bundle_documents(
        self, instance: str, version: int
    ) -> tuple[ModelEvaluation | None, InstanceConfig | None]:
        """The evaluation and instance config of a model version (served one from memory)."""
        try:
            model = self.registry.get(instance)
            if model.version == version:
                return model.evaluation, None
        except Exception:
            pass  # fall back to the bundle on disk
        with self.db.session() as session:
            path = session.scalar(
                select(ModelVersionRow.artifact_path).where(
                    ModelVersionRow.instance_name == instance, ModelVersionRow.version == version
                )
            )
        if not path:
            return None, None
        evaluation, config = read_model_documents(self.artifacts.path(path))
        return (
            ModelEvaluation.from_optional_json(evaluation),
            instance_config.from_dict(config) if config else None,
        )

    def status(self) -> list[ModelStatus]:
        """Serving model version, load errors and snapshot of every instance."""
        models = self.registry.status()
        snapshots = self.snapshots.current()
        out: list[ModelStatus] = []
        for name in sorted(set(models) | set(snapshots)):
            version, loaded_at, error = models.get(name, (0, None, ""))
            snapshot = snapshots.get(name)
            out.append(
                ModelStatus(
                    instance=name,
                    serving_version=version,
                    loaded_at=loaded_at,
                    last_error=error,
                    snapshot_run_id=snapshot.run_id if snapshot else "",
                    snapshot_profiles=len(snapshot) if snapshot else 0,
                )
            )
        return out
