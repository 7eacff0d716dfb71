"""Export a trained model: ONNX with a parity check, and the atomic artifact bundle.

The ONNX graph (onnxmltools, no ZipMap) takes ``features`` float32 [N, F] and
returns ``probabilities`` float32 [N, 2]. ONNX tree ensembles keep thresholds
in float32 while LightGBM keeps them in float64, so a row sitting exactly on a
split can go the other way. `snap_thresholds_to_float32` removes that: every
threshold ``t`` becomes the largest float32 ``t' <= t``; for a float32 input
``x``, ``x <= t`` holds exactly when ``x <= t'``, so LightGBM's own
predictions on float32 features do not change, and the ONNX copy agrees.
`check_parity` then proves it on held-out rows, on rows placed exactly on
(and next to) every split threshold, and on rows with missing values; a
difference above 1e-5 fails the export.

The bundle's layout and tensor names are the contract in
`foresight.storage.bundles` (the scorer reads through the same module); it is
written through `ArtifactStore.publish`: a temporary folder owned by the
trainer, renamed into place in one step with SHA-256 checksums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
from onnx import ModelProto

from foresight import instance as instance_config
from foresight.calibration import Calibrator
from foresight.errors import ForesightError
from foresight.evaluation_report import ModelEvaluation
from foresight.factor_groups import FactorGroups
from foresight.features.spec import FeatureSpec
from foresight.instance import InstanceConfig
from foresight.storage.artifacts import ArtifactStore
from foresight.storage.bundles import MODEL_INPUT, MODEL_OUTPUT, write_model_bundle

__all__ = [
    "PARITY_TOLERANCE",
    "ExportError",
    "ParityReport",
    "check_parity",
    "parity_rows",
    "snap_thresholds_to_float32",
    "split_thresholds",
    "to_onnx",
    "write_bundle",
]

PARITY_TOLERANCE = 1e-5
# LightGBM reads |x| <= 1e-35f as zero and splits zero from the rest at ±1e-35f
# (a float32 constant: 1.0000000180025095e-35).
_LGBM_ZERO = float(np.float32(1e-35))
# ai.onnx opset the converter supports; ai.onnx.ml follows from it.
_TARGET_OPSET = 15


class ExportError(ForesightError):
    """The model could not be exported faithfully (e.g. ONNX disagrees with LightGBM)."""


@dataclass(frozen=True, slots=True)
class ParityReport:
    """Outcome of the ONNX-vs-LightGBM comparison."""

    rows: int
    threshold_rows: int
    max_abs_diff: float


# ------------------------------------------------------------------ model surgery


def _float32_floor(value: float) -> float:
    """The largest float32 that is <= value, as a Python float."""
    snapped = np.float32(value)
    if float(snapped) > value:
        snapped = np.nextafter(snapped, np.float32(-np.inf))
    return float(snapped)


def snap_thresholds_to_float32(booster: lgb.Booster) -> lgb.Booster:
    """A copy of `booster` whose numerical split thresholds are float32 values.

    Predictions on float32 inputs are unchanged (see the module docstring).
    Categorical splits (not used here) are left alone.
    """
    lines = booster.model_to_string().split("\n")
    out: list[str] = []
    decision_types: list[int] = []
    for line in lines:
        if line.startswith("tree_sizes="):
            # Byte offsets of the trees; the edited text has other lengths and
            # LightGBM parses the trees one by one without it.
            continue
        if line.startswith("decision_type="):
            decision_types = [int(v) for v in line.split("=", 1)[1].split()]
        elif line.startswith("threshold="):
            values = line.split("=", 1)[1].split()
            snapped: list[str] = []
            for i, raw in enumerate(values):
                categorical = bool(decision_types[i] & 1) if i < len(decision_types) else False
                snapped.append(raw if categorical else repr(_float32_floor(float(raw))))
            line = "threshold=" + " ".join(snapped)
        out.append(line)
    return lgb.Booster(model_str="\n".join(out))


def rescale_log_odds(booster: lgb.Booster, scale: float, shift: float) -> lgb.Booster:
    """A copy whose raw score is ``scale * raw + shift``, baked into the trees.

    Every leaf is multiplied by `scale`, and `shift` is added to all leaves of
    the first tree (every row lands in exactly one of them), so the change is
    exact in LightGBM, in model.txt and in the ONNX graph alike. TreeSHAP
    contributions scale by `scale`; the shift only moves the expected value.
    Used for Platt calibration after class weighting.
    """
    if (scale == 1.0 and shift == 0.0) or booster.num_trees() == 0:
        return booster
    copy = lgb.Booster(model_str=booster.model_to_string())
    for tree, info in enumerate(copy.dump_model()["tree_info"]):
        for leaf in range(int(info["num_leaves"])):
            value = copy.get_leaf_output(tree, leaf) * scale + (shift if tree == 0 else 0.0)
            copy.set_leaf_output(tree, leaf, value)
    return copy


# ------------------------------------------------------------------ ONNX


def to_onnx(booster: lgb.Booster, n_features: int) -> ModelProto:
    """Convert to ONNX: input ``features`` float32 [N, F], output ``probabilities`` [N, 2]."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model: ModelProto = convert_lightgbm(
        booster,
        name="foresight_propensity",
        initial_types=[(MODEL_INPUT, FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=_TARGET_OPSET,
    )
    outputs = {o.name: o for o in model.graph.output}
    if MODEL_OUTPUT not in outputs:
        raise ExportError(f"the ONNX converter produced no '{MODEL_OUTPUT}' output")
    # The converter declares the label output as [1]; it is one label per row.
    label = outputs.get("label")
    if label is not None:
        dims = label.type.tensor_type.shape.dim
        if len(dims) == 1:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    model.doc_string = "Foresight propensity model: features float32 [N, F] -> probabilities [N, 2]"
    return model


def _session(model: ModelProto | bytes) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx_probabilities(model: ModelProto | bytes, X: np.ndarray) -> np.ndarray:
    """Positive-class probabilities from the ONNX model."""
    session = _session(model)
    (probabilities,) = session.run(
        [MODEL_OUTPUT], {MODEL_INPUT: np.ascontiguousarray(X, np.float32)}
    )
    return np.asarray(probabilities)[:, 1].astype(np.float64)


# ------------------------------------------------------------------ parity


def split_thresholds(booster: lgb.Booster) -> list[tuple[int, float]]:
    """(feature, threshold) of every numerical split, from the booster's dump."""
    found: set[tuple[int, float]] = set()
    stack = [tree["tree_structure"] for tree in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" not in node:
            continue
        if node.get("decision_type") == "<=":
            found.add((int(node["split_feature"]), float(node["threshold"])))
        stack.append(node["left_child"])
        stack.append(node["right_child"])
    return sorted(found)


def parity_rows(
    booster: lgb.Booster,
    X_holdout: np.ndarray,
    *,
    max_holdout: int = 5_000,
    max_threshold_rows: int = 30_000,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Rows for the parity check: held-out rows, rows on every split threshold, NaN rows.

    For each split (feature f, threshold t) a held-out row gets f set to
    float32(t) and to the float32 neighbours on either side, so both branches
    of every split are exercised at the boundary. Returns (rows, threshold rows).
    """
    rng = np.random.default_rng(seed)
    X_holdout = np.asarray(X_holdout, dtype=np.float32)
    n, n_features = X_holdout.shape
    take = rng.choice(n, size=min(n, max_holdout), replace=False) if n else np.array([], int)
    base = X_holdout[take] if n else np.zeros((1, n_features), np.float32)
    parts: list[np.ndarray] = [base]
    splits = split_thresholds(booster)
    boundary: list[np.ndarray] = []
    for i, (feature, threshold) in enumerate(splits):
        if abs(threshold) <= _LGBM_ZERO:
            # LightGBM reads |x| <= 1e-35f as 0 (features never hold such values):
            # probe 0 and values just clear of it.
            values = np.array([0.0, 1e-30, -1e-30], dtype=np.float32)
        else:
            t32 = np.float32(threshold)
            values = np.array(
                [
                    t32,
                    np.nextafter(t32, np.float32(np.inf)),
                    np.nextafter(t32, np.float32(-np.inf)),
                ],
                dtype=np.float32,
            )
        rows = np.repeat(base[i % len(base)][None, :], len(values), axis=0)
        rows[:, feature] = values
        boundary.append(rows)
    threshold_rows = np.concatenate(boundary) if boundary else np.zeros((0, n_features), np.float32)
    if len(threshold_rows) > max_threshold_rows:
        threshold_rows = threshold_rows[
            rng.choice(len(threshold_rows), max_threshold_rows, replace=False)
        ]
    parts.append(threshold_rows)
    # Missing values in each feature, including ones never missing in training.
    nan_rows = np.repeat(base[: min(len(base), 8)], n_features, axis=0)
    per = min(len(base), 8)
    for f in range(n_features):
        nan_rows[f * per : (f + 1) * per, f] = np.nan
    parts.append(nan_rows)
    return np.concatenate(parts).astype(np.float32), len(threshold_rows)


def check_parity(
    model: ModelProto | bytes,
    booster: lgb.Booster,
    X_holdout: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> ParityReport:
    """Compare ONNX and LightGBM probabilities; raise ExportError above `tolerance`."""
    rows, threshold_rows = parity_rows(booster, X_holdout)
    expected = booster.predict(rows, num_threads=1)
    actual = onnx_probabilities(model, rows)
    diff = np.abs(actual - np.asarray(expected, dtype=np.float64))
    worst = float(np.nanmax(diff)) if len(diff) else 0.0
    if not np.all(np.isfinite(actual)) or math.isnan(worst) or worst > tolerance:
        bad = int(np.sum(~(diff <= tolerance)))
        raise ExportError(
            f"ONNX parity check failed: max |p_onnx - p_lightgbm| = {worst:.3g} > {tolerance:g} "
            f"on {bad} of {len(rows)} rows; the model was not published"
        )
    return ParityReport(rows=len(rows), threshold_rows=threshold_rows, max_abs_diff=worst)


# ------------------------------------------------------------------ bundle


def write_bundle(
    artifacts: ArtifactStore,
    relative: str,
    *,
    owner: str,
    onnx_model: ModelProto | bytes,
    booster: lgb.Booster,
    feature_spec: FeatureSpec,
    instance: InstanceConfig,
    evaluation: ModelEvaluation,
    calibrator: Calibrator | None = None,
    factor_groups: FactorGroups | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the model bundle atomically (owner's temp folder, checksums, rename); returns its path.

    Each record is written as its JSON document (layout: `foresight.storage.bundles`).
    """
    data = onnx_model if isinstance(onnx_model, bytes) else onnx_model.SerializeToString()
    with artifacts.publish(relative, metadata=metadata, owner=owner) as folder:
        write_model_bundle(
            folder,
            onnx_model=data,
            model_text=booster.model_to_string(),
            feature_spec=feature_spec.to_dict(),
            instance=instance_config.to_dict(instance),
            evaluation=evaluation.to_json_dict(),
            calibrator=None if calibrator is None else calibrator.model_dump(mode="json"),
            factor_groups=None if factor_groups is None else factor_groups.model_dump(mode="json"),
        )
    return artifacts.path(relative)
