"""The journey encoder: fitting, choice by measurement, ONNX export, publishing and loading."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest

from foresight.encoder.fitting import fit_encoder
from foresight.encoder.model import load_encoder
from foresight.encoder.registry import publish_encoder
from foresight.encoder.trainer import EncoderTrainer
from foresight.errors import FailedPrecondition, InvalidArgument, NotFound
from foresight.events.store import EventStore
from foresight.events.validation import validate
from foresight.features.journey import behaviour_vectors, fit_behaviour_spec
from foresight.storage import ArtifactStore, Database
from foresight.storage.bundles import (
    BEHAVIOUR_SPEC_FILE,
    ENCODER_FILE,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
)
from foresight.storage.catalog import record_import
from foresight.storage.lifecycle import INTERRUPTED, Status
from foresight.tools.generate import generate

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A small generated dataset in an event store, catalogued in a fresh database."""
    root = tmp_path_factory.mktemp("encoder")
    g = generate(root / "gen", profiles=800, seed=5)
    db = Database(f"sqlite:///{root / 'f.db'}")
    db.migrate()
    store = EventStore(root / "events", shards=4)
    accepted = validate(pl.read_parquet(g.events_path), g.ingest_now).accepted
    parts = store.write("shop", accepted, [])
    record_import(db, "shop", [p.catalogued() for p in parts])
    return {"root": root, "db": db, "events": accepted, "gen": g}


def test_auto_fits_both_families_and_records_the_measurements(world: dict) -> None:
    events: pl.DataFrame = world["events"]
    bundle = fit_encoder(events, dims=8, kind="auto")
    for family in ("pca", "autoencoder"):
        for metric in ("silhouette", "neighbour_recall_10", "reconstruction_error", "fit_s"):
            assert f"{family}.{metric}" in bundle.metrics
    assert bundle.kind in ("pca", "autoencoder")
    assert bundle.kind in bundle.chosen_by
    assert bundle.dimensions == 8
    assert bundle.metrics["onnx_max_abs_diff"] < 1e-3


@pytest.mark.parametrize("kind", ["pca", "autoencoder"])
def test_onnx_export_has_the_contract_names_and_matches(world: dict, kind: str) -> None:
    events: pl.DataFrame = world["events"]
    bundle = fit_encoder(events, dims=6, kind=kind)  # type: ignore[arg-type]
    model = onnx.load_from_string(bundle.onnx_model)
    assert [i.name for i in model.graph.input] == [ENCODER_INPUT]
    assert [o.name for o in model.graph.output] == [ENCODER_OUTPUT]
    assert bundle.kind == kind
    assert f"{kind}.silhouette" in bundle.metrics


def test_dimensions_are_capped_by_the_behaviour_width_and_its_variance(world: dict) -> None:
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from foresight.encoder.candidates import prepare
    from foresight.encoder.model import share_mask

    events: pl.DataFrame = world["events"]
    bundle = fit_encoder(events, dims=256, kind="pca")
    assert 2 <= bundle.dimensions < bundle.spec.dim - 1
    # As many components as carry 90 % of the (standardized, prepared) behaviour variance.
    _ids, X = behaviour_vectors(events, _as_of(events), bundle.spec)
    P = StandardScaler().fit_transform(prepare(X, share_mask(bundle.spec)))
    kept = np.cumsum(PCA().fit(P).explained_variance_ratio_)
    assert kept[bundle.dimensions - 1] >= 0.89 and kept[bundle.dimensions - 3] < 0.91


def _as_of(events: pl.DataFrame) -> datetime:
    latest = events["timestamp"].max()
    assert isinstance(latest, datetime)
    return latest + timedelta(seconds=1)


def test_bad_arguments_are_invalid(world: dict) -> None:
    events: pl.DataFrame = world["events"]
    with pytest.raises(InvalidArgument):
        fit_encoder(events, dims=1)
    with pytest.raises(InvalidArgument):
        fit_encoder(events, kind="tsne")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        fit_encoder(np.zeros((100, 3), np.float32))  # vectors without their spec
    with pytest.raises(FailedPrecondition):
        fit_encoder(events.head(20))


