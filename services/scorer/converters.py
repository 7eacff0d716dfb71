"""All protobuf ↔ domain conversion of the scorer, in one place."""

from __future__ import annotations

import functools
import struct
import weakref
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.convert import progress_to_pb, status_to_pb
from foresight.convert import to_timestamp as timestamp
from foresight.errors import InvalidArgument
from foresight.features.spec import format_factor_value
from services.scorer.factors import NO_FACTOR, importance_code
from services.scorer.health import ModelHealth, RealizedQuality, RunHealth
from services.scorer.records import (
    Bucket,
    FactorWeight,
    Importance,
    Insights,
    InstanceScore,
    MembersPage,
    ModelStatus,
    ProfileScores,
    Progress,
    ScoringRun,
    Segment,
    SegmentFilter,
)
from services.scorer.snapshot import RunScores

BUCKET_TO_PB = {
    Bucket.LOW: common_pb2.BUCKET_LOW,
    Bucket.MEDIUM: common_pb2.BUCKET_MEDIUM,
    Bucket.HIGH: common_pb2.BUCKET_HIGH,
}
BUCKET_FROM_PB = {v: k for k, v in BUCKET_TO_PB.items()}
IMPORTANCE_TO_PB = {
    Importance.LOW: common_pb2.IMPORTANCE_LOW,
    Importance.MEDIUM: common_pb2.IMPORTANCE_MEDIUM,
    Importance.HIGH: common_pb2.IMPORTANCE_HIGH,
}
assert all(int(k) == v for k, v in (*BUCKET_TO_PB.items(), *IMPORTANCE_TO_PB.items()))

# --- scores -------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _scored_at(moment: datetime) -> Timestamp:
    # A run's scores share one time: convert it once, not on every lookup.
    ts = Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def instance_score(score: InstanceScore) -> scorer_pb2.InstanceScore:
    """Domain score → protobuf."""
    msg = scorer_pb2.InstanceScore(
        instance=score.instance,
        probability=score.probability,
        score=score.score,
        percentile=score.percentile,
        bucket=BUCKET_TO_PB[score.bucket],
        model_version=score.model_version,
        run_id=score.run_id,
        scored_at=_scored_at(score.scored_at),
    )
    add = msg.factors.add
    for f in score.factors:
        add(code=f.code, text=f.text, impact=f.impact, importance=IMPORTANCE_TO_PB[f.importance])
    return msg


# Lookups are the scorer's hot path. A response is written straight in the protobuf
# wire format from pieces cached per served run (the shared fields, each factor's
# code and text per distinct value) and parsed once by upb: a few microseconds,
# where building the messages field by field and rendering texts cost ~35.
_DOUBLE = struct.Struct("<d")
MAX_CACHED_FACTORS = 50_000  # rendered (code, value) pieces per run: ≤ ~8 MB


def _varint(value: int) -> bytes:
    """Protobuf varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint(i) for i in range(128)]
_pack = _DOUBLE.pack
_IMPORTANCE_FIELD = [b"\x20" + _SMALL[i] for i in range(4)]  # importance = 4, by code


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message)."""
    size = len(payload)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + payload


_SCORE_FIELD = [b""] + [b"\x18" + _varint(i) for i in range(1, 256)]  # score = 3
_PERCENTILE_FIELD = [b""] + [b"\x20" + _varint(i) for i in range(1, 256)]  # percentile = 4
_BUCKET_FIELD = [b"\x28" + _SMALL[i] for i in range(4)]  # bucket = 5; codes = enum numbers
_ZERO_IMPACT_IMPORTANCE = _IMPORTANCE_FIELD[importance_code(0.0)]


