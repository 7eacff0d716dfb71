"""The evaluation report of a model version: typed, as written to ``evaluation.json``.

The trainer builds a `ModelEvaluation` (services/trainer/evaluation.py) and
stores it in the model bundle; GetEvaluation, the scorer's insights and the
report pages read it back with `ModelEvaluation.from_json`. Unknown keys are
ignored and every field added after schema 1 has a default, so older bundles
still load. Field names are the JSON keys (a contract: rename with care).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EVALUATION_SCHEMA_VERSION",
    "BucketFactors",
    "BucketRate",
    "CalibrationBin",
    "CalibrationSummary",
    "DecileRow",
    "FactorWeight",
    "HistogramBin",
    "ModelEvaluation",
    "ParityEvidence",
    "PopulationCounts",
    "TrainingSummary",
    "TrialSummary",
]

EVALUATION_SCHEMA_VERSION = 2


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class DecileRow(_Record):
    """One tenth of the held-out rows by descending probability."""

    decile: int
    rows: int
    positives: int
    positive_rate: float
    lift: float
    cumulative_gain: float
    min_probability: float = 0.0
    max_probability: float = 0.0


class CalibrationBin(_Record):
    """One equal-width probability bin: mean predicted vs observed rate."""

    low: float
    high: float
    predicted: float
    observed: float
    rows: int


class HistogramBin(_Record):
    """Scores in [low, high) (the last bin includes 100)."""

    low: float
    high: float
    count: int


class FactorWeight(_Record):
    """A feature's influence over a set of rows (mean |SHAP|, signed mean, top-5 share)."""

    code: str
    description: str = ""
    weight: float
    mean_impact: float = 0.0
    share: float = 0.0


class BucketFactors(_Record):
    """Top factors of one score bucket."""

    bucket: str
    profiles: int
    factors: list[FactorWeight] = Field(default_factory=list)


class BucketRate(_Record):
    """Expected (mean probability) vs observed goal rate in one bucket."""

    bucket: str
    profiles: int
    expected_rate: float | None = None
    observed_rate: float | None = None


class CalibrationSummary(_Record):
    """How probabilities were calibrated, and the calibration error before and after.

    `method` was chosen by cross-validated Brier score on the tuning half of
    the validation cutoff (`cv_brier` per method); the errors are measured on
    the evaluation half, held out from that choice.
    """

    method: Literal["none", "platt", "isotonic"] = "none"
    cv_brier: dict[str, float] = Field(default_factory=dict)
    ece_before: float | None = None
    ece_after: float | None = None
    brier_before: float | None = None
    brier_after: float | None = None


class PopulationCounts(_Record):
    """How many profiles each population rule excluded at the validation cutoff."""

    with_history: int = 0
    excluded_by_lookback: int = 0
    excluded_by_conditions: int = 0
    eligible: int = 0


class TrialSummary(_Record):
    """One hyper-parameter trial of the search."""

    params: dict[str, float | int | str]
    tuning_auc: float
    best_iteration: int
    seconds: float


class TrainingSummary(_Record):
    """Row counts and stage timings of the training job."""

    train_rows: int = 0
    # Rows of the cutoffs before the validation one, before the bounded sample.
    train_rows_before_sample: int = 0
    train_positives: int = 0
    tuning_rows: int = 0
    evaluation_rows: int = 0
    served_rows: int = 0
    served_positives: int = 0
    features: int = 0
    leakage_audit_profiles: int = 0
    seconds: dict[str, float] = Field(default_factory=dict)


class ParityEvidence(_Record):
    """ONNX vs LightGBM on held-out and on-threshold rows."""

    rows: int
    threshold_rows: int
    max_abs_diff: float


class ModelEvaluation(_Record):
    """Everything known about a model version's quality (see services/trainer/evaluation.py)."""

    model_config = ConfigDict(extra="ignore", frozen=False)

    schema_version: int = EVALUATION_SCHEMA_VERSION
    instance: str = ""
    version: int = 0
    dataset: str = ""
    auc: float | None = None
    pr_auc: float | None = None
    log_loss: float | None = None
    brier: float | None = None
    validation_rows: int = 0
    positives: int = 0
    negatives: int = 0
    positive_rate: float = 0.0
    mean_probability: float | None = None
    deciles: list[DecileRow] = Field(default_factory=list)
    calibration: list[CalibrationBin] = Field(default_factory=list)
    score_histogram: list[HistogramBin] = Field(default_factory=list)
    quality: Literal["GOOD", "POOR"] = "POOR"
    suggestions: list[str] = Field(default_factory=list)
    global_factors: list[FactorWeight] = Field(default_factory=list)
    bucket_factors: list[BucketFactors] = Field(default_factory=list)
    buckets: list[BucketRate] = Field(default_factory=list)
    expected_value: float | None = None
    explained_rows: int = 0
    calibrator: CalibrationSummary = Field(default_factory=CalibrationSummary)
    population: PopulationCounts = Field(default_factory=PopulationCounts)
    validation_cutoff: str | None = None
    cutoffs: list[str] = Field(default_factory=list)
    training_cutoffs: list[str] = Field(default_factory=list)
    parameters: dict[str, str] = Field(default_factory=dict)
    trials: list[TrialSummary] = Field(default_factory=list)
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    parity: ParityEvidence | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON-able form stored as evaluation.json."""
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> ModelEvaluation:
        """Read a stored evaluation.json (any schema version)."""
        return cls.model_validate(data)

    @classmethod
    def from_optional_json(cls, data: Any) -> ModelEvaluation | None:
        """Like `from_json`, but None for a bundle without one (a missing or empty document)."""
        return cls.model_validate(data) if data else None
