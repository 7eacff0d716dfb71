"""Names that become paths, and paths proven to stay under their root.

Every name a caller chooses that ends up in a file path (instance, dataset,
segment, index, encoder, run) goes through `slug` once, where the request
enters the domain; every path derived from such a name goes through
`confined`, which resolves it (symlinks included) and proves it is still
under the store's root. The two together mean `../../x`, an absolute path or
a symlink planted in the data directory can never make a service write, read
or delete outside its root.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from foresight.errors import InvalidArgument, PermissionDenied

__all__ = ["SLUG_MAX", "SLUG_RULE", "confined", "is_slug", "slug"]

SLUG_MAX: Final[int] = 64
SLUG_RULE: Final[str] = (
    f"use 1-{SLUG_MAX} characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
)
_SLUG: Final[re.Pattern[str]] = re.compile(rf"[a-z0-9][a-z0-9_-]{{0,{SLUG_MAX - 1}}}\Z")


def is_slug(value: object) -> bool:
    """True when `value` is a valid slug."""
    return isinstance(value, str) and _SLUG.match(value) is not None


def slug(field: str, value: str) -> str:
    """Return `value` when it is a safe path name, else InvalidArgument naming the rule."""
    if not is_slug(value):
        raise InvalidArgument(field, SLUG_RULE)
    return value


def confined(root: Path, *parts: str | Path) -> Path:
    """`root / parts...`, resolved, and proven to stay strictly under the resolved root.

    Refuses absolute parts, `..` and symlinks that lead outside with
    PermissionDenied; the message names no server path.
    """
    base = root.resolve()
    target = base.joinpath(*parts).resolve()
    if target == base or not target.is_relative_to(base):
        raise PermissionDenied("a derived path would leave its store; refused")
    return target
