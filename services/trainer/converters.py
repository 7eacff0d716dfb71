"""Protobuf ↔ domain conversion for the trainer (ingestion, datasets, instances)."""

from __future__ import annotations

from foresight import instance as inst
from foresight.api.trainer.v1 import trainer_pb2 as pb
from foresight.conditions import ConditionGroup
from foresight.convert import conditions_from_proto, conditions_to_proto, to_timestamp
from foresight.errors import InvalidArgument
from foresight.instance import CustomEvent, Goal, InstanceConfig, Population
from services.trainer.ingest import (
    DatasetDescription,
    DatasetInfo,
    IngestSummary,
    ProfileImportSummary,
)
from services.trainer.instances import InstanceRecord

_TYPES = {
    pb.INSTANCE_TYPE_CHURN: inst.InstanceType.CHURN,
    pb.INSTANCE_TYPE_CONVERSION: inst.InstanceType.CONVERSION,
    pb.INSTANCE_TYPE_CUSTOM: inst.InstanceType.CUSTOM,
}
_TYPES_BACK = {v: k for k, v in _TYPES.items()}
_OCCURRENCE = {
    pb.OCCURRENCE_WILL_OCCUR: inst.Occurrence.WILL_OCCUR,
    pb.OCCURRENCE_WILL_NOT_OCCUR: inst.Occurrence.WILL_NOT_OCCUR,
}
_OCCURRENCE_BACK = {v: k for k, v in _OCCURRENCE.items()}


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


def instance_config(msg: pb.Instance, path: str = "instance") -> tuple[InstanceConfig, str]:
    """Protobuf instance → (validated domain config, dataset name)."""
    if msg.type not in _TYPES:
        raise InvalidArgument(f"{path}.type", "choose CHURN, CONVERSION or CUSTOM")
    kind = _TYPES[msg.type]
    goal_conditions = conditions_from_proto(
        msg.goal.conditions, f"{path}.goal.conditions", msg.goal.HasField("conditions")
    )
    if msg.goal.occurrence in _OCCURRENCE:
        occurrence = _OCCURRENCE[msg.goal.occurrence]
    else:  # follows the type when omitted
        occurrence = (
            inst.Occurrence.WILL_NOT_OCCUR
            if kind is inst.InstanceType.CHURN
            else inst.Occurrence.WILL_OCCUR
        )
    config = InstanceConfig(
        name=msg.name,
        description=msg.description,
        type=kind,
        goal=Goal(
            conditions=goal_conditions or ConditionGroup(),
            occurrence=occurrence,
            window_days=msg.goal.window_days or 30,
        ),
        population=Population(
            conditions=conditions_from_proto(
                msg.population.conditions,
                f"{path}.population.conditions",
                msg.population.HasField("conditions"),
            ),
            lookback_days=msg.population.lookback_days or 45,
        ),
        custom_events=tuple(
            CustomEvent(
                name=e.name,
                conditions=conditions_from_proto(
                    e.conditions, f"{path}.custom_events[{i}].conditions", True
                )
                or ConditionGroup(),
            )
            for i, e in enumerate(msg.custom_events)
        ),
        profile_attributes=tuple(msg.profile_attributes),
        exclusions=conditions_from_proto(
            msg.exclusions, f"{path}.exclusions", msg.HasField("exclusions")
        ),
        scoring_schedule=msg.scoring_schedule or None,
        min_positives=msg.min_positives or 500,
        min_negatives=msg.min_negatives or 500,
    )
    return config, msg.dataset


def instance_to_proto(config: InstanceConfig, dataset_name: str) -> pb.Instance:
    """Domain config → protobuf instance (output-only fields left unset)."""
    return pb.Instance(
        name=config.name,
        description=config.description,
        type=_TYPES_BACK[config.type],
        goal=pb.Goal(
            conditions=conditions_to_proto(config.goal.conditions),
            occurrence=_OCCURRENCE_BACK[config.goal.occurrence],
            window_days=config.goal.window_days,
        ),
        population=pb.Population(
            conditions=conditions_to_proto(config.population.conditions),
            lookback_days=config.population.lookback_days,
        ),
        custom_events=[
            pb.CustomEvent(name=e.name, conditions=conditions_to_proto(e.conditions))
            for e in config.custom_events
        ],
        profile_attributes=list(config.profile_attributes),
        exclusions=conditions_to_proto(config.exclusions),
        scoring_schedule=config.scoring_schedule or "",
        dataset=dataset_name,
        min_positives=config.min_positives,
        min_negatives=config.min_negatives,
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
