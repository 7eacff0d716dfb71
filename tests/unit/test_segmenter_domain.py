"""The segmenter facade on a small generated dataset: build, load, swap, upserts, queries, map."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from foresight.encoder.trainer import EncoderTrainer
from foresight.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.storage import ArtifactStore, Database
from foresight.storage.catalog import record_import
from foresight.tools.generate import generate
from foresight.tools.mapview import render_html, write_html, write_png
from services.segmenter.domain import ProfileEvents, Segmenter
from services.segmenter.index import INDEX_FILE

# Steps over one journaled index: upserts and rebuilds carry over between tests.
pytestmark = [pytest.mark.unit, pytest.mark.in_file_order]

SHARDS = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Generated events ingested into a store, an encoder trained, an index built, segments found."""
    root = tmp_path_factory.mktemp("segmenter")
    g = generate(root / "gen", profiles=1_200, seed=11)
    db = Database(f"sqlite:///{root / 'f.db'}")
    db.migrate()
    store = EventStore(root / "events", shards=SHARDS)
    accepted = validate(pl.read_parquet(g.events_path), g.ingest_now).accepted
    parts = store.write("shop", accepted, [])
    record_import(db, "shop", [p.catalogued() for p in parts])
    artifacts = ArtifactStore(root / "artifacts")
    enc = EncoderTrainer(db, root / "events", artifacts).train("shop", 12, "pca", 1_200)
    assert enc.status == "READY", enc.error
    seg = Segmenter(db, artifacts, root / "events", shards=SHARDS, workers=1, ef=64)
    seg.build("shop")
    seg.discover()
    return {
        "root": root,
        "db": db,
        "artifacts": artifacts,
        "seg": seg,
        "events": accepted,
        "gen": g,
    }


def fresh(world: dict, rebuild_corrupt: bool = True) -> Segmenter:
    return Segmenter(
        world["db"],
        world["artifacts"],
        world["root"] / "events",
        shards=SHARDS,
        workers=1,
        rebuild_corrupt=rebuild_corrupt,
    )


def journey(world: dict, source: str, new_id: str) -> pl.DataFrame:
    """Raw request rows copying one stored profile's events under a new id."""
    events: pl.DataFrame = world["events"]
    rows = events.filter(pl.col("profile_id") == source).drop("event_id")
    return rows.with_columns(
        pl.lit(new_id).alias("profile_id"),
        pl.col("timestamp").dt.epoch("ms").alias("timestamp"),
    )


def test_build_then_restart_loads_the_same_index(world: dict) -> None:
    seg = fresh(world)  # other tests publish newer versions into the shared world
    seg.build("shop")
    info = seg.info()
    # A rebuild replays the journal, so other tests' upserts may add profiles.
    assert info.count >= 1_200 and info.dimensions == 12 and info.space == "cosine"
    other = fresh(world)
    loaded = other.load()
    assert (
        loaded is not None and loaded.version == info.version and loaded.checksum == info.checksum
    )
    assert other.info().count == info.count


