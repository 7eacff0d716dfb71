"""The journey index: build, query, upsert/remove/resize, save/load, checksums, locking."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from foresight.errors import FailedPrecondition
from foresight.storage import ArtifactStore, Database
from foresight.storage.models import IndexVersionRow
from services.segmenter.embedding import EmbeddedShard
from services.segmenter.index import INDEX_FILE, JourneyIndex
from services.segmenter.index_store import IndexStore
from services.segmenter.index_types import IndexInfo, IndexParams
from services.segmenter.locking import RWLock

pytestmark = pytest.mark.unit

DIM = 8


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def shard(ids: list[str], seed: int = 0) -> EmbeddedShard:
    rng = np.random.default_rng(seed)
    return EmbeddedShard(
        profile_ids=np.array(ids, dtype=object),
        embeddings=unit(rng.normal(size=(len(ids), DIM))),
        trait_bits=np.zeros((len(ids), 1), np.uint8),
        trait_values=np.zeros((len(ids), 3), np.float32),
    )


def info(version: int = 1) -> IndexInfo:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    return IndexInfo(version, "shop", "cosine", DIM, 16, 100, 64, 1, 0, "", now, now)


def make(n: int = 300, seed: int = 0) -> JourneyIndex:
    ids = [f"p{i:04d}" for i in range(n)]
    half = n // 2
    return JourneyIndex.create(
        info(), [shard(ids[:half], seed), shard(ids[half:], seed + 1)], IndexParams(ef=64)
    )


def test_build_and_query_finds_itself_first() -> None:
    index = make()
    assert index.count == 300
    known, vectors, unknown = index.vectors_of(["p0007", "nope", "p0007"])
    assert known == ["p0007"] and unknown == ["nope"]
    hits = index.knn(vectors, 5)[0]
    assert hits[0][0] == "p0007" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [h[0] for h in index.knn(vectors, 5, exclude={"p0007"})[0]].count("p0007") == 0


def test_upsert_resizes_updates_in_place_and_remove_marks_deleted() -> None:
    index = make(50)
    # New profiles beyond max_elements force a resize.
    added = shard([f"n{i}" for i in range(200)], seed=9)
    assert index.upsert(added) == 200
    assert index.count == 250
    # Re-embedding a known profile replaces its vector (no duplicate).
    moved = shard(["p0001"], seed=42)
    index.upsert(moved)
    assert index.count == 250
    hits = index.knn(moved.embeddings, 1)[0]
    assert hits[0] == ("p0001", pytest.approx(1.0, abs=1e-5))
    removed, missing = index.remove(["p0001", "zzz"])
    assert (removed, missing) == (1, ["zzz"])
    assert not index.contains("p0001")
    assert all(h[0] != "p0001" for h in index.knn(moved.embeddings, 20)[0])
    # A new profile may reuse the removed slot; the old one stays gone.
    index.upsert(shard(["fresh"], seed=3))
    assert index.contains("fresh") and index.count == 250


def test_knn_with_k_larger_than_the_index() -> None:
    index = make(10)
    index.remove([f"p{i:04d}" for i in range(5)])
    _, v, _ = index.vectors_of(["p0007"])
    hits = index.knn(v, 50)[0]
    assert len(hits) == 5


def test_exact_scan_excludes_and_scores_every_live_profile() -> None:
    index = make(100)
    index.remove(["p0000"])
    _, v, _ = index.vectors_of(["p0003"])
    ids, best, which = index.exact_scan(v, ["p0003"])
    assert len(ids) == 98 and "p0003" not in set(ids) and "p0000" not in set(ids)
    assert best.max() <= 1.0 + 1e-6 and set(which.tolist()) == {0}


def test_save_load_round_trip_and_corruption_is_detected(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    store = IndexStore(db, artifacts)
    index = make(120)
    index.upsert(shard(["extra"], seed=5))
    index.remove(["p0002"])
    version = store.allocate("shop", 1)
    saved = store.publish(index, version)
    assert saved.count == 120 and len(saved.checksum) == 64
    row = store.latest_ready()
    assert row is not None and row.checksum == saved.checksum
    loaded = store.load(row)
    assert loaded.count == 120 and loaded.contains("extra") and not loaded.contains("p0002")
    _, v, _ = loaded.vectors_of(["p0050"])
    assert loaded.knn(v, 1)[0][0][0] == "p0050"
    # Flip bytes in the index file: the checksum catches it.
    path = artifacts.path(row.artifact_path or "") / INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition):
        store.load(row)


def test_rwlock_keeps_writers_alone() -> None:
    lock = RWLock()
    inside: list[str] = []
    errors: list[str] = []

    def reader() -> None:
        for _ in range(200):
            with lock.read():
                inside.append("r")
                if "w" in inside:
                    errors.append("reader with writer")
                inside.remove("r")

    def writer() -> None:
        for _ in range(50):
            with lock.write():
                inside.append("w")
                if len(inside) != 1:
                    errors.append("writer not alone")
                time.sleep(0.0005)
                inside.remove("w")

    threads = [threading.Thread(target=reader) for _ in range(4)] + [
        threading.Thread(target=writer) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_queries_during_upserts_never_fail() -> None:
    index = make(200)
    _, probe, _ = index.vectors_of(["p0010"])
    stop = threading.Event()
    failures: list[BaseException] = []

    def query() -> None:
        while not stop.is_set():
            try:
                assert index.knn(probe, 5)[0]
            except BaseException as exc:
                failures.append(exc)

    readers = [threading.Thread(target=query) for _ in range(4)]
    for t in readers:
        t.start()
    for i in range(30):
        index.upsert(shard([f"w{i}-{j}" for j in range(50)], seed=i))
        index.remove([f"w{i}-0"])
    stop.set()
    for t in readers:
        t.join()
    assert failures == []
    assert index.count == 200 + 30 * 49


def test_builds_left_building_by_a_kill_are_failed_at_start(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    store = IndexStore(db, artifacts)
    ready = store.allocate("shop", 1)
    store.publish(make(40), ready)
    killed = store.allocate("shop", 1)
    half = artifacts.path("indexes") / f".tmp-segmenter-0123abcd-v{killed}"
    half.mkdir()
    (half / INDEX_FILE).write_bytes(b"half an index")
    others = artifacts.path("models") / ".tmp-trainer-4567-v1"  # another service's write in flight
    others.mkdir(parents=True)
    assert store.recover_interrupted() == [killed]
    assert not half.exists() and others.exists()
    with db.session() as s:
        rows = {r.version: r for r in s.scalars(select(IndexVersionRow))}
    assert rows[killed].status == "FAILED" and rows[killed].error == "interrupted"
    assert rows[ready].status == "READY"
    assert store.recover_interrupted() == []
