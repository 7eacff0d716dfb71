"""Plain domain records the scorer's modules exchange (no gRPC types)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import NamedTuple

from foresight.storage.lifecycle import Status


class Bucket(IntEnum):
    """Score bucket on the 0–100 score: LOW < 25, MEDIUM 25–74, HIGH ≥ 75."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3


class Importance(IntEnum):
    """How strongly one factor moved one profile's score."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3


class Factor(NamedTuple):
    """One influential factor (reason code) behind one score.

    A NamedTuple, like InstanceScore: lookups build a dozen per request, and a
    tuple is built in half the time of a frozen dataclass.
    """

    code: str
    text: str
    impact: float
    importance: Importance


class InstanceScore(NamedTuple):
    """One instance's score of one profile."""

    instance: str
    probability: float
    score: int
    percentile: int
    bucket: Bucket
    factors: tuple[Factor, ...]
    model_version: int
    scored_at: datetime
    run_id: str


@dataclass(frozen=True, slots=True)
class ProfileScores:
    """Every requested instance's latest score of one profile."""

    profile_id: str
    scores: list[InstanceScore]


@dataclass(frozen=True, slots=True)
class ScoringRun:
    """A batch scoring run."""

    run_id: str
    instance: str
    model_version: int
    status: Status
    as_of: datetime
    started_at: datetime
    finished_at: datetime | None
    profiles: int
    error: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Progress of a scoring run, streamed to the caller."""

    stage: str
    fraction: float
    message: str


@dataclass(frozen=True, slots=True)
class SegmentFilter:
    """Which profiles of a run belong to a segment; all set parts must hold."""

    buckets: tuple[Bucket, ...] = ()
    min_percentile: int = 0
    max_percentile: int = 0
    min_probability: float | None = None
    max_probability: float | None = None
    factor_code: str = ""


@dataclass(frozen=True, slots=True)
class Segment:
    """A stored segment."""

    name: str
    instance: str
    filter: SegmentFilter
    run_id: str
    size: int
    bucket_counts: dict[str, int]
    source: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SegmentMember:
    """A member of a segment (score fields are None for cluster segments)."""

    profile_id: str
    probability: float | None
    score: int | None
    percentile: int | None
    bucket: Bucket | None


@dataclass(frozen=True, slots=True)
class MembersPage:
    """One page of segment members."""

    members: list[SegmentMember]
    next_page_token: str
    total: int


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What the scorer serves for one instance."""

    instance: str
    serving_version: int
    loaded_at: datetime | None
    last_error: str
    snapshot_run_id: str
    snapshot_profiles: int


@dataclass(frozen=True, slots=True)
class FactorWeight:
    """A factor with its weight (mean |impact|) and share within a group of profiles."""

    code: str
    description: str
    weight: float
    share: float


@dataclass(frozen=True, slots=True)
class BucketInsight:
    """Size, mean probability and top factors of one bucket."""

    bucket: Bucket
    profiles: int
    mean_probability: float
    factors: list[FactorWeight]


@dataclass(frozen=True, slots=True)
class ExpectedActual:
    """Predicted vs observed goal rate of one bucket."""

    bucket: Bucket
    expected_rate: float
    actual_rate: float
    profiles: int


@dataclass(frozen=True, slots=True)
class EvaluationSummary:
    """The headline of the model's evaluation."""

    model_version: int
    auc: float
    pr_auc: float
    quality: str


@dataclass(frozen=True, slots=True)
class ScoreBin:
    """One histogram bin of scores: [low, high), the last bin includes 100."""

    low: int
    high: int
    count: int


@dataclass(frozen=True, slots=True)
class Insights:
    """Insights of one scoring run."""

    run: ScoringRun
    histogram: list[ScoreBin]
    buckets: list[BucketInsight]
    evaluation: EvaluationSummary | None
    outcome_available: bool
    expected_vs_actual: list[ExpectedActual] = field(default_factory=list)