def test_no_index_means_failed_precondition(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.migrate()
    seg = Segmenter(db, ArtifactStore(tmp_path / "a"), tmp_path / "events")
    assert seg.load() is None
    with pytest.raises(FailedPrecondition):
        seg.find_similar("p1", 5)
    with pytest.raises(NotFound):
        seg.build("nope")


def test_upserts_from_request_and_stored_events(world: dict) -> None:
    seg = fresh(world)
    seg.load()
    source = str(world["events"]["profile_id"][0])
    before = seg.info().count + (0 if seg.index.contains(source) else 1)
    result = seg.upsert(
        [
            ProfileEvents("twin", journey(world, source, "twin")),
            ProfileEvents(source, None),  # re-embed from stored events
            ProfileEvents("never-seen", None),
        ]
    )
    assert result.upserted == 2 and result.skipped == ["never-seen"]
    assert result.count == before + 1
    # The copy lands next to its original.
    near = [n.profile_id for n in seg.find_similar("twin", 3)]
    assert source in near
    assert seg.remove(["twin", "ghost"]) == (1, ["ghost"])
    bad = journey(world, source, "twin").with_columns(pl.lit(None).alias("event_type"))
    with pytest.raises(InvalidArgument):
        seg.upsert([ProfileEvents("twin", bad)])
    with pytest.raises(InvalidArgument):
        seg.upsert([ProfileEvents("other", journey(world, source, "twin"))])
    with pytest.raises(InvalidArgument):
        seg.upsert([])


def test_writes_during_a_build_survive_the_swap(world: dict) -> None:
    seg = fresh(world)
    seg.load()
    source = str(world["events"]["profile_id"][3])
    in_build = threading.Event()
    upserted = threading.Event()

    def progress(stage: str, fraction: float, message: str) -> None:
        if stage == "index" and not in_build.is_set():
            in_build.set()
            assert upserted.wait(10)

    builder = threading.Thread(target=lambda: seg.build("shop", progress=progress))
    builder.start()
    assert in_build.wait(30)
    old_version = seg.info().version
    seg.upsert([ProfileEvents("mid-build", journey(world, source, "mid-build"))])
    seg.remove([source])
    upserted.set()
    builder.join(60)
    info = seg.info()
    assert info.version > old_version
    assert seg.index.contains("mid-build") and not seg.index.contains(source)
    with pytest.raises(FailedPrecondition):
        with seg.live._swap:
            seg.live._building = True
        try:
            seg.build("shop")
        finally:
            seg.live._building = False


def test_corrupt_index_is_rebuilt_or_refused_never_fatal(world: dict, tmp_path: Path) -> None:
    seg = fresh(world)
    seg.load()
    gone = str(world["events"]["profile_id"][6])
    seg.upsert(
        [ProfileEvents("snap", journey(world, str(world["events"]["profile_id"][5]), "snap"))]
    )
    seg.remove([gone])
    saved = seg.snapshot_if_dirty()
    assert saved is not None and seg.snapshot_if_dirty() is None
    row = seg.indexes.latest_ready()
    assert row is not None and row.version == saved.version
    flip_a_byte(world["artifacts"].path(row.artifact_path) / INDEX_FILE)
    rebuilt = fresh(world)
    info = rebuilt.load()
    assert info is not None and info.version > row.version
    # Rebuilt from the event store, then the journal: the upsert stays, the removal too.
    assert rebuilt.index.contains("snap") and not rebuilt.index.contains(gone)
    assert rebuilt.info().count == saved.count
    latest = rebuilt.indexes.latest_ready()
    assert latest is not None
    flip_a_byte(world["artifacts"].path(latest.artifact_path) / INDEX_FILE)
    refused = fresh(world, rebuild_corrupt=False)
    assert refused.load() is None
    with pytest.raises(FailedPrecondition):
        refused.info()


def test_acknowledged_writes_survive_a_crash_before_any_snapshot(world: dict) -> None:
    seg = fresh(world)
    seg.load()
    source = str(world["events"]["profile_id"][8])
    seg.upsert([ProfileEvents("crash-kept", journey(world, source, "crash-kept"))])
    seg.remove([source])
    count = seg.info().count
    # No snapshot, no shutdown: a new process only has the last snapshot and the journal.
    after = fresh(world)
    info = after.load()
    assert info is not None and info.journal_seq > 0
    assert after.index.contains("crash-kept") and not after.index.contains(source)
    assert after.info().count == count
    _, mine, _ = seg.index.vectors_of(["crash-kept"])
    _, replayed, _ = after.index.vectors_of(["crash-kept"])
    np.testing.assert_allclose(replayed, mine, atol=1e-5)


def test_a_snapshot_records_its_journal_position_and_compacts_the_journal(world: dict) -> None:
    seg = fresh(world)
    seg.load()
    source = str(world["events"]["profile_id"][9])
    for i in range(3):
        seg.upsert([ProfileEvents(f"compact-{i}", journey(world, source, f"compact-{i}"))])
    seg.remove(["compact-1"])
    dataset = seg.info().dataset
    assert len(list(seg.live.journal.entries(dataset))) >= 4
    saved = seg.snapshot_if_dirty()
    assert saved is not None and saved.journal_seq == seg.live.journal.last_seq(dataset)
    entries = list(seg.live.journal.entries(dataset))
    assert len(entries) == 1 and entries[0].seq == saved.journal_seq
    assert "compact-1" in entries[0].removed
    assert entries[0].events is not None
    assert {"compact-0", "compact-2"} <= set(entries[0].events["profile_id"].to_list())
    again = fresh(world)
    again.load()
    assert again.index.contains("compact-2") and not again.index.contains("compact-1")


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_score_journey_similar_and_expansion(world: dict) -> None:
    seg: Segmenter = world["seg"]
    pid = str(world["events"]["profile_id"][10])
    placed = seg.score_journey(pid, None, 5)
    assert placed.cluster_id >= 0 and placed.cluster_name and len(placed.nearest) == 5
    assert all(n.profile_id != pid for n in placed.nearest)
    anonymous = journey(world, pid, "anon").with_columns(pl.lit(None).alias("profile_id"))
    sent = seg.score_journey(None, anonymous, 5)
    assert sent.cluster_id == placed.cluster_id
    assert sent.nearest[0].similarity > 0.95
    with pytest.raises(NotFound):
        seg.score_journey("ghost", None, 5)
    with pytest.raises(InvalidArgument):
        seg.score_journey(None, None, 5)
    with pytest.raises(InvalidArgument):
        seg.find_similar(pid, 5000)
    truth = pl.read_parquet(world["gen"].ground_truth_path)
    seed = truth.filter(pl.col("future_purchase"))["profile_id"].to_list()[:40]
    expansion = seg.expand([*seed, "ghost"], None, 200)
    assert expansion.unknown_seed_ids == ["ghost"] and expansion.seed_size == 40
    assert len(expansion.lookalikes) == 200 and expansion.reach
    with pytest.raises(InvalidArgument):
        seg.expand([], None)
    with pytest.raises(NotFound):
        seg.expand(None, "no-such-segment")


def test_clusters_members_pages_and_saved_segments(world: dict) -> None:
    seg: Segmenter = world["seg"]
    d = seg.list_clusters(0)
    assert len(d.clusters) >= 3 and d.chosen_by.startswith("auto")
    c = d.clusters[0]
    influence = seg.get_cluster(0, c.cluster_id, "influence", 3)
    assert len(influence.influence) == 3 and influence.popularity == []
    popularity = seg.get_cluster(0, c.cluster_id, "popularity", 0)
    assert popularity.popularity and popularity.influence == []
    first, token, total = seg.list_members(0, c.cluster_id, 50, "")
    assert len(first) == 50 and total == c.size and token == "50"
    second, _, _ = seg.list_members(0, c.cluster_id, 50, token)
    assert not set(first) & set(second)
    with pytest.raises(InvalidArgument):
        seg.list_members(0, c.cluster_id, 50, "abc")
    name, size = seg.save_cluster_segment(0, c.cluster_id, f"cluster-{c.cluster_id}")
    assert size == c.size
    with pytest.raises(AlreadyExists):
        seg.save_cluster_segment(0, c.cluster_id, name)
    with pytest.raises(InvalidArgument):
        seg.save_cluster_segment(0, c.cluster_id, "Bad Name")
    grown = seg.expand(None, name, 100)
    assert grown.seed_size == c.size and len(grown.lookalikes) == 100


def test_map_projection_and_writers(world: dict, tmp_path: Path) -> None:
    seg: Segmenter = world["seg"]
    cmap = seg.visualization(0, 400)
    assert len(cmap.points) == 400 and cmap.projection == "pca"
    assert {p.cluster_id for p in cmap.points} <= {c.cluster_id for c in cmap.clusters}
    xs = np.array([p.x for p in cmap.points])
    assert np.isfinite(xs).all() and xs.std() > 0
    png = write_png(cmap, tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_html(cmap, tmp_path / "map.html").read_text()
    # Self-contained: nothing loaded from elsewhere.
    for needle in ("http://", "https://", "<link", "src="):
        assert needle not in page
    assert "High Influence" in page and "High Popularity" in page
    assert cmap.clusters[0].name.split(" · ")[0] in page
    with pytest.raises(InvalidArgument):
        seg.visualization(0, 60_000)
    assert "<\\/script>" in render_html(
        type(cmap)(cmap.discovery_version, cmap.points[:2], cmap.clusters, "</script>")
    )


def test_behaviour_as_of_moves_past_newer_request_events(world: dict) -> None:
    seg: Segmenter = world["seg"]
    pid = str(world["events"]["profile_id"][20])
    later = journey(world, pid, "later").with_columns(
        pl.col("timestamp") + int(timedelta(days=10).total_seconds() * 1000)
    )
    placed = seg.score_journey(None, later, 3)
    assert len(placed.nearest) == 3


def test_shards_embedded_in_worker_processes_match_inline(world: dict) -> None:
    seg: Segmenter = world["seg"]
    pooled = Segmenter(
        world["db"], world["artifacts"], world["root"] / "events", shards=SHARDS, workers=2
    )
    served = fresh(world)
    served.load()
    info = pooled.build("shop")
    # A build from the event store plus the journal is what the served index holds.
    assert info.count == served.info().count
    ids = [str(p) for p in world["events"]["profile_id"].unique().sort().head(50)]
    known, b, _ = pooled.index.vectors_of(ids)  # less any profile the journal removed
    also, a, _ = seg.index.vectors_of(known)
    assert also == known and len(known) >= 40
    np.testing.assert_allclose(a, b, atol=1e-6)
