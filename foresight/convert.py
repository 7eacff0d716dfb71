"""Protobuf helpers shared by the services' converters modules.

Only converters modules (and the client/CLI) import this; domain code never does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import overload

import polars as pl
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from foresight import instance as inst
from foresight import limits
from foresight.api.common.v1 import common_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.conditions import (
    Condition,
    ConditionGroup,
    GroupMode,
    Operator,
    parse,
    validate_group,
)
from foresight.errors import InvalidArgument
from foresight.instance import CustomEvent, Goal, InstanceConfig, Population
from foresight.storage.lifecycle import Status


def progress_to_pb(stage: str, fraction: float, message: str) -> common_pb2.Progress:
    """One progress report of a long job as the shared `Progress` message."""
    return common_pb2.Progress(stage=stage, fraction=float(fraction), message=message)


def status_to_pb(status: Status | str) -> common_pb2.JobStatus.ValueType:
    """The proto word for a job or version status (the one converter both ways use)."""
    return common_pb2.JobStatus.Value(f"JOB_STATUS_{Status(status).value}")


def status_from_pb(value: common_pb2.JobStatus.ValueType) -> Status:
    """The domain status of a proto JobStatus (UNSPECIFIED is not a status)."""
    if value == common_pb2.JOB_STATUS_UNSPECIFIED or value not in common_pb2.JobStatus.values():
        raise InvalidArgument("status", f"unknown job status {value}")
    return Status(common_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_"))


@overload
def to_timestamp(value: datetime) -> Timestamp: ...
@overload
def to_timestamp(value: None) -> None: ...
@overload
def to_timestamp(value: datetime | None) -> Timestamp | None: ...
def to_timestamp(value: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp from an aware datetime (None stays None)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def from_timestamp(ts: Timestamp, present: bool = True) -> datetime | None:
    """An aware UTC datetime from a Timestamp field, None when unset."""
    if not present:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def events_to_frame(events: Sequence[common_pb2.Event]) -> pl.DataFrame:
    """Raw event rows for `foresight.events.validation.validate`.

    Unset required fields become nulls so validation rejects them with a reason,
    exactly as for rows read from files; timestamps travel as epoch milliseconds.
    """
    columns: dict[str, list[object]] = {
        "event_id": [],
        "profile_id": [],
        "timestamp": [],
        "event_type": [],
        "channel": [],
        "value": [],
        "quantity": [],
        "product_sku": [],
        "product_category": [],
        "page_name": [],
        "campaign_id": [],
        "attributes": [],
    }
    for e in events:
        columns["event_id"].append(e.event_id or None)
        columns["profile_id"].append(e.profile_id or None)
        columns["timestamp"].append(_millis(e.timestamp) if e.HasField("timestamp") else None)
        columns["event_type"].append(e.event_type or None)
        columns["channel"].append(e.channel or None)
        columns["value"].append(e.value if e.HasField("value") else None)
        columns["quantity"].append(e.quantity if e.HasField("quantity") else None)
        columns["product_sku"].append(e.product_sku or None)
        columns["product_category"].append(e.product_category or None)
        columns["page_name"].append(e.page_name or None)
        columns["campaign_id"].append(e.campaign_id or None)
        columns["attributes"].append(_attributes_json(e) if e.HasField("attributes") else None)
    schema = {
        "timestamp": pl.Int64,
        "value": pl.Float64,
        "quantity": pl.Int64,
    }
    # Series first: a frame from a dict and a schema costs twice as much for a few rows.
    return pl.DataFrame(
        [pl.Series(k, v, dtype=schema.get(k, pl.String), strict=False) for k, v in columns.items()]
    )


def _attributes_json(event: common_pb2.Event) -> str:
    """The attributes as JSON text; NaN/Infinity become bare tokens validation rejects."""
    try:
        return json.dumps(json_format.MessageToDict(event.attributes))
    except ValueError:  # a non-finite number: JSON cannot hold it
        return json.dumps(dict(event.attributes.items()), allow_nan=True, default=str)


def _millis(ts: Timestamp) -> int:
    """Epoch milliseconds of any Timestamp, even one outside protobuf's range.

    Clamped to Int64 so validation rejects it as out of range, row by row.
    """
    millis = ts.seconds * 1000 + ts.nanos // 1_000_000
    return max(-(2**63), min(2**63 - 1, millis))


def event_from_row(row: dict[str, object]) -> common_pb2.Event:
    """A protobuf Event from a stored event row (the client and tests use it)."""
    ev = common_pb2.Event(
        event_id=str(row.get("event_id") or ""),
        profile_id=str(row["profile_id"]),
        event_type=str(row["event_type"]),
        channel=str(row.get("channel") or ""),
        product_sku=str(row.get("product_sku") or ""),
        product_category=str(row.get("product_category") or ""),
        page_name=str(row.get("page_name") or ""),
        campaign_id=str(row.get("campaign_id") or ""),
    )
    ts = row["timestamp"]
    if isinstance(ts, datetime):
        ev.timestamp.FromDatetime(ts if ts.tzinfo else ts.replace(tzinfo=UTC))
    if row.get("value") is not None:
        ev.value = float(row["value"])  # type: ignore[arg-type]
    if row.get("quantity") is not None:
        ev.quantity = int(row["quantity"])  # type: ignore[call-overload]
    attrs = row.get("attributes")
    if attrs:
        ev.attributes.update(json.loads(str(attrs)))
    return ev


# ---------------------------------------------------------------- conditions

_OPS = {
    common_pb2.OPERATOR_EQ: Operator.EQ,
    common_pb2.OPERATOR_NE: Operator.NE,
    common_pb2.OPERATOR_LT: Operator.LT,
    common_pb2.OPERATOR_LE: Operator.LE,
    common_pb2.OPERATOR_GT: Operator.GT,
    common_pb2.OPERATOR_GE: Operator.GE,
    common_pb2.OPERATOR_IN: Operator.IN,
    common_pb2.OPERATOR_STARTS_WITH: Operator.STARTS_WITH,
    common_pb2.OPERATOR_EXISTS: Operator.EXISTS,
}
_OPS_BACK = {v: k for k, v in _OPS.items()}


def _literal_from(lit: common_pb2.Literal) -> str | float | int | bool:
    kind = lit.WhichOneof("kind")
    if kind == "number_value":
        n = lit.number_value
        return int(n) if n.is_integer() else n
    if kind == "bool_value":
        return lit.bool_value
    return lit.string_value


def _literal_to(value: object) -> common_pb2.Literal:
    if isinstance(value, bool):
        return common_pb2.Literal(bool_value=value)
    if isinstance(value, int | float):
        return common_pb2.Literal(number_value=float(value))
    return common_pb2.Literal(string_value=str(value))


def _check_proto_size(group: common_pb2.ConditionGroup, path: str) -> None:
    """Refuse an oversized tree before converting it (a 100,000-item ANY_OF costs nothing)."""
    count, stack = 0, [(group, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.CONDITION_DEPTH_MAX:
            raise InvalidArgument(
                path, f"groups nest at most {limits.CONDITION_DEPTH_MAX} deep (limit)"
            )
        count += len(node.items)
        if count > limits.CONDITION_ITEMS_MAX:
            raise InvalidArgument(
                path, f"at most {limits.CONDITION_ITEMS_MAX} conditions and groups (limit)"
            )
        stack.extend((i.group, depth + 1) for i in node.items if i.WhichOneof("item") == "group")


def group_from_proto(group: common_pb2.ConditionGroup, path: str) -> ConditionGroup:
    """Structured protobuf conditions → domain group (validated)."""
    _check_proto_size(group, path)
    out = _group_from_proto(group, path)
    validate_group(out, path)
    return out


def _group_from_proto(group: common_pb2.ConditionGroup, path: str) -> ConditionGroup:
    items: list[Condition | ConditionGroup] = []
    for i, item in enumerate(group.items):
        where = f"{path}.items[{i}]"
        if item.WhichOneof("item") == "group":
            items.append(_group_from_proto(item.group, where))
            continue
        c = item.condition
        if c.op not in _OPS:
            raise InvalidArgument(f"{where}.op", "operator is required")
        op = _OPS[c.op]
        values = [_literal_from(v) for v in c.values]
        value: object
        if op is Operator.IN:
            value = tuple(values)
        elif op is Operator.EXISTS:
            value = None
        else:
            if len(values) != 1:
                raise InvalidArgument(f"{where}.values", f"{op.value!r} takes exactly one value")
            value = values[0]
        items.append(Condition(c.field, op, value))
    mode = GroupMode.ANY_OF if group.mode == common_pb2.GROUP_MODE_ANY_OF else GroupMode.ALL_OF
    return ConditionGroup(mode, tuple(items))


def group_to_proto(group: ConditionGroup) -> common_pb2.ConditionGroup:
    """Domain group → structured protobuf conditions."""
    out = common_pb2.ConditionGroup(
        mode=common_pb2.GROUP_MODE_ANY_OF
        if group.mode is GroupMode.ANY_OF
        else common_pb2.GROUP_MODE_ALL_OF
    )
    for item in group.items:
        if isinstance(item, ConditionGroup):
            out.items.add(group=group_to_proto(item))
            continue
        values = (
            item.value
            if isinstance(item.value, tuple)
            else (() if item.value is None else (item.value,))
        )
        out.items.add(
            condition=common_pb2.Condition(
                field=item.field, op=_OPS_BACK[item.op], values=[_literal_to(v) for v in values]
            )
        )
    return out


def conditions_from_proto(
    conditions: common_pb2.Conditions, path: str, present: bool = True
) -> ConditionGroup | None:
    """Either form (structured or text) → domain group; None when unset."""
    if not present:
        return None
    form = conditions.WhichOneof("form")
    if form == "text":
        return parse(conditions.text, field=path)
    if form == "structured":
        return group_from_proto(conditions.structured, path)
    return None


def conditions_to_proto(group: ConditionGroup | None) -> common_pb2.Conditions | None:
    """Domain group → structured Conditions (None stays None)."""
    return None if group is None else common_pb2.Conditions(structured=group_to_proto(group))


# ---------------------------------------------------------------- instances

_TYPES = {
    trainer_pb2.INSTANCE_TYPE_CHURN: inst.InstanceType.CHURN,
    trainer_pb2.INSTANCE_TYPE_CONVERSION: inst.InstanceType.CONVERSION,
    trainer_pb2.INSTANCE_TYPE_CUSTOM: inst.InstanceType.CUSTOM,
}
_TYPES_BACK = {v: k for k, v in _TYPES.items()}
_OCCURRENCE = {
    trainer_pb2.OCCURRENCE_WILL_OCCUR: inst.Occurrence.WILL_OCCUR,
    trainer_pb2.OCCURRENCE_WILL_NOT_OCCUR: inst.Occurrence.WILL_NOT_OCCUR,
}
_OCCURRENCE_BACK = {v: k for k, v in _OCCURRENCE.items()}


def instance_config(msg: trainer_pb2.Instance) -> tuple[InstanceConfig, str]:
    """Protobuf instance → (validated domain config, dataset name).

    Error fields are paths inside the instance (`goal.window_days`), like the domain's.
    """
    if msg.type not in _TYPES:
        raise InvalidArgument("type", "choose CHURN, CONVERSION or CUSTOM")
    kind = _TYPES[msg.type]
    goal_conditions = conditions_from_proto(
        msg.goal.conditions, "goal.conditions", msg.goal.HasField("conditions")
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
            window_days=msg.goal.window_days,  # 0 (unset) is refused by validation
        ),
        population=Population(
            conditions=conditions_from_proto(
                msg.population.conditions,
                "population.conditions",
                msg.population.HasField("conditions"),
            ),
            lookback_days=msg.population.lookback_days or None,
        ),
        custom_events=tuple(
            CustomEvent(
                name=e.name,
                conditions=conditions_from_proto(
                    e.conditions, f"custom_events[{i}].conditions", True
                )
                or ConditionGroup(),
            )
            for i, e in enumerate(msg.custom_events)
        ),
        profile_attributes=tuple(msg.profile_attributes),
        exclusions=conditions_from_proto(msg.exclusions, "exclusions", msg.HasField("exclusions")),
        scoring_schedule=msg.scoring_schedule or None,
        min_positives=msg.min_positives or 500,
        min_negatives=msg.min_negatives or 500,
        max_cutoffs=msg.max_cutoffs or None,
        cutoff_step_days=msg.cutoff_step_days or None,
    )
    return config, msg.dataset


def instance_to_proto(config: InstanceConfig, dataset_name: str) -> trainer_pb2.Instance:
    """Domain config → protobuf instance (output-only fields left unset)."""
    return trainer_pb2.Instance(
        name=config.name,
        description=config.description,
        type=_TYPES_BACK[config.type],
        goal=trainer_pb2.Goal(
            conditions=conditions_to_proto(config.goal.conditions),
            occurrence=_OCCURRENCE_BACK[config.goal.occurrence],
            window_days=config.goal.window_days,
        ),
        population=trainer_pb2.Population(
            conditions=conditions_to_proto(config.population.conditions),
            lookback_days=config.population.lookback_days or 0,
        ),
        custom_events=[
            trainer_pb2.CustomEvent(name=e.name, conditions=conditions_to_proto(e.conditions))
            for e in config.custom_events
        ],
        profile_attributes=list(config.profile_attributes),
        exclusions=conditions_to_proto(config.exclusions),
        scoring_schedule=config.scoring_schedule or "",
        dataset=dataset_name,
        min_positives=config.min_positives,
        min_negatives=config.min_negatives,
        max_cutoffs=config.max_cutoffs or 0,
        cutoff_step_days=config.cutoff_step_days or 0,
    )
