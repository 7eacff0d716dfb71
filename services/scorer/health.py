"""Model health over time: what a run looked like, how it turned out, and when to retrain.

When a run is stored, a small summary is kept next to it (`RunSummary`, one
JSON file under ``<artifacts>/health/<instance>/<run_id>.json``, written
atomically and, like the scores, mirrored to `FORESIGHT_ARTIFACTS_URL` when
set): the sketch of its probabilities and of every feature (see drift.py) and
a uniform sample of (profile, probability) pairs. The summary
outlives the run's scores (only the newest runs keep those), so:

- once the run's outcome window has closed in the data, its *realized*
  quality is measured on the sample against what happened, labelled by the
  trainer's own `goal_labels`: AUC, lift of the top decile, Brier score and
  expected calibration error (`realized_quality`);
- consecutive runs are compared by PSI, of the probabilities and of each
  feature (`drift_between`), without featurizing any run again;
- `recommend` says when to retrain (thresholds in `Thresholds`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from foresight.calibration import brier, expected_calibration_error
from foresight.storage.artifacts import ArtifactStore, atomic_write_bytes
from services.scorer.drift import Sketch, merge_columns, psi, sketch
from services.scorer.records import ScoringRun
from services.scorer.snapshot import RunScores

HEALTH_FOLDER = "health"
"""Where run summaries live, under the artifact root (outside the pruned scores folder)."""
#: Each class needs this many realized outcomes in the sample before its AUC can
#: ask for a retrain (fewer make the AUC too noisy to act on).
MIN_OUTCOMES_PER_CLASS = 30
#: Features whose drift can ask for a retrain: the model's most influential ones.
KEY_FEATURES = 10
#: Drifting features listed per run.
TOP_DRIFTING = 5


# --- the per-run summary ------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RunSummary:
    """What is kept of a run for model health (a few hundred kB at most)."""

    run_id: str
    instance: str
    model_version: int
    as_of: datetime
    profiles: int
    score: Sketch  # of the probabilities
    features: dict[str, Sketch]  # by feature code
    descriptions: dict[str, str]  # feature code → description
    sample_ids: list[str]
    sample_probability: np.ndarray  # float64, aligned with sample_ids

    def to_json(self) -> bytes:
        """The JSON file's bytes."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "instance": self.instance,
                "model_version": self.model_version,
                "as_of": self.as_of.isoformat(),
                "profiles": self.profiles,
                "score": self.score.to_dict(),
                "features": [
                    {"code": c, "description": self.descriptions.get(c, c), **s.to_dict()}
                    for c, s in self.features.items()
                ],
                "sample": {
                    "profile_id": self.sample_ids,
                    "probability": [round(float(p), 7) for p in self.sample_probability],
                },
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RunSummary:
        """Read the JSON file's bytes."""
        data = json.loads(raw)
        features = data["features"]
        return cls(
            run_id=data["run_id"],
            instance=data["instance"],
            model_version=int(data["model_version"]),
            as_of=datetime.fromisoformat(data["as_of"]),
            profiles=int(data["profiles"]),
            score=Sketch.from_dict(data["score"]),
            features={f["code"]: Sketch.from_dict(f) for f in features},
            descriptions={f["code"]: f["description"] for f in features},
            sample_ids=list(data["sample"]["profile_id"]),
            sample_probability=np.asarray(data["sample"]["probability"], dtype=np.float64),
        )


def summarize(
    scores: RunScores, shard_sketches: Sequence[Sequence[Sketch] | None], sample_size: int
) -> RunSummary:
    """The summary of a scored run: its probabilities, the shards' feature sketches merged."""
    sketches = merge_columns([s for s in shard_sketches if s is not None])
    n = len(scores)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False)) if n else np.zeros(0)
    rows = rows.astype(np.int64)
    features = {f.code: s for f, s in zip(scores.features, sketches, strict=False)}
    return RunSummary(
        run_id=scores.run_id,
        instance=scores.instance,
        model_version=scores.model_version,
        as_of=scores.as_of,
        profiles=n,
        score=sketch(scores.probability),
        features=features,
        descriptions={f.code: f.description for f in scores.features},
        sample_ids=[str(v) for v in scores.ids.take(rows).to_pylist()],
        sample_probability=scores.probability[rows].astype(np.float64),
    )


def summary_file(instance: str, run_id: str) -> str:
    """Where a run's summary lives, relative to the artifact root."""
    return f"{HEALTH_FOLDER}/{instance}/{run_id}.json"


def write_summary(artifacts: ArtifactStore, summary: RunSummary) -> str:
    """Write a run's summary atomically (into the local store); returns its `summary_file`."""
    relative = summary_file(summary.instance, summary.run_id)
    atomic_write_bytes(artifacts.path(relative), summary.to_json())
    return relative


def read_summary(artifacts: ArtifactStore, instance: str, run_id: str) -> RunSummary | None:
    """A run's summary (from the mirror when this scorer does not have it), or None when
    it has none (scored before summaries were kept)."""
    path = artifacts.local_file(summary_file(instance, run_id))
    return None if path is None else RunSummary.from_json(path.read_bytes())


# --- realized quality -----------------------------------------------------------------------


@dataclass(frozen=True)
class RealizedQuality:
    """How a run's probabilities did against the outcomes that happened."""

    profiles: int  # sampled profiles with an outcome
    positives: int
    auc: float  # NaN when one class is absent
    lift_top_decile: float  # goal rate of the top 10 % by probability / overall rate
    brier: float
    ece: float
    mean_probability: float
    positive_rate: float

    @property
    def conclusive(self) -> bool:
        """Enough outcomes of each class for the AUC to ask for a retrain."""
        negatives = self.profiles - self.positives
        return min(self.positives, negatives) >= MIN_OUTCOMES_PER_CLASS and not math.isnan(self.auc)