class _RunEncoder:
    """Wire pieces of one run's InstanceScore messages, built once per served run."""

    def __init__(self, run: RunScores) -> None:
        self.features = run.features
        self.views = run.views
        self.k = run.k
        self.head = _field(b"\x0a", run.instance.encode())  # instance = 1
        # model_version = 7, scored_at = 8, run_id = 9
        self.tail = (
            (b"\x38" + _varint(run.model_version) if run.model_version else b"")
            + _field(b"\x42", _scored_at(run.as_of).SerializeToString())
            + (_field(b"\x4a", run.run_id.encode()) if run.run_id else b"")
        )
        self.codes = [_field(b"\x0a", f.code.encode()) for f in run.features]
        # (code, value) → a Factor's opening; a missing value (NaN, never equal to
        # itself) is (code, None).
        self.factor_pieces: dict[tuple[int, float | None], tuple[bytes, bytes]] = {}

    def factor_pieces_of(self, code: int, value: float) -> tuple[bytes, bytes]:
        """A factors = 6 field up to its impact, for a feature value (cached): its tag,
        length, code = 1 and text = 2, then either the impact = 3 tag (the length counts
        the 8-byte double and the importance = 4 field that follow) or nothing (a zero
        impact, which protobuf leaves out; the length counts the importance field)."""
        key = (code, value if value == value else None)
        pieces = self.factor_pieces.get(key)
        if pieces is None:
            text = format_factor_value(self.features[code], value)
            head = self.codes[code] + _field(b"\x12", text.encode())
            size = len(head)
            pieces = (
                b"\x32" + _varint(size + 11) + head + b"\x19",
                b"\x32" + _varint(size + 2) + head,
            )
            if len(self.factor_pieces) < MAX_CACHED_FACTORS:
                self.factor_pieces[key] = pieces
        return pieces

    def encode(self, row: int) -> bytes:
        """The InstanceScore of the profile in `row`, fields in number order as upb
        writes them, read straight from the run's columns.

        The hot loop: fields are looked up, not built; no per-row objects but the parts.
        """
        probability, score, percentile, bucket, codes, impacts, values = self.views
        cached = self.factor_pieces
        p = probability[row]
        parts = [
            self.head,
            b"\x11" + _pack(p) if p else b"",  # probability = 2 (0.0 is left out)
            _SCORE_FIELD[score[row]],
            _PERCENTILE_FIELD[percentile[row]],
            _BUCKET_FIELD[bucket[row]],
        ]
        start = row * self.k
        for slot in range(start, start + self.k):
            code = codes[slot]
            if code == NO_FACTOR:
                break  # slots are filled strongest first
            value, impact = values[slot], impacts[slot]
            pieces = cached.get((code, value) if value == value else (code, None))
            if pieces is None:
                pieces = self.factor_pieces_of(code, value)
            if impact:
                parts.append(pieces[0] + _pack(impact) + _IMPORTANCE_FIELD[importance_code(impact)])
            else:
                parts.append(pieces[1] + _ZERO_IMPACT_IMPORTANCE)
        parts.append(self.tail)
        return b"".join(parts)


_encoders: weakref.WeakKeyDictionary[RunScores, _RunEncoder] = weakref.WeakKeyDictionary()


def _encoder(run: RunScores) -> _RunEncoder:
    encoder = _encoders.get(run)
    if encoder is None:
        encoder = _encoders.setdefault(run, _RunEncoder(run))
    return encoder


def profile_scores(scores: ProfileScores) -> bytes:
    """Domain profile scores → an encoded ProfileScores (what upb writes for the message
    built field by field; the interceptor sends the bytes as they are)."""
    # profile_id = 1, scores = 2
    return _field(b"\x0a", scores.profile_id.encode()) + b"".join(
        [_field(b"\x12", _encoder(run).encode(row)) for run, row in scores.scores]
    )


def batch_response(found: list[ProfileScores], missing: list[str]) -> bytes:
    """Batch lookup result → an encoded BatchGetProfileScoresResponse (profiles = 1,
    not_found = 2)."""
    raw = b"".join([_field(b"\x0a", profile_scores(p)) for p in found])
    return raw + b"".join([_field(b"\x12", pid.encode()) for pid in missing])