def test_publish_then_load_embeds_unit_vectors(world: dict, tmp_path: Path) -> None:
    events: pl.DataFrame = world["events"]
    db: Database = world["db"]
    artifacts = ArtifactStore(tmp_path / "artifacts")
    bundle = fit_encoder(events, dims=8, kind="pca")
    info = publish_encoder(db, artifacts, bundle, "shop")
    assert info.status == "READY" and info.kind == "pca" and info.dimensions == 8
    folder = artifacts.path(info.artifact_path or "")
    assert (folder / ENCODER_FILE).is_file() and (folder / BEHAVIOUR_SPEC_FILE).is_file()
    encoder = load_encoder(folder)
    latest = events["timestamp"].max()
    assert isinstance(latest, datetime)
    as_of = latest + timedelta(seconds=1)
    _ids, X = behaviour_vectors(events, as_of, fit_behaviour_spec(events))
    E = encoder.embed(X[:50])
    assert E.shape == (50, 8) and E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    # A tampered bundle is refused, not silently used.
    (folder / ENCODER_FILE).write_bytes(b"garbage")
    with pytest.raises(FailedPrecondition):
        load_encoder(folder)


def test_trainer_facade_publishes_and_lists(world: dict, tmp_path: Path) -> None:
    root: Path = world["root"]
    db: Database = world["db"]
    trainer = EncoderTrainer(db, root / "events", ArtifactStore(tmp_path / "artifacts"))
    stages: list[str] = []
    info = trainer.train("shop", 8, "pca", 500, lambda stage, f, msg: stages.append(stage))
    assert info.status is Status.READY, info.error
    assert info.metrics["fitted_rows"] > 0
    assert "publish" in stages and stages[-1] == "done"
    assert trainer.list_versions()[0].version == info.version
    with pytest.raises(NotFound):
        trainer.train("nope", 8, "pca", 500)
    with pytest.raises(InvalidArgument):
        trainer.train("shop", 1000, "pca", 500)


def test_interrupted_training_is_marked_failed(world: dict, tmp_path: Path) -> None:
    db: Database = world["db"]
    artifacts = ArtifactStore(tmp_path / "artifacts")
    trainer = EncoderTrainer(db, world["root"] / "events", artifacts)
    version = trainer.lifecycle.allocate(dataset="shop", dimensions=8, metrics={})
    assert version in trainer.recover_interrupted()
    row = next(v for v in trainer.list_versions() if v.version == version)
    assert row.status is Status.FAILED and row.error == INTERRUPTED


def test_choice_keeps_the_best_neighbour_recall() -> None:
    from foresight.encoder.candidates import Candidate, choose

    def cand(kind: str, silhouette: float, recall: float) -> Candidate:
        c = Candidate(kind, None, lambda X: X, lambda Z: Z, 0.0)  # type: ignore[arg-type]
        c.metrics = {f"{kind}.silhouette": silhouette, f"{kind}.neighbour_recall_10": recall}
        return c

    pca = cand("pca", 0.21, 0.77)
    winner, why = choose([pca, cand("autoencoder", 0.24, 0.63)], 100_000)
    assert winner.kind == "pca" and "best neighbour recall" in why
    assert choose([pca, cand("autoencoder", 0.17, 0.80)], 100_000)[0].kind == "autoencoder"
    # Silhouette breaks a tie; too few rows rule the autoencoder out.
    assert choose([pca, cand("autoencoder", 0.30, 0.77)], 100_000)[0].kind == "autoencoder"
    winner, why = choose([pca, cand("autoencoder", 0.17, 0.90)], 1_000)
    assert winner.kind == "pca" and "too few profiles" in why
    assert choose([pca], 100_000)[1].startswith("pca requested")