def lift_top_decile(labels: np.ndarray, probability: np.ndarray) -> float:
    """Goal rate among the 10 % highest probabilities over the overall rate (ties stably)."""
    n = len(labels)
    rate = float(labels.mean()) if n else 0.0
    if n == 0 or rate == 0:
        return math.nan
    top = np.argsort(-probability, kind="stable")[: max(1, n // 10)]
    return float(labels[top].mean()) / rate


def realized_quality(labels: np.ndarray, probability: np.ndarray) -> RealizedQuality:
    """Realized metrics of probabilities against 0/1 outcomes."""
    # Imported here: scikit-learn (~75 MB) loads when model health is first asked for,
    # not in every serving process.
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    positives = int(y.sum())
    both = 0 < positives < len(y)
    return RealizedQuality(
        profiles=len(y),
        positives=positives,
        auc=float(roc_auc_score(y, p)) if both else math.nan,
        lift_top_decile=lift_top_decile(y, p),
        brier=brier(y, p),
        ece=expected_calibration_error(y, p),
        mean_probability=float(p.mean()) if len(p) else math.nan,
        positive_rate=float(y.mean()) if len(y) else math.nan,
    )


# --- drift ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """PSI of one feature between two runs."""

    code: str
    description: str
    psi: float


@dataclass(frozen=True)
class Drift:
    """A run against the run before it."""

    previous_run_id: str
    same_model: bool  # both scored by the same model version
    score_psi: float
    features: list[FeatureDrift]  # every shared feature, largest PSI first

    def top(self, n: int = TOP_DRIFTING) -> list[FeatureDrift]:
        """The n most drifting features."""
        return self.features[:n]


def drift_between(previous: RunSummary, current: RunSummary) -> Drift:
    """PSI of the probabilities and of every feature both runs have, `previous` as reference."""
    shared = [c for c in current.features if c in previous.features]
    features = [
        FeatureDrift(
            c, current.descriptions.get(c, c), psi(previous.features[c], current.features[c])
        )
        for c in shared
    ]
    features = [f for f in features if not math.isnan(f.psi)]
    features.sort(key=lambda f: -f.psi)
    return Drift(
        previous.run_id,
        previous.model_version == current.model_version,
        psi(previous.score, current.score),
        features,
    )


# --- the report and the advice ----------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """When to recommend a retrain (ScorerSettings: FORESIGHT_SCORER_HEALTH_*)."""

    auc_drop: float = 0.05  # validation AUC − realized AUC above this
    psi: float = 0.25  # score or key-feature PSI above this (a significant shift)


@dataclass(frozen=True)
class RunHealth:
    """One run's row of the report."""

    run: ScoringRun
    window_end: datetime  # exclusive end of the run's outcome window
    window_closed: bool
    validation_auc: float | None  # of the run's model version
    realized: RealizedQuality | None = None  # once the window has closed
    drift: Drift | None = None  # against the previous run (by as-of time)
    key_features: frozenset[str] = frozenset()  # the model's most influential features
    note: str = ""  # why something is missing


@dataclass(frozen=True)
class ModelHealth:
    """An instance's runs, newest first, and the advice."""

    instance: str
    serving_version: int
    runs: list[RunHealth]
    thresholds: Thresholds
    reasons: list[str] = field(default_factory=list)

    @property
    def retrain(self) -> bool:
        """Whether a retrain is recommended (`reasons` says why)."""
        return bool(self.reasons)


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


def recommend(runs: Sequence[RunHealth], serving_version: int, limits: Thresholds) -> list[str]:
    """Why the serving model should be retrained (empty: no reason).

    Only runs scored by the serving version count (a retrain starts afresh):
    the newest of them whose outcome window closed with enough outcomes of
    each class, when its realized AUC is more than `auc_drop` below the
    validation AUC; and any consecutive pair of them whose score PSI or a key
    feature's PSI is above `psi`.
    """
    mine = [r for r in runs if r.run.model_version == serving_version]
    reasons: list[str] = []
    judged = next((r for r in mine if r.realized is not None and r.realized.conclusive), None)
    if judged is not None and judged.realized is not None and judged.validation_auc is not None:
        drop = judged.validation_auc - judged.realized.auc
        if drop > limits.auc_drop:
            reasons.append(
                f"realized AUC {judged.realized.auc:.3f} of the run as of "
                f"{_day(judged.run.as_of)} is {drop:.3f} below the validation AUC "
                f"{judged.validation_auc:.3f} (threshold {limits.auc_drop:g})"
            )
    for r in mine:
        d = r.drift
        if d is None or not d.same_model:
            continue
        if d.score_psi > limits.psi:
            reasons.append(
                f"score PSI {d.score_psi:.3f} between the runs as of {_day(r.run.as_of)} and "
                f"the one before (threshold {limits.psi:g})"
            )
        shifted = [
            f
            for f in d.features
            if f.psi > limits.psi and (not r.key_features or f.code in r.key_features)
        ]
        if shifted:
            named = ", ".join(f"{f.code} ({f.psi:.3f})" for f in shifted[:3])
            reasons.append(
                f"feature PSI above {limits.psi:g} in the run as of {_day(r.run.as_of)}: {named}"
            )
    return reasons