def scoring_run(run: ScoringRun) -> scorer_pb2.ScoringRun:
    """Domain run → protobuf."""
    return scorer_pb2.ScoringRun(
        run_id=run.run_id,
        instance=run.instance,
        model_version=run.model_version,
        status=status_to_pb(run.status),
        as_of=timestamp(run.as_of),
        started_at=timestamp(run.started_at),
        finished_at=timestamp(run.finished_at),
        profiles=run.profiles,
        error=run.error,
    )


def progress_event(progress: Progress) -> scorer_pb2.RunScoringEvent:
    """Progress → stream message."""
    return scorer_pb2.RunScoringEvent(
        progress=progress_to_pb(progress.stage, progress.fraction, progress.message)
    )


def run_event(run: ScoringRun) -> scorer_pb2.RunScoringEvent:
    """The final run → stream message."""
    return scorer_pb2.RunScoringEvent(run=scoring_run(run))


# --- events ------------------------------------------------------------------------


# --- segments ----------------------------------------------------------------------


def segment_filter(msg: scorer_pb2.SegmentFilter) -> SegmentFilter:
    """Protobuf filter → domain (an unset bucket value is refused)."""
    buckets: list[Bucket] = []
    for i, value in enumerate(msg.buckets):
        if value not in BUCKET_FROM_PB:
            raise InvalidArgument(
                f"filter.buckets[{i}]", "use BUCKET_LOW, BUCKET_MEDIUM or BUCKET_HIGH"
            )
        buckets.append(BUCKET_FROM_PB[value])
    return SegmentFilter(
        buckets=tuple(buckets),
        min_percentile=msg.min_percentile,
        max_percentile=msg.max_percentile,
        min_probability=msg.min_probability if msg.HasField("min_probability") else None,
        max_probability=msg.max_probability if msg.HasField("max_probability") else None,
        factor_code=msg.factor_code,
    )


def segment_filter_pb(f: SegmentFilter) -> scorer_pb2.SegmentFilter:
    """Domain filter → protobuf."""
    msg = scorer_pb2.SegmentFilter(
        buckets=[BUCKET_TO_PB[b] for b in f.buckets],
        min_percentile=f.min_percentile,
        max_percentile=f.max_percentile,
        factor_code=f.factor_code,
    )
    if f.min_probability is not None:
        msg.min_probability = f.min_probability
    if f.max_probability is not None:
        msg.max_probability = f.max_probability
    return msg


def segment(s: Segment) -> scorer_pb2.Segment:
    """Domain segment → protobuf."""
    return scorer_pb2.Segment(
        name=s.name,
        instance=s.instance,
        filter=segment_filter_pb(s.filter),
        run_id=s.run_id,
        size=s.size,
        bucket_counts=s.bucket_counts,
        source=s.source,
        created_at=timestamp(s.created_at),
    )


def members_page(page: MembersPage) -> scorer_pb2.ListSegmentMembersResponse:
    """A page of members → protobuf."""
    return scorer_pb2.ListSegmentMembersResponse(
        members=[
            scorer_pb2.SegmentMember(
                profile_id=m.profile_id,
                probability=m.probability or 0.0,
                score=m.score or 0,
                percentile=m.percentile or 0,
                bucket=BUCKET_TO_PB[m.bucket] if m.bucket else common_pb2.BUCKET_UNSPECIFIED,
            )
            for m in page.members
        ],
        next_page_token=page.next_page_token,
        total=page.total,
    )


def export_parquet(fmt: int) -> bool:
    """Whether an ExportFormat asks for Parquet (unset = CSV)."""
    if fmt not in (
        scorer_pb2.EXPORT_FORMAT_UNSPECIFIED,
        scorer_pb2.EXPORT_FORMAT_CSV,
        scorer_pb2.EXPORT_FORMAT_PARQUET,
    ):
        raise InvalidArgument("format", f"unknown export format {fmt}")
    return fmt == scorer_pb2.EXPORT_FORMAT_PARQUET


