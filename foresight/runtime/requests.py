"""Checks every request message gets before a servicer sees it.

Three things no servicer should have to remember: bytes that are not a valid
message of the RPC's request type, enum fields holding a number the contract
does not define (proto3 keeps unknown enum numbers silently, so
`occurrence = 77` would otherwise pass as "some value"), timestamps outside
the range protobuf defines, and id or name strings over their limit. All are refused with InvalidArgument naming the
field; the interceptor applies these to every RPC.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from foresight.errors import InvalidArgument
from foresight.limits import REQUEST_FIELD_LIMITS

__all__ = ["UNPARSABLE", "check_request", "tolerant"]


class _Unparsable:
    """Stands for request bytes that did not decode."""


UNPARSABLE: Final = _Unparsable()
_WELL_KNOWN = "google.protobuf."
_TIMESTAMP = "google.protobuf.Timestamp"
# The range a Timestamp may hold (0001-01-01 to 9999-12-31), as protobuf defines it.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Data rows, validated row by row downstream (bad rows are quarantined, not refused).
_ROW_MESSAGES = frozenset({"foresight.common.v1.Event"})


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that answers UNPARSABLE instead of raising on bad bytes."""
    if deserializer is None:
        return None
    parse = deserializer

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, RecursionError, ...: all mean "not a message"
            return UNPARSABLE

    return parse_or_mark


def check_request(request: Any) -> Any:
    """Return `request` when it decoded and its fields are in bounds, else InvalidArgument.

    Enum fields must hold a defined number; string fields named in
    `foresight.limits.REQUEST_FIELD_LIMITS` must fit their limit.
    """
    if request is UNPARSABLE:
        raise InvalidArgument("request", "not a valid message for this RPC")
    if isinstance(request, Message):
        _check(request, "")
    return request


@cache
def _needs_check(descriptor: Descriptor) -> bool:
    """Whether a checked field (enum or bounded string) is reachable from this type."""
    return _reaches_checked(descriptor, set())


def _skipped(descriptor: Descriptor) -> bool:
    return descriptor.full_name.startswith(_WELL_KNOWN) or descriptor.full_name in _ROW_MESSAGES


def _reaches_checked(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen or _skipped(descriptor):
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.enum_type is not None or field.name in REQUEST_FIELD_LIMITS:
            return True
        if field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            return True
        if field.message_type is not None and _reaches_checked(field.message_type, seen):
            return True
    return False


def _check(message: Message, prefix: str) -> None:
    if not _needs_check(message.DESCRIPTOR):
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        values = value if field.is_repeated else (value,)
        if field.enum_type is not None:
            for i, number in enumerate(values):
                if number not in field.enum_type.values_by_number:
                    known = ", ".join(v.name for v in field.enum_type.values)
                    raise InvalidArgument(
                        _at(path, i, field.is_repeated),
                        f"unknown value {number}; use one of {known}",
                    )
        elif field.type == FieldDescriptor.TYPE_STRING:
            limit = REQUEST_FIELD_LIMITS.get(field.name, -1)
            for i, text in enumerate(values if limit >= 0 else ()):
                if len(text) > limit:
                    raise InvalidArgument(
                        _at(path, i, field.is_repeated),
                        f"at most {limit:,} characters (limit), got {len(text):,}",
                    )
        elif field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            for i, ts in enumerate(values):
                if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS and 0 <= ts.nanos < 10**9):
                    raise InvalidArgument(
                        _at(path, i, field.is_repeated), "timestamp outside years 1-9999"
                    )
        elif field.message_type is not None and not _skipped(field.message_type):
            _check_children(field, value, path)


def _check_children(field: FieldDescriptor, value: Any, path: str) -> None:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if entry.fields_by_name["value"].message_type is not None:
            for key, child in value.items():
                _check(child, f"{path}[{key!r}].")
    elif field.is_repeated:
        for i, child in enumerate(value):
            _check(child, f"{path}[{i}].")
    else:
        _check(value, f"{path}.")


def _at(path: str, index: int, repeated: bool) -> str:
    return f"{path}[{index}]" if repeated else path
