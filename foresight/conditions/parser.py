"""Text form of the condition language, parsed with lark (never eval).

    event_type = "commerce.purchases" and value > 100
    (channel in ("web", "mobile") or page_name starts with "checkout") and attributes.device exists

`and` binds tighter than `or`; parentheses make a nested group. Strings are
JSON strings (double quotes, backslash escapes); numbers are JSON-like
(`-12`, `3.5`, `1e-05`); `true` / `false` compare with JSON booleans in
`attributes`. Errors name the line and column.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import NoReturn

from lark import Lark, Token, Tree
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from foresight import limits
from foresight.conditions.model import (
    Condition,
    ConditionGroup,
    GroupMode,
    Item,
    Operator,
    Scalar,
    check_size,
    condition_problem,
)
from foresight.errors import InvalidArgument

__all__ = ["parse", "parse_optional", "to_text"]

_GRAMMAR = r"""
start: or_expr?

?or_expr: and_expr (_OR and_expr)*      -> any_of
?and_expr: atom (_AND atom)*            -> all_of
?atom: comparison
     | _LPAR or_expr _RPAR              -> paren

comparison: FIELD CMP_OP literal         -> compare
          | FIELD _IN _LPAR literal (_COMMA literal)* _RPAR -> in_list
          | FIELD _STARTS_WITH literal   -> starts_with
          | FIELD _EXISTS                -> exists

?literal: STRING | NUMBER | TRUE | FALSE

