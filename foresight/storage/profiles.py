"""Profile attributes as a Polars frame: the one reader the trainer and the scorer share.

Both sides must build the same frame (same columns, same JSON value types),
or the attribute encodings fitted at training would not match at scoring.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import polars as pl
from sqlalchemy import select

from foresight.storage.db import Database
from foresight.storage.models import ProfileRow


def profile_attributes(
    db: Database, names: Sequence[str], ids: Iterable[str] | None = None
) -> pl.DataFrame | None:
    """profile_id plus one column per named attribute; None when no profile was imported.

    With `ids`, only those profiles (an empty frame with the columns when none match).
    """
    if not names:
        return None
    query = select(ProfileRow.profile_id, ProfileRow.attributes)
    if ids is not None:
        query = query.where(ProfileRow.profile_id.in_(list(ids)))
    with db.session() as session:
        rows = session.execute(query).all()
    if not rows and ids is None:
        return None
    wanted = list(names)
    records = [
        {"profile_id": pid, **{n: (attrs or {}).get(n) for n in wanted}} for pid, attrs in rows
    ]
    if not records:
        return pl.DataFrame(schema={"profile_id": pl.String, **dict.fromkeys(wanted, pl.String)})
    return pl.from_dicts(records, infer_schema_length=None)
