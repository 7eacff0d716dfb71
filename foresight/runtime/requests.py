"""Checks every request message gets before a servicer sees it.

Two things no servicer should have to remember: bytes that are not a valid
message of the RPC's request type, and enum fields holding a number the
contract does not define (proto3 keeps unknown enum numbers silently, so
`occurrence = 77` would otherwise pass as "some value"). Both are refused
with InvalidArgument; the interceptor applies these to every RPC.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Final

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from foresight.errors import InvalidArgument

__all__ = ["UNPARSABLE", "check_request", "tolerant"]


class _Unparsable:
    """Stands for request bytes that did not decode."""


UNPARSABLE: Final = _Unparsable()
_WELL_KNOWN = "google.protobuf."


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
    """Return `request` when it decoded and its enums are known, else InvalidArgument."""
    if request is UNPARSABLE:
        raise InvalidArgument("request", "not a valid message for this RPC")
    if isinstance(request, Message):
        _check_enums(request, "")
    return request


@cache
def _has_enums(descriptor: Descriptor) -> bool:
    """Whether an enum field is reachable from messages of this type."""
    return _reaches_enum(descriptor, set())


def _reaches_enum(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen or descriptor.full_name.startswith(_WELL_KNOWN):
        return False
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.enum_type is not None:
            return True
        if field.message_type is not None and _reaches_enum(field.message_type, seen):
            return True
    return False


def _check_enums(message: Message, prefix: str) -> None:
    if not _has_enums(message.DESCRIPTOR):
        return
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        if field.enum_type is not None:
            for i, number in enumerate(value if repeated else (value,)):
                if number not in field.enum_type.values_by_number:
                    where = f"{path}[{i}]" if repeated else path
                    known = ", ".join(v.name for v in field.enum_type.values)
                    raise InvalidArgument(where, f"unknown value {number}; use one of {known}")
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                inner = field.message_type.fields_by_name["value"]
                if inner.message_type is None:
                    continue  # enum-valued maps do not occur in our protos
                items: Any = value.items()
                for key, child in items:
                    _check_enums(child, f"{path}[{key!r}].")
            elif repeated:
                for i, child in enumerate(value):
                    _check_enums(child, f"{path}[{i}].")
            else:
                _check_enums(value, f"{path}.")
