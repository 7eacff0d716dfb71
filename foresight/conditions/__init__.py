"""The condition language: structured model, text parser and Polars compiler."""

from foresight.conditions.compile import condition_to_polars, to_polars
from foresight.conditions.model import (
    Condition,
    ConditionGroup,
    GroupMode,
    Operator,
    group_from_dict,
    group_to_dict,
    validate_group,
)
from foresight.conditions.parser import parse, parse_optional, to_text

__all__ = [
    "Condition",
    "ConditionGroup",
    "GroupMode",
    "Operator",
    "condition_to_polars",
    "group_from_dict",
    "group_to_dict",
    "parse",
    "parse_optional",
    "to_polars",
    "to_text",
    "validate_group",
]
