"""ONNX export: exact float32 thresholds, parity (held-out, threshold and NaN rows), bundles."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from foresight import instance as inst
from foresight.errors import FailedPrecondition
from foresight.evaluation_report import ModelEvaluation
from foresight.features.spec import FeatureSpec
from foresight.storage.artifacts import ArtifactStore, sha256_file
from foresight.storage.bundles import MODEL_FILES
from services.trainer.export import (
    ExportError,
    check_parity,
    onnx_probabilities,
    parity_rows,
    rescale_log_odds,
    snap_thresholds_to_float32,
    split_thresholds,
    to_onnx,
    write_bundle,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trained() -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 6_000
    X = rng.normal(size=(n, 10)).astype(np.float32)
    X[:, 4] = np.round(X[:, 4] * 3)  # discrete values: many rows sit on thresholds
    X[:, 5] = np.abs(X[:, 5]) * 1000  # money-like
    X[rng.random(n) < 0.3, 6] = np.nan  # missing values
    X[:, 7] = (rng.random(n) < 0.5).astype(np.float32)  # flags (zero splits)
    logit = X[:, 0] + 0.5 * X[:, 4] + np.nan_to_num(X[:, 6]) + X[:, 7] - 0.001 * X[:, 5]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 31,
            "max_depth": 6,
            "verbosity": -1,
            "num_threads": 1,
        },
        lgb.Dataset(X[:5_000], y[:5_000]),
        num_boost_round=120,
    )
    return booster, X[5_000:]


def test_snapping_keeps_predictions_on_float32_inputs(
    trained: tuple[lgb.Booster, np.ndarray],
) -> None:
    booster, X = trained
    snapped = snap_thresholds_to_float32(booster)
    rows, _ = parity_rows(booster, X)
    np.testing.assert_array_equal(snapped.predict(rows), booster.predict(rows))
    for _, threshold in split_thresholds(snapped):
        assert float(np.float32(threshold)) == threshold


def test_parity_passes_on_held_out_threshold_and_nan_rows(
    trained: tuple[lgb.Booster, np.ndarray],
) -> None:
    booster, X = trained
    snapped = snap_thresholds_to_float32(booster)
    model = to_onnx(snapped, X.shape[1])
    report = check_parity(model, snapped, X)
    assert report.max_abs_diff <= 1e-5
    assert report.threshold_rows >= 3 * len(split_thresholds(snapped)) // 2
    assert report.rows > len(X) + report.threshold_rows


def test_float64_thresholds_fail_parity_on_threshold_rows(
    trained: tuple[lgb.Booster, np.ndarray],
) -> None:
    """Without snapping, rows on a split go the other way in float32 ONNX: the check sees it."""
    booster, X = trained
    model = to_onnx(booster, X.shape[1])
    held_out = np.abs(onnx_probabilities(model, X) - booster.predict(X)).max()
    assert held_out <= 1e-5  # ordinary rows do not reveal the problem
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(model, booster, X)


def test_a_tampered_onnx_model_fails_parity(trained: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, X = trained
    snapped = snap_thresholds_to_float32(booster)
    model = to_onnx(snapped, X.shape[1])
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    for attribute in node.attribute:
        if attribute.name == "class_weights":
            attribute.floats[5] += 0.5
        elif attribute.name == "class_weights_as_tensor":
            weights = numpy_helper.to_array(attribute.t).copy()
            weights[5] += 0.5
            attribute.t.CopyFrom(numpy_helper.from_array(weights))
    with pytest.raises(ExportError, match="max \\|p_onnx - p_lightgbm\\|"):
        check_parity(model, snapped, X)


def test_onnx_signature(trained: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, X = trained
    model = to_onnx(snap_thresholds_to_float32(booster), X.shape[1])
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == "features"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and dims[1].dim_value == X.shape[1]
    outputs = {o.name: o for o in model.graph.output}
    assert "probabilities" in outputs
    assert not any(n.op_type == "ZipMap" for n in model.graph.node)
    p = onnx_probabilities(model, X)
    assert p.shape == (len(X),) and np.all((p >= 0) & (p <= 1))


def test_rescale_log_odds_is_exact(trained: tuple[lgb.Booster, np.ndarray]) -> None:
    booster, X = trained
    moved = rescale_log_odds(booster, 0.8, -0.7)
    np.testing.assert_allclose(
        moved.predict(X, raw_score=True),
        0.8 * np.asarray(booster.predict(X, raw_score=True)) - 0.7,
        atol=1e-9,
    )
    # SHAP contributions scale with the trees; the shift lands in the expected value.
    before = np.asarray(booster.predict(X[:20], pred_contrib=True))
    after = np.asarray(moved.predict(X[:20], pred_contrib=True))
    np.testing.assert_allclose(after[:, :-1], 0.8 * before[:, :-1], atol=1e-9)
    np.testing.assert_allclose(after[:, -1], 0.8 * before[:, -1] - 0.7, atol=1e-9)


def _bundle_args(booster: lgb.Booster, n_features: int) -> dict:
    return {
        "onnx_model": to_onnx(booster, n_features),
        "booster": booster,
        "feature_spec": FeatureSpec(("x",), (), (), None),
        "instance": inst.from_dict(
            {"name": "x", "type": "CONVERSION", "goal": {"conditions": 'event_type = "x"'}}
        ),
        "evaluation": ModelEvaluation(auc=0.8, instance="x"),
    }


def test_bundle_is_checksummed_and_immutable(
    trained: tuple[lgb.Booster, np.ndarray], tmp_path: Path
) -> None:
    booster, X = trained
    store = ArtifactStore(tmp_path / "artifacts")
    folder = write_bundle(
        store,
        "models/x/v1",
        owner="trainer",
        **_bundle_args(booster, X.shape[1]),
        metadata={"version": 1},
    )
    manifest = store.verify("models/x/v1")
    assert set(manifest["files"]) == set(MODEL_FILES) and manifest["version"] == 1
    assert manifest["files"]["model.onnx"] == sha256_file(folder / "model.onnx")
    reloaded = lgb.Booster(model_file=str(folder / "model.txt"))
    np.testing.assert_array_equal(reloaded.predict(X), booster.predict(X))
    stored = ModelEvaluation.from_json(json.loads((folder / "evaluation.json").read_text()))
    assert (stored.auc, stored.instance) == (0.8, "x")
    with pytest.raises(FailedPrecondition, match="already exists"):
        write_bundle(store, "models/x/v1", owner="trainer", **_bundle_args(booster, X.shape[1]))
    (folder / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition, match=r"model\.onnx is missing or corrupt"):
        store.verify("models/x/v1")


def test_a_failed_write_leaves_no_bundle(
    trained: tuple[lgb.Booster, np.ndarray], tmp_path: Path
) -> None:
    booster, X = trained
    store = ArtifactStore(tmp_path / "artifacts")
    args = _bundle_args(booster, X.shape[1])
    args["evaluation"] = ModelEvaluation(auc=float("nan"))  # not valid JSON: fails midway
    with pytest.raises(ValueError):
        write_bundle(store, "models/x/v1", owner="trainer", **args)
    assert not store.path("models/x/v1").exists()
    assert list(store.path("models/x").iterdir()) == []
