"""Structured form of the condition language: conditions on event fields.

A goal, an eligible population, a custom event and a prediction exclusion are
all a `ConditionGroup`: conditions on event fields combined with ALL_OF /
ANY_OF, groups nesting freely. The text form (`parser.py`) and the protobuf
form (converted in the services) both map onto these dataclasses, which are
validated here once for every caller.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from foresight import limits
from foresight.errors import InvalidArgument

__all__ = [
    "ATTRIBUTE_PREFIX",
    "NUMERIC_FIELDS",
    "STRING_FIELDS",
    "Condition",
    "ConditionGroup",
    "GroupMode",
    "Item",
    "Operator",
    "Scalar",
    "Value",
    "attribute_name",
    "check_size",
    "condition_problem",
    "group_from_dict",
    "group_to_dict",
    "is_known_field",
    "validate_group",
]


class Operator(Enum):
    """Comparison operators; the value is the canonical text spelling."""

    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    STARTS_WITH = "starts with"
    EXISTS = "exists"


class GroupMode(Enum):
    """How the items of a group combine."""

    ALL_OF = "ALL_OF"
    ANY_OF = "ANY_OF"


Scalar = str | float | int | bool
Value = Scalar | tuple[Scalar, ...] | None

# Core event columns a condition may address. `timestamp` is deliberately not
# here: time is what cutoffs and windows are for, and a time literal in a goal
# would silently break rolling cutoffs.
STRING_FIELDS: frozenset[str] = frozenset(
    {"event_type", "channel", "product_category", "product_sku", "page_name", "campaign_id"}
)
NUMERIC_FIELDS: frozenset[str] = frozenset({"value", "quantity"})
ATTRIBUTE_PREFIX = "attributes."
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
_ORDER_OPS = frozenset({Operator.LT, Operator.LE, Operator.GT, Operator.GE})


@dataclass(frozen=True)
class Condition:
    """One comparison of an event field with a literal, e.g. `value > 100`."""

    field: str
    op: Operator
    value: Value = None

    def __post_init__(self) -> None:
        # Lists arrive from JSON/YAML/protobuf; tuples keep the dataclass hashable.
        if isinstance(self.value, list):
            object.__setattr__(self, "value", tuple(self.value))


@dataclass(frozen=True)
class ConditionGroup:
    """Items combined with ALL_OF / ANY_OF; an empty group matches every event.

    A group with fewer than two items means the same under either mode, so its
    mode is normalised to ALL_OF: that keeps `parse(to_text(g)) == g` exact.
    """

    mode: GroupMode = GroupMode.ALL_OF
    items: tuple[Item, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.items, tuple):
            object.__setattr__(self, "items", tuple(self.items))
        if len(self.items) < 2 and self.mode is not GroupMode.ALL_OF:
            object.__setattr__(self, "mode", GroupMode.ALL_OF)

    @property
    def is_empty(self) -> bool:
        """True when the group has no items (it matches every event)."""
        return not self.items

    def conditions(self) -> list[Condition]:
        """All leaf conditions, depth first."""
        out: list[Condition] = []
        for item in self.items:
            if isinstance(item, ConditionGroup):
                out.extend(item.conditions())
            else:
                out.append(item)
        return out


Item = Condition | ConditionGroup


def attribute_name(field: str) -> str | None:
    """The NAME of an `attributes.NAME` field, or None for a core field."""
    if field.startswith(ATTRIBUTE_PREFIX):
        return field[len(ATTRIBUTE_PREFIX) :]
    return None


def is_known_field(field: str) -> bool:
    """True for a core event field or a well-formed `attributes.NAME`."""
    if field in STRING_FIELDS or field in NUMERIC_FIELDS:
        return True
    name = attribute_name(field)
    return name is not None and _ATTRIBUTE_NAME.match(name) is not None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_literal(v: object) -> bool:
    return isinstance(v, (str, int, float, bool))


def condition_problem(cond: Condition) -> str | None:
    """Why `cond` is invalid, or None when it is fine (used by the parser too)."""
    field, op, value = cond.field, cond.op, cond.value
    if not isinstance(op, Operator):
        return f"unknown operator {op!r}"
    if not is_known_field(field):
        allowed = ", ".join(sorted(STRING_FIELDS | NUMERIC_FIELDS))
        return f"unknown field '{field}' (allowed: {allowed}, attributes.NAME)"
    is_attr = attribute_name(field) is not None
    is_numeric = field in NUMERIC_FIELDS
    if op is Operator.EXISTS:
        return None if value is None else "'exists' takes no value"
    if value is None:
        return f"'{op.value}' needs a value"
    if op is Operator.IN:
        if not isinstance(value, tuple) or not value:
            return "'in' needs a non-empty list of values"
        members = value
    else:
        if isinstance(value, tuple):
            return f"'{op.value}' takes one value, not a list"
        members = (value,)
    for v in members:
        if not _is_literal(v):
            return f"unsupported value {v!r}"
        if isinstance(v, float) and not math.isfinite(v):
            return f"value {v!r} is not a finite number"
    if op is Operator.IN and len({type(v) is str for v in members}) > 1:
        return "'in' values must be all strings or all numbers"
    first = members[0]
    if op is Operator.STARTS_WITH:
        if is_numeric:
            return f"'starts with' needs a text field, but '{field}' is numeric"
        return None if isinstance(first, str) else "'starts with' needs a quoted string"
    if is_numeric:
        if not _is_number(first):
            return f"'{field}' is numeric, so it compares with a number, not {first!r}"
        return None
    if not is_attr:
        # Core text fields: ordering or numbers would compare text lexically,
        # which is never what a marketer means.
        if op in _ORDER_OPS:
            return f"'{op.value}' needs a numeric field, but '{field}' is text"
        if not isinstance(first, str):
            return f"'{field}' is text, so it compares with a quoted string, not {first!r}"
        return None
    # attributes.NAME are untyped: the literal decides how values compare.
    if op in _ORDER_OPS and not _is_number(first):
        return f"'{op.value}' needs a number"
    return None


def check_size(group: ConditionGroup, path: str = "conditions") -> None:
    """Refuse a tree over the limits on items, depth, values and literal length.

    Walks iteratively, so a tree of any depth is measured without recursion.
    """
    items = values = 0
    stack: list[tuple[Item, int]] = [(group, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, ConditionGroup):
            if depth > limits.CONDITION_DEPTH_MAX:
                raise InvalidArgument(
                    path, f"groups nest at most {limits.CONDITION_DEPTH_MAX} deep (limit)"
                )
            items += len(item.items)
            if items > limits.CONDITION_ITEMS_MAX:
                raise InvalidArgument(
                    path, f"at most {limits.CONDITION_ITEMS_MAX} conditions and groups (limit)"
                )
            stack.extend((child, depth + 1) for child in item.items)
            continue
        members = item.value if isinstance(item.value, tuple) else (item.value,)
        values += len(members)
        if values > limits.CONDITION_VALUES_MAX:
            raise InvalidArgument(path, f"at most {limits.CONDITION_VALUES_MAX} values (limit)")
        for v in members:
            if isinstance(v, str) and len(v) > limits.CONDITION_LITERAL_MAX:
                raise InvalidArgument(
                    path, f"a value has at most {limits.CONDITION_LITERAL_MAX} characters (limit)"
                )


def validate_group(group: ConditionGroup, path: str = "conditions") -> None:
    """Raise InvalidArgument (field = path to the item) for the first bad item.

    Nested empty groups are rejected: they would match everything inside an
    ANY_OF, which is surely a mistake. The top-level group may be empty.
    Trees over the size limits (`foresight.limits`) are refused first.
    """
    if not isinstance(group, ConditionGroup):
        raise InvalidArgument(path, "expected a condition group")
    check_size(group, path)
    _validate_items(group, path)


def _validate_items(group: ConditionGroup, path: str) -> None:
    for i, item in enumerate(group.items):
        item_path = f"{path}.items[{i}]"
        if isinstance(item, ConditionGroup):
            if item.is_empty:
                raise InvalidArgument(item_path, "a nested group needs at least one condition")
            _validate_items(item, item_path)
        elif isinstance(item, Condition):
            problem = condition_problem(item)
            if problem is not None:
                raise InvalidArgument(item_path, problem)
        else:
            raise InvalidArgument(item_path, f"expected a condition or group, got {item!r}")


# --- JSON-able dict form (stored in the registry) -------------------------


def group_to_dict(group: ConditionGroup) -> dict[str, Any]:
    """JSON-able form: {"mode": ..., "items": [{"field", "op", "value"} | group]}."""
    items: list[dict[str, Any]] = []
    for item in group.items:
        if isinstance(item, ConditionGroup):
            items.append(group_to_dict(item))
        else:
            value: Any = list(item.value) if isinstance(item.value, tuple) else item.value
            items.append({"field": item.field, "op": item.op.value, "value": value})
    return {"mode": group.mode.value, "items": items}


def _operator_from(text: object, path: str) -> Operator:
    for op in Operator:
        if text == op.value or text == op.name:
            return op
    raise InvalidArgument(path, f"unknown operator {text!r}")


def group_from_dict(data: Any, path: str = "conditions") -> ConditionGroup:
    """Inverse of `group_to_dict`; raises InvalidArgument naming the bad path.

    Only the shape is checked here; call `validate_group` for the semantics.
    """
    if not isinstance(data, dict):
        raise InvalidArgument(path, "expected a mapping with 'mode' and 'items'")
    mode_text = data.get("mode", GroupMode.ALL_OF.value)
    try:
        mode = GroupMode(mode_text)
    except ValueError:
        raise InvalidArgument(
            f"{path}.mode", f"expected ALL_OF or ANY_OF, got {mode_text!r}"
        ) from None
    raw_items = data.get("items", [])
    if not isinstance(raw_items, list):
        raise InvalidArgument(f"{path}.items", "expected a list")
    items: list[Item] = []
    for i, raw in enumerate(raw_items):
        item_path = f"{path}.items[{i}]"
        if isinstance(raw, dict) and "items" in raw:
            items.append(group_from_dict(raw, item_path))
        elif isinstance(raw, dict) and "field" in raw and "op" in raw:
            value = raw.get("value")
            if isinstance(value, list):
                value = tuple(value)
            items.append(
                Condition(str(raw["field"]), _operator_from(raw["op"], f"{item_path}.op"), value)
            )
        else:
            raise InvalidArgument(
                item_path, "expected a condition {field, op, value} or a group {mode, items}"
            )
    return ConditionGroup(mode, tuple(items))