_OR.2: /or\b/i
_AND.2: /and\b/i
_IN.2: /in\b/i
_STARTS_WITH.2: /starts\s+with\b/i
_EXISTS.2: /exists\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
FIELD: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*/
CMP_OP: "!=" | "<=" | ">=" | "=" | "<" | ">"
STRING: /"(?:[^"\\]|\\.)*"/
NUMBER: /-?(?:\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?/
_LPAR: "("
_RPAR: ")"
_COMMA: ","

%ignore /\s+/
"""

# Human names of terminals for error messages.
_TERMINAL_NAMES = {
    "FIELD": "a field name",
    "CMP_OP": "an operator",
    "STRING": "a value",
    "NUMBER": "a value",
    "TRUE": "a value",
    "FALSE": "a value",
    "_OR": "'or'",
    "_AND": "'and'",
    "_IN": "'in'",
    "_STARTS_WITH": "'starts with'",
    "_EXISTS": "'exists'",
    "_LPAR": "'('",
    "_RPAR": "')'",
    "_COMMA": "','",
    "$END": "the end",
}
_VALUE_TERMINALS = frozenset({"STRING", "NUMBER", "TRUE", "FALSE"})
_OPERATOR_TERMINALS = frozenset({"CMP_OP", "_IN", "_STARTS_WITH", "_EXISTS"})
_FIELD = "conditions"
# Parentheses outside string literals (a string token is skipped whole).
_PARENS_OR_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"?|[()]')


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # LALR with the contextual lexer: keywords only win where they are
    # expected, so a field named e.g. `android` never lexes as `and`.
    return Lark(_GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True)


def parse(text: str, field: str = _FIELD) -> ConditionGroup:
    """Parse condition text into a validated `ConditionGroup`.

    Empty text gives the empty group (matches every event). Raises
    `InvalidArgument(field, "line L, column C: ...")` for syntax and type errors,
    and names the limit for text that is too long or nests too deep.
    """
    _check_bounds(text, field)
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise InvalidArgument(field, _describe(exc, text)) from None
    except LarkError as exc:  # pragma: no cover - lark internals
        raise InvalidArgument(field, str(exc)) from None
    if not tree.children:
        return ConditionGroup()
    root = _unwrap(tree.children[0])
    item = _build(root, text, field)
    if not (isinstance(item, ConditionGroup) and not _is_paren(root)):
        # A single comparison or a parenthesised group at the top level.
        item = ConditionGroup(GroupMode.ALL_OF, (item,))
    check_size(item, field)
    return item


def _check_bounds(text: str, field: str) -> None:
    """Refuse over-long text and over-deep parentheses before lark sees them."""
    if len(text) > limits.CONDITION_TEXT_MAX:
        raise InvalidArgument(
            field, f"at most {limits.CONDITION_TEXT_MAX:,} characters (limit), got {len(text):,}"
        )
    depth = 0
    for match in _PARENS_OR_STRINGS.finditer(text):
        token = match.group()
        if token == "(":
            depth += 1
            if depth > limits.CONDITION_DEPTH_MAX:
                raise InvalidArgument(
                    field,
                    f"parentheses nest at most {limits.CONDITION_DEPTH_MAX} deep (limit), "
                    f"column {match.start() + 1}",
                )
        elif token == ")":
            depth -= 1


def parse_optional(text: str | None, field: str = _FIELD) -> ConditionGroup | None:
    """`parse`, with None or blank text meaning "no conditions given"."""
    if text is None or not text.strip():
        return None
    return parse(text, field)


def _unwrap(node: Tree[Token] | Token) -> Tree[Token] | Token:
    """Skip and/or nodes of one child (the grammar aliases stop lark inlining them)."""
    while isinstance(node, Tree) and node.data in ("any_of", "all_of") and len(node.children) == 1:
        node = node.children[0]
    return node


def _is_paren(node: Tree[Token] | Token) -> bool:
    return isinstance(node, Tree) and node.data == "paren"


def _build(node: Tree[Token] | Token, text: str, field: str) -> Item:
    if not isinstance(node, Tree):  # pragma: no cover - grammar guarantees trees
        raise InvalidArgument(field, f"unexpected token {node!r}")
    kind = node.data
    if kind in ("any_of", "all_of"):
        mode = GroupMode.ANY_OF if kind == "any_of" else GroupMode.ALL_OF
        items: list[Item] = []
        for child in node.children:
            items.append(_build(_unwrap(child), text, field))
        return ConditionGroup(mode, tuple(items))
    if kind == "paren":
        child = _unwrap(node.children[0])
        inner = _build(child, text, field)
        # Parentheses always make a group, so nesting written by to_text survives.
        if isinstance(inner, ConditionGroup) and not _is_paren(child):
            return inner
        return ConditionGroup(GroupMode.ALL_OF, (inner,))
    tokens = [c for c in node.children if isinstance(c, Token)]
    field_tok = tokens[0]
    cond: Condition
    if kind == "compare":
        op = Operator(str(tokens[1]))
        cond = Condition(str(field_tok), op, _literal(tokens[2], field))
    elif kind == "in_list":
        cond = Condition(str(field_tok), Operator.IN, tuple(_literal(t, field) for t in tokens[1:]))
    elif kind == "starts_with":
        cond = Condition(str(field_tok), Operator.STARTS_WITH, _literal(tokens[1], field))
    elif kind == "exists":
        cond = Condition(str(field_tok), Operator.EXISTS, None)
    else:  # pragma: no cover - grammar guarantees the kinds above
        raise InvalidArgument(field, f"unexpected rule {kind}")
    problem = condition_problem(cond)
    if problem is not None:
        raise InvalidArgument(field, f"{_where(field_tok)}: {problem}")
    return cond


def _where(tok: Token) -> str:
    return f"line {tok.line}, column {tok.column}"


def _literal(tok: Token, field: str) -> Scalar:
    raw = str(tok)
    if tok.type == "STRING":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(field, f"{_where(tok)}: bad string {raw}: {exc.msg}") from None
        if not isinstance(value, str):  # pragma: no cover - regex guarantees a string
            raise InvalidArgument(field, f"{_where(tok)}: bad string {raw}")
        return value
    if tok.type == "NUMBER":
        if any(c in raw for c in ".eE"):
            number = float(raw)
            if not math.isfinite(number):
                raise InvalidArgument(field, f"{_where(tok)}: number {raw} is out of range")
            return number
        return int(raw)
    if tok.type == "TRUE":
        return True
    if tok.type == "FALSE":
        return False
    raise InvalidArgument(field, f"{_where(tok)}: unexpected {raw!r}")  # pragma: no cover


def _line_col_at_end(text: str) -> tuple[int, int]:
    line = text.count("\n") + 1
    col = len(text) - (text.rfind("\n") + 1) + 1
    return line, col


def _describe(exc: UnexpectedInput, text: str) -> str:
    """Turn a lark error into 'line L, column C: expected X after 'Y''."""
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream is not None else "?"
        if char == '"':
            return f"line {exc.line}, column {exc.column}: unterminated string"
        return f"line {exc.line}, column {exc.column}: unexpected character {char!r}"
    expected: set[str] = set(getattr(exc, "expected", set()) or set())
    previous: Token | None = None
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        at_end = token.type == "$END"
        history = exc.token_history or []
        # At the end lark reports the last token's position, so lex the whole text.
        previous = (
            history[-1] if history else _last_token(text, None if at_end else exc.pos_in_stream)
        )
        if at_end:
            line, col = _line_col_at_end(text)
        else:
            line, col = exc.line, exc.column
        found = "the end of the text" if at_end else repr(str(token))
    elif isinstance(exc, UnexpectedEOF):
        previous = _last_token(text, None)
        line, col = _line_col_at_end(text)
        found = "the end of the text"
    else:  # pragma: no cover - other UnexpectedInput kinds are not raised by LALR
        return str(exc)
    return f"line {line}, column {col}: {_expectation(expected, previous)}, found {found}"


def _last_token(text: str, pos: int | None) -> Token | None:
    """The token before `pos` (or the last one), for "expected X after 'Y'"."""
    prefix = text if pos is None else text[:pos]
    last: Token | None = None
    try:
        for tok in _parser().lex(prefix):
            last = tok
    except LarkError:
        return None
    return last


def _expectation(expected: set[str], previous: Token | None) -> str:
    after = f" after '{previous}'" if previous is not None else ""
    if expected and expected <= _VALUE_TERMINALS | {"_LPAR"} and expected & _VALUE_TERMINALS:
        return f"expected a value{after}"
    if "FIELD" in expected:
        return f"expected a field name{after}"
    if expected & _OPERATOR_TERMINALS:
        return f"expected an operator (=, !=, <, <=, >, >=, in, starts with, exists){after}"
    if "$END" in expected:
        return f"expected 'and', 'or' or the end{after}"
    if "_RPAR" in expected:
        return f"expected 'and', 'or' or ')'{after}"
    names = sorted({_TERMINAL_NAMES.get(t, t) for t in expected})
    return f"expected {' or '.join(names)}{after}" if names else f"unexpected input{after}"


# --- canonical text ---------------------------------------------------------


def _render_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value)  # repr always has '.' or 'e', so it parses back as float
    return str(value)


def _render_condition(cond: Condition) -> str:
    if cond.op is Operator.EXISTS:
        return f"{cond.field} exists"
    if cond.op is Operator.IN:
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        inner = ", ".join(_render_literal(v) for v in values if v is not None)
        return f"{cond.field} in ({inner})"
    if cond.value is None or isinstance(cond.value, tuple):
        _fail(cond)
    return f"{cond.field} {cond.op.value} {_render_literal(cond.value)}"


def _fail(cond: Condition) -> NoReturn:
    raise InvalidArgument(_FIELD, f"cannot render {cond!r}")


def _render(item: Item, nested: bool) -> str:
    if isinstance(item, Condition):
        return _render_condition(item)
    joiner = " or " if item.mode is GroupMode.ANY_OF else " and "
    body = joiner.join(_render(child, nested=True) for child in item.items)
    return f"({body})" if nested else body


def to_text(group: ConditionGroup) -> str:
    """Canonical text of a group; `parse(to_text(g)) == g` for every valid g.

    Nested groups are always parenthesised so their structure survives.
    """
    return _render(group, nested=False)
