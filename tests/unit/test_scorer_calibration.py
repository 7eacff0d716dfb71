"""The scorer applies the bundle's calibrator to the ONNX probabilities (and only then)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from foresight import instance as inst
from foresight.calibration import Calibrator
from foresight.evaluation_report import ModelEvaluation
from foresight.features.featurize import featurize
from foresight.features.labels import data_end
from foresight.features.spec_fit import fit_feature_spec
from foresight.storage.artifacts import ArtifactStore
from foresight.tools.generate import generate
from services.scorer.models import load_bundle
from services.trainer.export import to_onnx, write_bundle

pytestmark = pytest.mark.unit


def _bundle(tmp_path: Path, calibrator: Calibrator | None) -> tuple[Path, np.ndarray]:
    summary = generate(tmp_path / "gen", profiles=300, seed=5)
    events = pl.read_parquet(summary.events_path)
    config = inst.from_dict(
        {"name": "conv", "type": "CONVERSION", "goal": {"conditions": 'event_type = "x"'}}
    )
    as_of = data_end(events)
    spec = fit_feature_spec(events, None, config, as_of)
    X = featurize(events, None, as_of, spec).X.astype(np.float32)
    y = (np.random.default_rng(0).random(len(X)) < 0.3).astype(np.int8)
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(X, y), 10)
    store = ArtifactStore(tmp_path / "artifacts")
    folder = write_bundle(
        store,
        "models/conv/v1",
        owner="trainer",
        onnx_model=to_onnx(booster, X.shape[1]),
        booster=booster,
        feature_spec=spec,
        instance=config,
        evaluation=ModelEvaluation(auc=0.5),
        calibrator=calibrator,
    )
    return folder, X


def test_the_scorer_applies_the_bundles_calibrator(tmp_path: Path) -> None:
    calibrator = Calibrator(method="platt", a=0.5, b=-1.0)
    folder, X = _bundle(tmp_path, calibrator)
    model = load_bundle(folder, "conv", 1)
    assert model.calibrator == calibrator
    raw = model.predict_uncalibrated(X)
    served = model.predict(X)
    np.testing.assert_allclose(served, calibrator.apply(raw), rtol=1e-6)
    assert not np.allclose(served, raw)


def test_without_a_calibrator_the_model_output_is_served(tmp_path: Path) -> None:
    folder, X = _bundle(tmp_path, None)
    model = load_bundle(folder, "conv", 1)
    assert model.calibrator.method == "none"
    np.testing.assert_array_equal(model.predict(X), model.predict_uncalibrated(X))