# --- insights and status --------------------------------------------------------------


def _factor_weight(f: FactorWeight) -> common_pb2.FactorWeight:
    return common_pb2.FactorWeight(
        code=f.code, description=f.description, weight=f.weight, share=f.share
    )


def insights(i: Insights) -> scorer_pb2.Insights:
    """Domain insights → protobuf."""
    msg = scorer_pb2.Insights(
        run=scoring_run(i.run),
        histogram=[scorer_pb2.ScoreBin(low=b.low, high=b.high, count=b.count) for b in i.histogram],
        buckets=[
            scorer_pb2.BucketInsight(
                bucket=BUCKET_TO_PB[b.bucket],
                profiles=b.profiles,
                mean_probability=b.mean_probability,
                factors=[_factor_weight(f) for f in b.factors],
            )
            for b in i.buckets
        ],
        outcome_available=i.outcome_available,
        expected_vs_actual=[
            scorer_pb2.ExpectedActual(
                bucket=BUCKET_TO_PB[e.bucket],
                expected_rate=e.expected_rate,
                actual_rate=e.actual_rate,
                profiles=e.profiles,
            )
            for e in i.expected_vs_actual
        ],
    )
    if i.evaluation is not None:
        e = i.evaluation
        msg.evaluation.CopyFrom(
            scorer_pb2.EvaluationSummary(
                model_version=e.model_version, auc=e.auc, pr_auc=e.pr_auc, quality=e.quality
            )
        )
    return msg


def scorer_status(models: list[ModelStatus]) -> scorer_pb2.ScorerStatus:
    """Domain status → protobuf."""
    return scorer_pb2.ScorerStatus(
        models=[
            scorer_pb2.LoadedModel(
                instance=m.instance,
                serving_version=m.serving_version,
                loaded_at=timestamp(m.loaded_at),
                last_error=m.last_error,
                snapshot_run_id=m.snapshot_run_id,
                snapshot_profiles=m.snapshot_profiles,
            )
            for m in models
        ]
    )


# --- model health ---------------------------------------------------------------------


def _realized(r: RealizedQuality) -> scorer_pb2.RealizedQuality:
    return scorer_pb2.RealizedQuality(
        profiles=r.profiles,
        positives=r.positives,
        auc=r.auc,
        lift_top_decile=r.lift_top_decile,
        brier=r.brier,
        ece=r.ece,
        mean_probability=r.mean_probability,
        positive_rate=r.positive_rate,
        conclusive=r.conclusive,
    )


def _run_health(r: RunHealth) -> scorer_pb2.RunHealth:
    msg = scorer_pb2.RunHealth(
        run=scoring_run(r.run),
        window_end=timestamp(r.window_end),
        window_closed=r.window_closed,
        validation_auc=r.validation_auc or 0.0,
        note=r.note,
    )
    if r.realized is not None:
        msg.realized.CopyFrom(_realized(r.realized))
    if r.drift is not None:
        d = r.drift
        msg.drift.CopyFrom(
            scorer_pb2.RunDrift(
                previous_run_id=d.previous_run_id,
                same_model=d.same_model,
                score_psi=d.score_psi,
                top_features=[
                    scorer_pb2.FeatureDrift(code=f.code, description=f.description, psi=f.psi)
                    for f in d.top()
                ],
            )
        )
    return msg


def model_health(h: ModelHealth) -> scorer_pb2.ModelHealth:
    """Domain model health → protobuf."""
    return scorer_pb2.ModelHealth(
        instance=h.instance,
        serving_version=h.serving_version,
        runs=[_run_health(r) for r in h.runs],
        retrain_recommended=h.retrain,
        reasons=h.reasons,
        auc_drop_threshold=h.thresholds.auc_drop,
        psi_threshold=h.thresholds.psi,
    )
