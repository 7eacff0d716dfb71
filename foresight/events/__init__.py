"""Experience events: the schema, file readers, validation and the event store.

Typical ingestion::

    for batch in read_batches(path):
        result = validate(batch, now, row_offset=rows_so_far)
        parts = store.write(dataset, result.accepted, known_parts)   # catalogue them
        store.write_quarantine(dataset, result.rejected)             # if any
"""

from foresight.events.partitions import shard_for_profile, shard_of
from foresight.events.readers import DEFAULT_BATCH_ROWS, list_input_files, read_batches
from foresight.events.schema import (
    EVENT_COLUMNS,
    EVENT_SCHEMA,
    FAR_FUTURE_TOLERANCE,
    MAX_PROFILE_ID_LENGTH,
    MAX_STRING_LENGTH,
    REQUIRED_COLUMNS,
    SchemaError,
    empty_events,
)
from foresight.events.store import EventStore, PartInfo
from foresight.events.validation import REJECTED_SCHEMA, ValidationResult, validate

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "EVENT_COLUMNS",
    "EVENT_SCHEMA",
    "FAR_FUTURE_TOLERANCE",
    "MAX_PROFILE_ID_LENGTH",
    "MAX_STRING_LENGTH",
    "REJECTED_SCHEMA",
    "REQUIRED_COLUMNS",
    "EventStore",
    "PartInfo",
    "SchemaError",
    "ValidationResult",
    "empty_events",
    "list_input_files",
    "read_batches",
    "shard_for_profile",
    "shard_of",
    "validate",
]
