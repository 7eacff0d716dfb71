"""Training: labels over rolling cutoffs, features without leakage, the data gate, LightGBM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest

from foresight import instance as inst
from foresight.calibration import Calibrator, choose_calibrator
from foresight.errors import FailedPrecondition, NotFound
from foresight.events.partitions import parts_by_shard
from foresight.events.store import EventStore
from foresight.features.featurize import featurize
from foresight.features.labels import label_counts
from foresight.features.spec import FeatureSpec
from foresight.features.spec_fit import fit_feature_spec
from foresight.shards import ShardRunner
from foresight.storage import catalog
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.db import Database
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow, ProfileRow
from foresight.tools.generate import generate
from services.trainer import shards
from services.trainer.boosting import (
    MAX_DEPTH,
    MAX_LEAVES,
    MAX_ROUNDS,
    class_weight,
    refit_lightgbm,
    search_space,
    train_lightgbm,
)
from services.trainer.shards import (
    LeakageDetected,
    ShardJob,
    audit_leakage,
    shard_features,
    shard_labels,
)
from services.trainer.streaming import held_out
from services.trainer.training import ModelTrainer

pytestmark = pytest.mark.unit

DATASET = "shop"


@dataclass
class World:
    """A generated dataset loaded into an event store, catalog and profile table."""

    db: Database
    store: EventStore
    artifacts: ArtifactStore
    trainer: ModelTrainer
    events: pl.DataFrame
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("training")
    summary = generate(root / "gen", profiles=3_000, seed=7)
    db = Database(f"sqlite:///{root / 'foresight.db'}")
    db.migrate()
    store = EventStore(root / "events", shards=4)
    events = pl.read_parquet(summary.events_path)
    parts = store.write(DATASET, events, [])
    catalog.record_import(db, DATASET, [p.catalogued() for p in parts])
    profiles = pl.read_parquet(summary.profiles_path)
    with db.session() as s:
        for row in profiles.to_dicts():
            pid = row.pop("profile_id")
            attrs = {
                k: v if isinstance(v, str | int | float | bool) else str(v) for k, v in row.items()
            }
            s.add(ProfileRow(profile_id=pid, attributes=attrs))
    artifacts = ArtifactStore(root / "artifacts")
    trainer = ModelTrainer(db, store, artifacts, workers=1)
    yield World(
        db,
        store,
        artifacts,
        trainer,
        store.scan(DATASET, catalog.catalogued_parts(db, DATASET)).collect(),
        root,
    )
    trainer.close()
    db.dispose()


def _config(name: str, **overrides: Any) -> inst.InstanceConfig:
    raw: dict[str, Any] = {
        "name": name,
        "type": "CONVERSION",
        "goal": {"conditions": 'event_type = "commerce.purchases"', "window_days": 30},
        "min_positives": 100,
        "min_negatives": 100,
    }
    raw.update(overrides)
    return inst.from_dict(raw)


def _create(world: World, config: inst.InstanceConfig) -> None:
    with world.db.session() as s:
        s.add(InstanceRow(name=config.name, dataset=DATASET, config=inst.to_dict(config)))


def _jobs(world: World) -> list[ShardJob]:
    parts = catalog.catalogued_parts(world.db, DATASET)
    return [
        ShardJob(str(world.store.root), world.store.shards, DATASET, k, tuple(v))
        for k, v in parts_by_shard(parts).items()
    ]


# ------------------------------------------------------------------ end to end


def test_train_publishes_a_ready_verified_model(world: World) -> None:
    config = _config("conv_e2e", profile_attributes=["loyalty_tier", "signup_date"])
    _create(world, config)
    seen: list[tuple[str, float]] = []
    info = world.trainer.train("conv_e2e", 2, lambda stage, f, _m: seen.append((stage, f)))

    assert info.status is Status.READY and info.current and info.version == 1
    assert info.auc is not None and info.auc > 0.6
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"labels", "features", "train", "evaluate", "export", "done"} <= {s for s, _ in seen}

    assert info.artifact_path == "models/conv_e2e/v1"
    manifest = world.artifacts.verify(info.artifact_path)
    assert set(manifest["files"]) == {
        "model.onnx",
        "model.txt",
        "feature_spec.json",
        "instance.json",
        "evaluation.json",
        "calibrator.json",
        "factor_groups.json",
    }
    evaluation = world.trainer.get_evaluation("conv_e2e")
    assert evaluation.parity is not None and evaluation.parity.max_abs_diff <= 1e-5
    assert evaluation.parity.threshold_rows > 0
    assert evaluation.training.leakage_audit_profiles > 0
    assert len(evaluation.trials) == 2
    assert int(evaluation.parameters["num_leaves"]) <= MAX_LEAVES
    assert int(evaluation.parameters["num_trees"]) <= MAX_ROUNDS
    # The served model is refit on every cutoff, the validation one included.
    assert evaluation.validation_cutoff == evaluation.cutoffs[-1]
    assert evaluation.validation_cutoff not in evaluation.training_cutoffs
    training = evaluation.training
    validation_rows = training.tuning_rows + training.evaluation_rows
    assert training.served_rows >= training.train_rows + validation_rows
    # Calibration was chosen on out-of-time rows and reported before and after.
    calibration = evaluation.calibrator
    assert calibration.method in {"none", "platt", "isotonic"}
    assert set(calibration.cv_brier) == {"none", "platt", "isotonic"}
    assert calibration.ece_before is not None and calibration.ece_after is not None
    assert calibration.brier_before is not None and calibration.brier_after is not None
    assert evaluation.population.eligible == evaluation.population.with_history

    # The bundle alone scores: spec + ONNX reproduce the stored model's inputs.
    folder = world.artifacts.path(info.artifact_path)
    spec = FeatureSpec.from_json((folder / "feature_spec.json").read_text())
    assert info.feature_count == len(spec.features)
    assert inst.from_dict(json.loads((folder / "instance.json").read_text())) == config
    profiles = pl.DataFrame(
        {"profile_id": ["p0000001"], "loyalty_tier": ["gold"], "signup_date": ["2020-01-01"]}
    )
    matrix = featurize(world.events, profiles, info.validation_cutoff or datetime.now(), spec)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"features": matrix.X[:50]})
    assert probabilities.shape == (min(50, matrix.X.shape[0]), 2)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    assert world.trainer.get_version("conv_e2e").version == 1
    assert [v.version for v in world.trainer.list_versions("conv_e2e")] == [1]


def test_unknown_instance_and_version_are_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        world.trainer.train("nope")
    _create(world, _config("conv_none"))
    with pytest.raises(NotFound, match="no trained model"):
        world.trainer.get_version("conv_none", 0)
    with pytest.raises(NotFound):
        world.trainer.get_evaluation("conv_none", 3)


def test_above_the_bound_the_evaluation_still_covers_the_validation_cutoff(world: World) -> None:
    config = _config("bounded")
    _create(world, config)
    eligible = world.trainer.validate_goal(config, DATASET).eligible
    bounded = ModelTrainer(world.db, world.store, world.artifacts, workers=1, sample_rows=1_500)
    try:
        info = bounded.train("bounded", 1)
        evaluation = bounded.get_evaluation("bounded")
    finally:
        bounded.close()
    assert info.status is Status.READY
    training = evaluation.training
    assert training.train_rows <= 1_500 < training.train_rows_before_sample
    # Tuning and calibration used a sample of the validation cutoff (at the training
    # rate); the evaluation covers every other eligible profile of it.
    assert 0 < training.tuning_rows < eligible // 4
    assert training.tuning_rows + training.evaluation_rows == eligible
    assert evaluation.validation_rows == training.evaluation_rows


def test_the_streamed_evaluation_sees_what_one_matrix_would(world: World) -> None:
    config = _config("streamed")
    cutoff = world.trainer.validate_goal(config, DATASET).cutoff
    spec = fit_feature_spec(world.events, None, config, cutoff)
    jobs = _jobs(world)
    labels = [shard_labels(job, config, [cutoff]).labels for job in jobs]
    parts = [
        shard_features(job, spec, [cutoff], f, None) for job, f in zip(jobs, labels, strict=True)
    ]
    X = np.vstack([p.X for p in parts])
    y = np.concatenate([p.y for p in parts])
    booster, _, _ = train_lightgbm(X, y, X, y, max_trials=1)
    held = held_out(
        ShardRunner(2),  # the shards run in worker processes
        jobs,
        spec,
        cutoff,
        [f.select("profile_id", "label") for f in labels],
        [None] * len(jobs),
        booster,
        Calibrator(),
        lambda *_: None,
    )
    np.testing.assert_array_equal(held.y, y)
    np.testing.assert_array_equal(held.raw, booster.predict(X))
    assert 0 < len(held.explained) <= len(y)
    np.testing.assert_array_equal(held.X_explained, X[held.explained])


# ------------------------------------------------------------------ labels


def test_labels_keep_every_negative_and_match_the_dry_run(world: World) -> None:
    config = _config("labels")
    check = world.trainer.validate_goal(config, DATASET)
    assert check.eligible == check.positives + check.negatives
    assert check.positives > 0 and check.negatives > 0
    # Shard by shard, the same counts as over the whole dataset at once.
    whole = label_counts(world.events, config.goal, config.population, check.cutoff)
    assert (whole.eligible, whole.positives, whole.negatives) == (
        check.eligible,
        check.positives,
        check.negatives,
    )
    per_shard = pl.concat(
        [shard_labels(job, config, [check.cutoff]).labels for job in _jobs(world)]
    )
    assert per_shard.height == check.eligible
    assert per_shard.filter(pl.col("label") == 0).height == check.negatives
    assert per_shard.get_column("profile_id").n_unique() == per_shard.height


def test_data_gate_fails_with_counts_and_advice(world: World) -> None:
    config = _config("gate", min_positives=1_000_000)
    _create(world, config)
    check = world.trainer.validate_goal(config, DATASET)
    assert not check.enough_data
    assert f"{check.positives} positive (need 1000000)" in check.message
    with pytest.raises(FailedPrecondition) as caught:
        world.trainer.train("gate")
    message = caught.value.message
    assert "positive (need 1000000)" in message and "eligible" in message
    assert "outcome window" in message and "population" in message
    failed = world.trainer.get_version("gate", 1)
    assert failed.status is Status.FAILED and failed.error == message
    assert not failed.current and failed.artifact_path is None


def test_too_little_history_is_a_failed_precondition(world: World) -> None:
    config = _config(
        "long_window", goal={"conditions": 'event_type = "commerce.purchases"', "window_days": 200}
    )
    _create(world, config)
    check = world.trainer.validate_goal(config, DATASET)
    assert not check.enough_data and "shorten the outcome window" in check.message
    with pytest.raises(
        FailedPrecondition, match="too little for a training and a validation cutoff"
    ):
        world.trainer.train("long_window")


# ------------------------------------------------------------------ leakage


def test_features_ignore_events_at_or_after_the_cutoff(world: World) -> None:
    config = _config("no_leak")
    cutoff = world.trainer.validate_goal(config, DATASET).cutoff
    spec = fit_feature_spec(world.events, None, config, cutoff)
    ids = world.events.get_column("profile_id").unique().sort().head(200)
    before = featurize(world.events, None, cutoff, spec, profile_ids=ids)
    # A burst of purchases exactly at and after the cutoff must change nothing.
    future = world.events.filter(pl.col("profile_id").is_in(ids.implode())).head(500)
    future = future.with_columns(
        pl.lit(cutoff).cast(future.schema["timestamp"]).alias("timestamp"),
        pl.lit("commerce.purchases").alias("event_type"),
        pl.lit(999.0).alias("value"),
    )
    later = future.with_columns(pl.col("timestamp") + timedelta(days=2))
    after = featurize(pl.concat([world.events, future, later]), None, cutoff, spec, profile_ids=ids)
    np.testing.assert_array_equal(before.X, after.X)
    audit_leakage(pl.concat([world.events, future]), None, cutoff, spec, ids)


def test_a_leaky_featurizer_fails_training(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    honest = featurize

    def peeking(
        events: pl.DataFrame, profiles: Any, as_of: datetime, spec: Any, profile_ids: Any = None
    ) -> Any:
        # Sees three days past the cutoff: exactly the bug the audit exists for.
        return honest(events, profiles, as_of + timedelta(days=3), spec, profile_ids=profile_ids)

    monkeypatch.setattr(shards, "featurize", peeking)
    _create(world, _config("leaky"))
    with pytest.raises(LeakageDetected, match="use events at or after the cutoff"):
        world.trainer.train("leaky", 1)
    failed = world.trainer.get_version("leaky", 1)
    assert failed.status is Status.FAILED and "leakage" in (failed.error or "")
    assert not world.artifacts.path("models/leaky/v1").exists()


# ------------------------------------------------------------------ process pool


def test_shards_run_in_a_process_pool_with_the_same_result(world: World) -> None:
    config = _config("pool")
    inline = world.trainer.validate_goal(config, DATASET)
    pooled_trainer = ModelTrainer(world.db, world.store, world.artifacts, workers=2)
    try:
        pooled = pooled_trainer.validate_goal(config, DATASET)
    finally:
        pooled_trainer.close()
    assert pooled == inline


# ------------------------------------------------------------------ LightGBM


def _synthetic(n: int, positive_rate: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[rng.random(n) < 0.2, 3] = np.nan
    logit = 1.5 * X[:, 0] - X[:, 1] + 0.5 * np.nan_to_num(X[:, 3])
    logit += np.log(positive_rate / (1 - positive_rate)) - 0.8
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return X, y


def test_search_space_is_bounded_and_deterministic() -> None:
    space = search_space(20)
    assert len(space) == 20 and space == search_space(20)
    assert len({json.dumps(c, sort_keys=True) for c in space}) == 20
    assert all(c["num_leaves"] <= MAX_LEAVES for c in space)
    assert search_space(4) == space[:4] and len(search_space(0)) == 1


def test_class_weighting_keeps_probabilities_calibrated() -> None:
    X, y = _synthetic(12_000, 0.05, seed=1)
    X_tune, y_tune = _synthetic(4_000, 0.05, seed=2)
    X_eval, y_eval = _synthetic(8_000, 0.05, seed=3)
    assert class_weight(y) > 5
    booster, trials, params = train_lightgbm(X, y, X_tune, y_tune, max_trials=2, threads=2)
    assert len(trials) == 2
    assert booster.num_trees() <= MAX_ROUNDS
    dump = booster.dump_model()
    assert all(t["num_leaves"] <= MAX_LEAVES for t in dump["tree_info"])
    assert params["max_depth"] == MAX_DEPTH and float(params["scale_pos_weight"]) > 5
    p = np.asarray(booster.predict(X_eval))
    # Weighting would inflate the mean probability several-fold without the prior correction.
    assert p.mean() < 2 * y_eval.mean()
    # The calibrator chosen on the tuning rows brings it to the observed rate.
    calibrator, _ = choose_calibrator(np.asarray(booster.predict(X_tune)), y_tune)
    assert abs(calibrator.apply(p).mean() - y_eval.mean()) < 0.01


def test_explanation_sample_caps_each_bucket_and_keeps_small_ones() -> None:
    from services.trainer.boosting import EXPLAIN_ROWS_PER_BUCKET, explanation_sample

    p = np.concatenate([np.full(12_000, 0.1), np.full(300, 0.5), np.full(40, 0.9)])
    rows = explanation_sample(p)
    assert len(rows) == EXPLAIN_ROWS_PER_BUCKET + 300 + 40
    assert np.all(np.diff(rows) > 0)
    assert set(range(12_000, 12_340)) <= set(rows.tolist())


def test_refit_on_the_latest_cutoff_tells_long_dormancy_apart() -> None:
    """Dormancy seen only at the latest cutoff: the refit model separates 212 from 256 days.

    Early cutoffs have little history (dormancy at most 150 days); at the latest
    one, profiles dormant about 200-230 days often come back, those dormant
    longer never do. A model fit on the early cutoffs alone scores 212 and 256
    alike; the served model, refit with the latest cutoff, does not.
    """
    rng = np.random.default_rng(3)
    early = rng.uniform(0, 150, 6_000)
    late = rng.uniform(0, 300, 3_000)
    y_early = (rng.random(early.size) < np.where(early < 60, 0.5, 0.1)).astype(np.int8)
    comes_back = (late > 190) & (late < 235)
    p_late = np.where(late < 60, 0.5, np.where(comes_back, 0.6, 0.02))
    y_late = (rng.random(late.size) < p_late).astype(np.int8)
    X_early = early.reshape(-1, 1).astype(np.float32)
    X_late = late.reshape(-1, 1).astype(np.float32)
    booster, _, chosen = train_lightgbm(X_early, y_early, X_late[:1500], y_late[:1500])
    probe = np.array([[212.0], [256.0]], dtype=np.float32)
    before = booster.predict(probe)
    assert before[0] == pytest.approx(before[1])
    served = refit_lightgbm(np.vstack([X_early, X_late]), np.concatenate([y_early, y_late]), chosen)
    after = served.predict(probe)
    assert after[0] > after[1] + 0.1
