"""One profile's stored events through the indexed part copies equal a filter over the parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from foresight.errors import DatasetDamaged, FailedPrecondition
from foresight.events.partitions import shard_for_profile
from foresight.events.store import EventStore
from foresight.events.validation import validate
from services.scorer import history
from services.scorer.history import ProfileHistory

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _events(n: int, profiles: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    raw = pl.DataFrame(
        {
            "event_id": [f"e{seed}-{i}" for i in range(n)],
            "profile_id": [f"p{i:04d}" for i in rng.integers(0, profiles, n)],
            "timestamp": [NOW - timedelta(minutes=int(m)) for m in rng.integers(1, 10**6, n)],
            "event_type": rng.choice(["a.b", "c.d"], n),
            "value": rng.random(n),
        }
    )
    return validate(raw, NOW).accepted


def test_profile_events_equal_a_filter_and_follow_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "BATCH_ROWS", 64)  # many batches, profiles across their edges
    store = EventStore(tmp_path / "events", shards=4)
    parts = [p.path for p in store.write("ds", _events(6000, 400, 1), [])]
    parts += [p.path for p in store.write("ds", _events(3000, 500, 2), parts)]
    index = ProfileHistory(store, tmp_path / "cache")
    everything = store.scan("ds", parts).collect()
    for pid in [f"p{i:04d}" for i in range(0, 520, 3)]:
        got = index.events("ds", parts, pid)
        want = everything.filter(pl.col("profile_id") == pid)
        assert got.schema == want.schema
        assert got.sort("event_id").equals(want.sort("event_id")), pid
        # Only the columns asked for are converted (what real-time scoring reads).
        some = index.events("ds", parts, pid, ("event_id", "timestamp", "value"))
        assert some.sort("event_id").equals(want.select(some.columns).sort("event_id"))
        assert some.columns == ["event_id", "timestamp", "value"]
    assert index.events("ds", parts, "nobody").height == 0
    assert index.events("ds", parts, "nobody", ("event_id", "value")).columns == [
        "event_id",
        "value",
    ]
    copies = sorted((tmp_path / "cache").rglob("*.arrow"))
    assert len(copies) == len(parts)
    # A compaction replaces a shard's parts: the new part is indexed, the old copies go.
    shard = store.shard_of_part(parts[0])
    merged = store.compact("ds", shard, parts)
    assert merged is not None
    current = [p for p in parts if store.shard_of_part(p) != shard] + [merged.path]
    ids = everything["profile_id"].unique().to_list()
    pid = next(p for p in ids if shard_for_profile(p, 4) == shard)
    got = index.events("ds", current, pid)
    assert got.sort("event_id").equals(
        everything.filter(pl.col("profile_id") == pid).sort("event_id")
    )
    assert len(sorted((tmp_path / "cache").rglob("*.arrow"))) == len(current)


def test_the_serving_path_loads_neither_scikit_learn_nor_pandas(tmp_path: Path) -> None:
    # ~110 MB of a serving process: the scorer imports them only where a call needs them.
    import subprocess
    import sys

    store = EventStore(tmp_path / "events", shards=2)
    parts = [p.path for p in store.write("ds", _events(500, 50, 3), [])]
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import services.scorer.main\n"
        "from foresight.events.store import EventStore\n"
        "from services.scorer.history import ProfileHistory\n"
        "root, parts = Path(sys.argv[1]), sys.argv[2:]\n"
        "index = ProfileHistory(EventStore(root / 'events', shards=2), root / 'cache')\n"
        "for _ in range(2):  # indexing the parts, then their copies\n"
        "    assert index.events('ds', parts, 'p0001').height > 0\n"
        "    index = ProfileHistory(EventStore(root / 'events', shards=2), root / 'cache')\n"
        "print(sorted(m for m in ('sklearn', 'pandas', 'scipy') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), *parts],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_a_part_out_of_profile_order_fails_and_leaves_no_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Copies are written a batch at a time, trusting the store's sort: a part that is not
    # sorted (put there by hand) would make lookups miss rows, so indexing it fails.
    monkeypatch.setattr(history, "BATCH_ROWS", 64)
    store = EventStore(tmp_path / "events", shards=1)
    parts = [p.path for p in store.write("ds", _events(2000, 300, 4), [])]
    path = store.part_path("ds", parts[0])
    pl.read_parquet(path).reverse().write_parquet(path)
    index = ProfileHistory(store, tmp_path / "cache")
    with pytest.raises(FailedPrecondition, match="not sorted by profile id"):
        index.events("ds", parts, "p0001")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no temp file


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_part_is_named_and_leaves_no_copy(tmp_path: Path, damage: str) -> None:
    store = EventStore(tmp_path / "events", shards=1)
    parts = [p.path for p in store.write("ds", _events(2000, 300, 5), [])]
    path = store.part_path("ds", parts[0])
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    index = ProfileHistory(store, tmp_path / "cache")
    with pytest.raises(DatasetDamaged) as raised:
        index.events("ds", parts, "p0001")
    assert raised.value.part == parts[0]
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_a_full_cache_disk_is_not_reported_as_a_damaged_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(tmp_path / "events", shards=1)
    parts = [p.path for p in store.write("ds", _events(500, 50, 6), [])]

    def full(path: Path, write: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(history, "atomic_write", full)
    with pytest.raises(OSError, match="No space left"):  # not DatasetDamaged: no repair helps
        ProfileHistory(store, tmp_path / "cache").events("ds", parts, "p0001")
