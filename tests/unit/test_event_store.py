"""Event store: sharded atomic Parquet parts, idempotent writes, quarantine."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from foresight.errors import InvalidArgument
from foresight.events.partitions import shard_for_profile, shard_of
from foresight.events.readers import read_batches
from foresight.events.schema import EVENT_SCHEMA
from foresight.events.store import EventStore
from foresight.events.validation import validate

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 1, tzinfo=UTC)

# One broken value per kind of problem validation knows, with its reason.
BROKEN_KINDS: list[tuple[dict[str, object], str]] = [
    ({"profile_id": None}, "missing profile_id"),
    ({"profile_id": "x" * 200}, "profile_id longer than 128 characters"),
    ({"timestamp": "not a time"}, "unparseable timestamp"),
    ({"timestamp": "2030-01-01T00:00:00Z"}, "timestamp in the far future"),
    ({"event_type": None}, "missing event_type"),
    ({"value": "twelve"}, "value is not a number"),
    ({"value": "-5"}, "value is negative"),
    ({"value": "NaN"}, "value is NaN"),
    ({"value": "Infinity"}, "value is infinite"),
    ({"quantity": "1.5"}, "quantity is not an integer"),
    ({"quantity": "-1"}, "quantity is negative"),
    ({"page_name": "p" * 600}, "page_name longer than 512 characters"),
    ({"attributes": "not json"}, "attributes is not a JSON object"),
]


def write_broken_sample(
    path: Path, rows: int = 1_000, broken_share: float = 0.1, seed: int = 0
) -> dict[int, str]:
    """Write a CSV of good events with ``broken_share`` broken rows of every kind.

    Returns the 1-based row numbers of the broken rows and the reason each
    must be rejected with.
    """
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    records: list[dict[str, object]] = []
    broken: dict[int, str] = {}
    for index in range(rows):
        record: dict[str, object] = {
            "event_id": f"e{index}",
            "profile_id": f"p{rng.randrange(rows // 5)}",
            "timestamp": (start + timedelta(minutes=index)).isoformat().replace("+00:00", "Z"),
            "event_type": rng.choice(["commerce.purchases", "commerce.productViews"]),
            "channel": "web",
            "value": f"{rng.uniform(1, 100):.2f}",
            "quantity": str(rng.randint(1, 3)),
            "page_name": "home",
            "attributes": json.dumps({"device": "ios", "n": 2}),
        }
        if rng.random() < broken_share or index < len(BROKEN_KINDS):
            fields, reason = BROKEN_KINDS[index % len(BROKEN_KINDS)]
            record.update(fields)
            broken[index + 1] = reason
        records.append(record)
    pl.DataFrame(records, schema=dict.fromkeys(records[0], pl.String)).write_csv(path)
    return broken


def _events(count: int, profiles: int = 50, prefix: str = "e") -> pl.DataFrame:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    raw = pl.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(count)],
            "profile_id": [f"p{i % profiles}" for i in range(count)],
            "timestamp": [start + timedelta(hours=i) for i in range(count)],
            "event_type": ["commerce.productViews"] * count,
        }
    )
    return validate(raw, NOW).accepted


def test_shard_hash_is_stable_and_vectorized() -> None:
    ids = ["", "a", "p0000001", "héllo wörld", "x" * 128, "ab", "abc"]
    assert shard_of(pl.Series(ids), 16).to_list() == [shard_for_profile(i, 16) for i in ids]
    # FNV-1a 64 of b"a" is 0xaf63dc4c8601ec8c: pinned, shards live on disk.
    assert shard_for_profile("a", 1 << 62) == 0xAF63DC4C8601EC8C % (1 << 62)


def test_write_shards_by_profile_and_reads_back(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=4)
    events = _events(200)

    parts = store.write("web", events, known_parts=[])

    assert sum(part.rows for part in parts) == 200
    for part in parts:
        shard = store.read_shard("web", part.shard, [p.path for p in parts])
        assert set(shard_of(shard["profile_id"], 4).to_list()) == {part.shard}
        assert part.path.startswith(f"web/shard={part.shard}/part-")
        assert part.min_timestamp <= part.max_timestamp
        assert part.event_types == ("commerce.productViews",)
    everything = store.scan("web", [p.path for p in parts]).collect()
    assert everything.schema == EVENT_SCHEMA
    assert sorted(everything["event_id"].to_list()) == sorted(events["event_id"].to_list())
    # Only some columns: in storage order, the same rows.
    part = parts[0]
    whole = store.read_shard("web", part.shard, [p.path for p in parts])
    some = store.read_shard("web", part.shard, [p.path for p in parts], ["value", "profile_id"])
    assert some.columns == ["profile_id", "value"]
    assert some.equals(whole.select("profile_id", "value"))


def test_rewriting_the_same_events_adds_nothing(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=4)
    events = _events(100)
    parts = [p.path for p in store.write("web", events, known_parts=[])]

    assert store.write("web", events, known_parts=parts) == []
    # A fresh store (new process) must reach the same answer from the files.
    assert EventStore(tmp_path, shards=4).write("web", events, known_parts=parts) == []
    mixed = pl.concat([events.head(10), _events(30, prefix="new")])
    added = store.write("web", mixed, known_parts=parts)
    assert sum(p.rows for p in added) == 30


def test_duplicates_inside_a_batch_are_written_once(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=2)
    events = _events(20)
    parts = store.write("web", pl.concat([events, events]), known_parts=[])
    assert sum(p.rows for p in parts) == 20


def test_uncatalogued_parts_are_invisible_and_cleaned_up(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=2)
    catalogued = [p.path for p in store.write("web", _events(20), known_parts=[])]
    orphans = [
        p.path for p in store.write("web", _events(20, prefix="lost"), known_parts=catalogued)
    ]
    # Killed writes' temp files: today's name (`atomic_write`) and an older release's.
    (tmp_path / "web" / "shard=0" / ".tmp-0123abcd-part-y.parquet").write_bytes(b"half a file")
    (tmp_path / "web" / "shard=0" / ".part-x.parquet.1234.tmp").write_bytes(b"half a file")

    assert store.scan("web", catalogued).collect().height == 20
    # The catalog never learnt of the orphans: their events are not "known".
    again = store.write("web", _events(20, prefix="lost"), known_parts=catalogued)
    assert sum(p.rows for p in again) == 20

    removed = store.cleanup_orphans("web", catalogued + [p.path for p in again])
    temps = ["web/shard=0/.part-x.parquet.1234.tmp", "web/shard=0/.tmp-0123abcd-part-y.parquet"]
    assert sorted(removed) == sorted([*orphans, *temps])
    assert store.cleanup_orphans("web", catalogued, min_age_seconds=3600) == []


def test_no_temp_files_are_left_behind(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=2)
    store.write("web", _events(50), known_parts=[])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_compact_merges_a_shard(tmp_path: Path) -> None:
    store = EventStore(tmp_path, shards=1)
    first = store.write("web", _events(10), known_parts=[])
    second = store.write("web", _events(10, prefix="b"), known_parts=[p.path for p in first])
    merged = store.compact("web", 0, [p.path for p in first + second])
    assert merged is not None and merged.rows == 20


@pytest.mark.parametrize("name", ["../escape", "", "a/b", ".hidden"])
def test_dataset_names_cannot_escape_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidArgument):
        EventStore(tmp_path).dataset_dir(name)


def test_parts_of_other_datasets_are_refused(tmp_path: Path) -> None:
    store = EventStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.scan("web", ["other/shard=0/part-" + "0" * 32 + ".parquet"])


def test_broken_rows_land_in_quarantine_and_reimport_adds_nothing(tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    broken = write_broken_sample(source, rows=2_000)
    store = EventStore(tmp_path / "store", shards=4)

    def ingest(known: list[str]) -> tuple[int, int, list[str], list[str]]:
        rows = accepted = 0
        written: list[str] = []
        quarantine: list[str] = []
        for batch in read_batches(source, batch_rows=300):
            result = validate(batch, NOW, row_offset=rows)
            rows += batch.height
            accepted += result.accepted.height
            written += [p.path for p in store.write("shop", result.accepted, known + written)]
            if not result.rejected.is_empty():
                quarantine.append(store.write_quarantine("shop", result.rejected))
        return rows, accepted, written, quarantine

    rows, accepted, parts, quarantine = ingest([])
    rejected = pl.concat([store.read_quarantine(path) for path in quarantine])

    assert rows == 2_000
    assert accepted + rejected.height == rows
    assert (
        dict(
            zip(rejected["row_number"].to_list(), rejected["reason"].to_list(), strict=True)
        ).keys()
        == broken.keys()
    )
    for row_number, reason in zip(
        rejected["row_number"].to_list(), rejected["reason"].to_list(), strict=True
    ):
        assert broken[row_number] in reason
    stored = store.scan("shop", parts).collect()
    assert stored.height == accepted == 2_000 - len(broken)
    for _, reason in BROKEN_KINDS:  # every kind of breakage was exercised
        assert rejected["reason"].str.contains(reason, literal=True).any()

    _, accepted_again, written_again, _ = ingest(parts)
    assert accepted_again == accepted
    assert written_again == []


def test_part_names_parse_back_to_their_shard() -> None:
    from foresight.events.partitions import part_name, parts_by_shard, shard_of_part

    names = [f"shop/{part_name(k)}" for k in (3, 0, 3, 12)]
    assert [shard_of_part(n) for n in names] == [3, 0, 3, 12]
    assert parts_by_shard(names) == {0: [names[1]], 3: [names[0], names[2]], 12: [names[3]]}
    with pytest.raises(InvalidArgument):
        shard_of_part("shop/part-0.parquet")
