"""The model health report of an instance: its recent runs, how they turned out, the advice.

Reads the runs from the registry, their summaries from the health folder and
the outcomes from the event store; the arithmetic lives in health.py and
drift.py. Realized quality is computed once per run and data end (a closed
window only changes when events are added), then kept in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import select

from foresight.errors import InvalidArgument
from foresight.evaluation_report import ModelEvaluation
from foresight.features.labels import window_end
from foresight.instance import Goal
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import ScoringRunRow
from services.scorer import insights as insight_math
from services.scorer.catalog import Catalog, DatasetParts
from services.scorer.health import (
    KEY_FEATURES,
    ModelHealth,
    RealizedQuality,
    RunHealth,
    RunSummary,
    Thresholds,
    drift_between,
    read_summary,
    realized_quality,
    recommend,
)
from services.scorer.scoring import run_from_row

#: Runs reported when the request does not say.
DEFAULT_RUNS = 12
#: The most runs one report covers.
MAX_RUNS = 100
_CACHE = 256

#: (evaluation.json, goal) of an instance's model version.
Documents = Callable[[str, int], tuple[ModelEvaluation | None, Goal]]


class HealthMonitor:
    """Builds `ModelHealth` reports."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        artifacts: ArtifactStore,
        documents: Documents,
        serving_version: Callable[[str], int | None],
        thresholds: Thresholds,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.artifacts = artifacts  # run summaries live under its health folder
        self.documents = documents
        self.serving_version = serving_version
        self.thresholds = thresholds
        self._realized: dict[tuple[str, datetime], RealizedQuality] = {}
        self._lock = threading.Lock()

    def report(self, instance: str, max_runs: int = 0) -> ModelHealth:
        """The newest `max_runs` succeeded runs (by as-of time), newest first, and the advice."""
        if not instance:
            raise InvalidArgument("instance", "must not be empty")
        if not 0 <= max_runs <= MAX_RUNS:
            raise InvalidArgument("max_runs", f"must be between 0 and {MAX_RUNS}")
        parts = self.catalog.parts(self.catalog.dataset_of(instance))  # NotFound when unknown
        wanted = max_runs or DEFAULT_RUNS
        rows = self._runs(instance, wanted + 1)  # one more: the drift of the oldest shown
        summaries = [read_summary(self.artifacts, instance, r.run_id) for r in rows]
        documents: dict[int, tuple[ModelEvaluation | None, Goal]] = {}
        out: list[RunHealth] = []
        for i, row in enumerate(rows[:wanted]):
            version = row.model_version
            if version not in documents:
                documents[version] = self.documents(instance, version)
            evaluation, goal = documents[version]
            previous = summaries[i + 1] if i + 1 < len(rows) else None
            out.append(self._run_health(row, summaries[i], previous, evaluation, goal, parts))
        serving = self.serving_version(instance)
        if serving is None:
            serving = out[0].run.model_version if out else 0
        return ModelHealth(
            instance, serving, out, self.thresholds, recommend(out, serving, self.thresholds)
        )

    def _runs(self, instance: str, limit: int) -> list[ScoringRunRow]:
        with self.db.session() as session:
            rows = session.scalars(
                select(ScoringRunRow)
                .where(
                    ScoringRunRow.instance_name == instance,
                    ScoringRunRow.status == Status.READY.value,
                )
                .order_by(ScoringRunRow.as_of.desc(), ScoringRunRow.started_at.desc())
                .limit(limit)
            ).all()
            for r in rows:
                session.expunge(r)
            return list(rows)

    def _run_health(
        self,
        row: ScoringRunRow,
        summary: RunSummary | None,
        previous: RunSummary | None,
        evaluation: ModelEvaluation | None,
        goal: Goal,
        parts: DatasetParts,
    ) -> RunHealth:
        run = run_from_row(row)
        end = window_end(run.as_of, goal.window_days)
        closed = insight_math.outcome_available(run.as_of, goal.window_days, parts.end)
        auc = evaluation.auc if evaluation is not None else None
        factors = evaluation.global_factors if evaluation is not None else []
        key = frozenset(f.code for f in factors[:KEY_FEATURES])
        base = RunHealth(run, end, closed, auc, key_features=key)
        if summary is None:
            return replace(base, note="no health summary: scored before it was recorded")
        last_day = (end - timedelta(days=1)).date().isoformat()
        return replace(
            base,
            realized=self._realized_of(summary, goal, parts) if closed else None,
            drift=drift_between(previous, summary) if previous is not None else None,
            note="" if closed else f"outcome window runs to {last_day}, not in the data yet",
        )

    def _realized_of(self, summary: RunSummary, goal: Goal, parts: DatasetParts) -> RealizedQuality:
        key = (summary.run_id, parts.end)
        with self._lock:
            cached = self._realized.get(key)
        if cached is not None:
            return cached
        labels = insight_math.observed_labels(
            self.catalog.scan(parts), goal, summary.as_of, summary.sample_ids
        )
        realized = realized_quality(labels, summary.sample_probability)
        with self._lock:
            if len(self._realized) >= _CACHE:
                self._realized.clear()
            self._realized[key] = realized
        return realized
