"""Compile a `ConditionGroup` into a Polars boolean expression over events.

The expression evaluates row-wise on the events frame and never yields null:
a missing field satisfies no comparison except `!=` (an event without a
channel is "not web"), so filters never silently drop or keep rows through
three-valued logic.
"""

from __future__ import annotations

import polars as pl

from foresight.conditions.model import (
    Condition,
    ConditionGroup,
    GroupMode,
    Operator,
    Scalar,
    attribute_name,
)

__all__ = ["condition_to_polars", "to_polars"]


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _attribute_expr(name: str) -> pl.Expr:
    # Bracket notation so names with '-' still address one key.
    return pl.col("attributes").str.json_path_match(f"$['{name}']")


def _literal_for_text(v: Scalar) -> str:
    # JSON booleans come back from json_path_match as the text true/false.
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def condition_to_polars(cond: Condition) -> pl.Expr:
    """One condition as a non-null boolean expression."""
    name = attribute_name(cond.field)
    op, value = cond.op, cond.value
    if name is None:
        column = pl.col(cond.field)
    else:
        raw = _attribute_expr(name)
        first = value[0] if isinstance(value, tuple) and value else value
        # Attributes are untyped JSON: a number literal compares numerically
        # (so "10" and 10 and 10.0 are all equal), anything else as text.
        if _is_number(first):
            column = raw.cast(pl.Float64, strict=False)
        else:
            column = raw
            if isinstance(value, tuple):
                value = tuple(_literal_for_text(v) for v in value)
            elif value is not None:
                value = _literal_for_text(value)
    expr: pl.Expr
    if op is Operator.EXISTS:
        return column.is_not_null()
    if op is Operator.IN:
        members = list(value) if isinstance(value, tuple) else [value]
        # Polars 2 will not coerce is_in operands, so type both sides explicitly.
        if members and all(_is_number(m) for m in members):
            numbers = pl.Series(
                [float(m) for m in members if isinstance(m, (int, float))], dtype=pl.Float64
            )
            expr = column.cast(pl.Float64).is_in(numbers.implode())
        else:
            texts = pl.Series([str(m) for m in members], dtype=pl.String)
            expr = column.is_in(texts.implode())
    elif op is Operator.STARTS_WITH:
        expr = column.str.starts_with(str(value))
    else:
        literal = pl.lit(value)
        if op is Operator.EQ:
            expr = column == literal
        elif op is Operator.NE:
            return (column != literal).fill_null(True)
        elif op is Operator.LT:
            expr = column < literal
        elif op is Operator.LE:
            expr = column <= literal
        elif op is Operator.GT:
            expr = column > literal
        else:
            expr = column >= literal
    return expr.fill_null(False)


def to_polars(group: ConditionGroup | None) -> pl.Expr:
    """A boolean expression true for events matching `group`.

    None and the empty group match every event.
    """
    if group is None or group.is_empty:
        return pl.lit(True)
    parts = [
        to_polars(item) if isinstance(item, ConditionGroup) else condition_to_polars(item)
        for item in group.items
    ]
    if len(parts) == 1:
        return parts[0]
    if group.mode is GroupMode.ANY_OF:
        return pl.any_horizontal(parts)
    return pl.all_horizontal(parts)
