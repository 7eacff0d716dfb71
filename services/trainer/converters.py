"""Protobuf ↔ domain conversion for the trainer (ingestion, datasets, instances)."""

from __future__ import annotations

import io

import polars as pl

from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.convert import events_to_frame, instance_to_proto, progress_to_pb, to_timestamp
from foresight.errors import InvalidArgument
from foresight.events.validation import DuplicatePolicy
from foresight.storage.catalog import DatasetHealth
from services.trainer.ingest import (
    DatasetDescription,
    DatasetInfo,
    IngestSummary,
    ProfileImportSummary,
)
from services.trainer.instances import InstanceRecord

#: Events (typed or raw rows) in one batch of an IngestEvents stream.
MAX_BATCH_EVENTS = 10_000


def batch_frames(batch: pb.IngestEventsRequest) -> list[pl.DataFrame]:
    """The raw rows of one IngestEvents batch, for the same validation as ImportDataset.

    Typed events become rows with epoch-millisecond timestamps; the `rows`
    block (an Arrow IPC stream of rows as read from a file) is passed on as it
    is, so string timestamps, JSON attributes and absent fields meet exactly
    the checks and quarantine of a server-side import.
    """
    if len(batch.events) > MAX_BATCH_EVENTS:
        raise InvalidArgument("events", f"at most {MAX_BATCH_EVENTS:,} events per batch")
    frames = [events_to_frame(batch.events)] if batch.events else []
    if batch.rows:
        try:
            raw = pl.read_ipc_stream(io.BytesIO(batch.rows))
        except Exception:  # any decoding failure is the client's input
            raise InvalidArgument("rows", "is not an Arrow IPC stream") from None
        if raw.height > MAX_BATCH_EVENTS:
            raise InvalidArgument("rows", f"at most {MAX_BATCH_EVENTS:,} rows per batch")
        frames.append(raw)
    return frames


_POLICY = {
    pb.DUPLICATE_POLICY_UNSPECIFIED: DuplicatePolicy.EVENT_ID,
    pb.DUPLICATE_POLICY_EVENT_ID: DuplicatePolicy.EVENT_ID,
    pb.DUPLICATE_POLICY_EXACT_ROW: DuplicatePolicy.EXACT_ROW,
    pb.DUPLICATE_POLICY_NONE: DuplicatePolicy.NONE,
}
# The inverse of _POLICY (UNSPECIFIED is only ever read, never written).
_POLICY_BACK = {v: k for k, v in _POLICY.items() if k != pb.DUPLICATE_POLICY_UNSPECIFIED}


def duplicate_policy(value: int) -> DuplicatePolicy:
    """The request's duplicate policy (unset = EVENT_ID); unknown numbers are invalid."""
    if value not in _POLICY:
        raise InvalidArgument("duplicates", f"unknown duplicate policy {value}")
    return _POLICY[value]  # type: ignore[index]


def import_progress_event(stage: str, fraction: float, message: str) -> pb.ImportDatasetEvent:
    """One progress message of the ImportDatasetWithProgress stream."""
    return pb.ImportDatasetEvent(progress=progress_to_pb(stage, fraction, message))


def import_summary_event(s: IngestSummary) -> pb.ImportDatasetEvent:
    """The final message of the ImportDatasetWithProgress stream."""
    return pb.ImportDatasetEvent(summary=ingest_summary(s))


def ingest_summary(s: IngestSummary) -> pb.IngestSummary:
    """Domain ingest summary → protobuf."""
    return pb.IngestSummary(
        dataset=s.dataset,
        rows_read=s.rows_read,
        accepted=s.accepted,
        rejected=s.rejected,
        duplicates=s.duplicates,
        written=s.written,
        quarantine_path=s.quarantine_path,
        reject_reasons=[
            pb.RejectReasonCount(reason=r, rows=n) for r, n in s.reject_reasons.most_common()
        ],
        duplicate_policy=_POLICY_BACK[s.duplicate_policy],
    )


def profile_summary(s: ProfileImportSummary) -> pb.ImportProfilesResponse:
    """Domain profile-import summary → protobuf."""
    return pb.ImportProfilesResponse(
        rows_read=s.rows_read, profiles=s.profiles, attributes=s.attributes, rejected=s.rejected
    )


def dataset(info: DatasetInfo) -> pb.Dataset:
    """Domain dataset → protobuf."""
    return pb.Dataset(
        name=info.name,
        rows=info.rows,
        parts=info.parts,
        created_at=to_timestamp(info.created_at),
        updated_at=to_timestamp(info.updated_at),
    )


def dataset_health(h: DatasetHealth) -> pb.DatasetHealth:
    """Domain verify/repair result → protobuf."""
    return pb.DatasetHealth(
        dataset=h.dataset,
        parts_checked=h.parts_checked,
        damaged=[
            pb.DamagedPart(part=p.path, shard=p.shard, rows=p.rows, problem=p.problem)
            for p in h.damaged
        ],
        rows_lost=h.rows_lost,
        repaired=h.repaired,
    )


def description(d: DatasetDescription) -> pb.DatasetDescription:
    """Domain dataset description → protobuf."""
    return pb.DatasetDescription(
        dataset=dataset(d.info),
        profiles=d.profiles,
        min_timestamp=to_timestamp(d.min_timestamp),
        max_timestamp=to_timestamp(d.max_timestamp),
        event_types=[pb.EventTypeCount(event_type=t, rows=n) for t, n in d.event_types],
        completeness=[pb.FieldCompleteness(field=f, percent=p) for f, p in d.completeness],
        quarantined_rows=d.quarantined_rows,
    )


def instance(record: InstanceRecord) -> pb.Instance:
    """Stored instance → protobuf, with registry state."""
    msg = instance_to_proto(record.config, record.dataset)
    msg.current_version = record.current_version
    msg.created_at.CopyFrom(to_timestamp(record.created_at))
    msg.updated_at.CopyFrom(to_timestamp(record.updated_at))
    return msg


# Fields an update may change; the name selects the instance, the rest is output only.
_UPDATABLE = tuple(
    f.name
    for f in pb.Instance.DESCRIPTOR.fields
    if f.name not in ("name", "current_version", "created_at", "updated_at")
)


def merge_instance(current: pb.Instance, changes: pb.Instance, paths: list[str]) -> pb.Instance:
    """The stored instance with the top-level fields named in `paths` taken from `changes`.

    An empty mask means every updatable field.
    """
    merged = pb.Instance()
    merged.CopyFrom(current)
    tops = {p.split(".")[0] for p in paths} or set(_UPDATABLE)
    for top in sorted(tops):
        if top not in _UPDATABLE:
            raise InvalidArgument("update_mask", f"cannot update {top!r}")
        field = pb.Instance.DESCRIPTOR.fields_by_name[top]
        merged.ClearField(top)  # type: ignore[arg-type]
        if field.is_repeated:
            getattr(merged, top).extend(getattr(changes, top))
        elif field.message_type is not None:
            if changes.HasField(top):  # type: ignore[arg-type]
                getattr(merged, top).CopyFrom(getattr(changes, top))
        else:
            setattr(merged, top, getattr(changes, top))
    return merged
