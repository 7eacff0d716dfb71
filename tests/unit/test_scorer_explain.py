"""Pattern-based TreeSHAP equals LightGBM's own pred_contrib."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from services.scorer import explain
from services.scorer.explain import FastTreeShap, TreeExplainer
from services.scorer.model_text import parse_model_text
from services.scorer.shap_tables import K_ZERO, go_left, leaf_tables

pytestmark = pytest.mark.unit


def _data(n: int, f: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.gamma(1.0, 10.0, size=(n, f)).astype(np.float32)
    X[:, 1] = rng.integers(0, 4, size=n)  # few distinct values: repeated splits on one feature
    X[rng.random(X.shape) < 0.2] = np.nan
    X[rng.random(X.shape) < 0.25] = 0.0
    signal = np.nan_to_num(X[:, :4]).sum(axis=1) + 8 * np.isnan(X[:, 2])
    y = (signal + rng.normal(size=n) * 5 > 30).astype(int)
    return X, y


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_fast_contributions_equal_lightgbm(params: dict[str, object]) -> None:
    X, y = _data(3000, 6)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 15,
            "max_depth": 5,
            "min_data_in_leaf": 10,
            "verbose": -1,
            **params,
        },
        lgb.Dataset(X, y),
        30,
    )
    probe = X[:600].copy()
    fast = FastTreeShap(parse_model_text(booster.model_to_string()))
    # Values exactly on thresholds, and LightGBM's "zero" boundary, hit every special case.
    for f, glob in fast.thresholds.items():
        probe[: len(glob[:50]), f] = glob[:50].astype(np.float32)
    probe[-5:, 0] = [K_ZERO, -K_ZERO, 0.0, -0.0, np.nan]
    native = np.asarray(booster.predict(probe, pred_contrib=True))[:, :-1]
    batch = fast.contributions(probe)
    np.testing.assert_allclose(batch, native, atol=1e-5)
    # The one-row pass of real-time scoring: the same tables, all trees at once.
    one = np.stack([fast.flat.contributions(row, fast.n_features) for row in probe])
    np.testing.assert_allclose(one, batch, rtol=1e-6, atol=1e-6)


def test_explainer_without_lightgbm_rebuilds_the_probability() -> None:
    X, y = _data(2000, 5, seed=1)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 7, "verbose": -1}, lgb.Dataset(X, y), 10
    )
    explainer = TreeExplainer(booster.model_to_string())
    assert explainer.fast is not None and explainer.n_features == 5
    for rows in (X[:1], X[:700]):
        np.testing.assert_allclose(
            explainer.contributions(rows),
            np.asarray(booster.predict(rows, pred_contrib=True))[:, :-1],
            atol=1e-5,
        )
    # Local accuracy: expected value + contributions = the model's raw score.
    np.testing.assert_allclose(
        explainer.probability(X[:50]), np.asarray(booster.predict(X[:50])), atol=1e-6
    )
    assert explainer.contributions(X[:0]).shape == (0, 5)
    row = X[3].copy()
    row[0] = np.inf  # treated as missing, as in the batch path
    np.testing.assert_allclose(
        explainer.contributions_one(row), explainer.contributions(row[None, :])[0], atol=1e-6
    )


def test_categorical_models_fall_back_to_lightgbm() -> None:
    X, y = _data(2000, 4, seed=2)
    X[:, 1] = np.random.default_rng(0).integers(0, 5, size=len(X))
    y = np.isin(X[:, 1], [1, 3]).astype(int)  # only a categorical split can learn this well
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 7,
            "verbose": -1,
            "min_data_per_group": 5,
            "cat_smooth": 1,
        },
        lgb.Dataset(X, y, categorical_feature=[1]),
        10,
    )
    explainer = TreeExplainer(booster.model_to_string())
    assert explainer.fast is None
    np.testing.assert_allclose(
        explainer.contributions(X[:20]),
        np.asarray(booster.predict(X[:20], pred_contrib=True))[:, :-1],
    )


def _brute_force(value: float, z: np.ndarray, pattern: int) -> list[float]:
    """Shapley values of value × Π_j (o_j if j ∈ S else z_j), by enumerating coalitions."""
    d = len(z)
    o = [(pattern >> j) & 1 for j in range(d)]

    def game(s: set[int]) -> float:
        return float(value * np.prod([o[j] if j in s else z[j] for j in range(d)]))

    out = []
    for i in range(d):
        others = [j for j in range(d) if j != i]
        out.append(
            sum(
                math.factorial(len(s))
                * math.factorial(d - len(s) - 1)
                / math.factorial(d)
                * (game(set(s) | {i}) - game(set(s)))
                for size in range(d)
                for s in itertools.combinations(others, size)
            )
        )
    return out


def test_leaf_tables_are_the_shapley_values_of_the_leaf_game() -> None:
    rng = np.random.default_rng(3)
    for d in (1, 2, 3, 4):
        z = rng.random((2, d))
        values = np.array([0.7, -1.3])
        tables = leaf_tables(values, z)
        for leaf in range(2):
            for pattern in range(1 << d):
                expected = _brute_force(float(values[leaf]), z[leaf], pattern)
                assert tables[leaf, pattern].tolist() == pytest.approx(expected)


@pytest.mark.filterwarnings("ignore:LightGBM binary classifier with TreeExplainer")
def test_reason_codes_match_the_shap_package() -> None:
    """An independent reference: the shap package's TreeExplainer on the same trees."""
    shap = pytest.importorskip("shap")
    X, y = _data(2000, 6, seed=3)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 15, "max_depth": 5, "verbose": -1},
        lgb.Dataset(X, y),
        25,
    )
    explainer = TreeExplainer(booster.model_to_string())
    assert explainer.fast is not None
    theirs = shap.TreeExplainer(booster).shap_values(X[:400])
    theirs = theirs[1] if isinstance(theirs, list) else theirs
    np.testing.assert_allclose(explainer.contributions(X[:400]), theirs, atol=1e-5)


def _numpy_reference(fast: FastTreeShap, X: np.ndarray) -> np.ndarray:
    """The compiled loop's arithmetic in plain NumPy: per tree, one row per distinct
    decision vector, its path bits per leaf, the table values summed per feature in
    float64, scattered back to every row."""
    out = np.zeros((X.shape[0], fast.n_features))
    for tree in fast.trees:
        decisions = go_left(tree, X[:, tree.features])
        patterns, inverse = np.unique(decisions, axis=0, return_inverse=True)
        bits = (patterns.astype(np.float32) @ tree.path_weights + tree.path_offset).astype(int)
        bits += np.arange(bits.shape[1]) << tree.path_width
        per_leaf = tree.by_path[bits].astype(np.float64).reshape(len(patterns), -1)
        phi = per_leaf @ tree.scatter.astype(np.float64)
        out[:, tree.features] += phi[inverse.reshape(-1)]
    return out


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}])
def test_compiled_loop_is_the_numpy_arithmetic_and_ignores_batch_order(
    params: dict[str, object],
) -> None:
    X, y = _data(4000, 7, seed=3)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": 31, "max_depth": 6, "verbose": -1, **params},
        lgb.Dataset(X, y),
        40,
    )
    fast = FastTreeShap(parse_model_text(booster.model_to_string()))
    # The loop decides by bins, `go_left` by values: values on every threshold, next to
    # it, and LightGBM's zero boundary, under each missing-value rule.
    for f, glob in fast.thresholds.items():
        on = glob[:300].astype(np.float32)
        X[: len(on), f] = on
        X[300 : 300 + len(on), f] = np.nextafter(on, np.float32(np.inf))
    X[-6:, 0] = [K_ZERO, -K_ZERO, 0.0, -0.0, np.nan, 2 * K_ZERO]
    batch = fast.contributions(X)
    # Bit for bit: each value the same float64 sum, tree by tree, however the loop groups
    # trees (a group's tables fill the loop's store here: ~4,000 patterns per tree).
    np.testing.assert_array_equal(batch, _numpy_reference(fast, X))
    # A row's values never depend on which rows share its batch, nor on their order.
    order = np.random.default_rng(0).permutation(len(X))
    assert np.array_equal(fast.contributions(X[order]), batch[order])
    assert np.array_equal(fast.contributions(X[17:18])[0], batch[17])


def test_the_warmed_loop_is_the_one_a_real_call_uses() -> None:
    # The scorer's forkserver warms the loop for its workers: a worker's first batch
    # must find that machine code, not compile (or load) another signature.
    from services.scorer import shap_kernel

    X, y = _data(500, 5, seed=4)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, y), 5)
    shap_kernel.warm()
    FastTreeShap(parse_model_text(booster.model_to_string())).contributions(X)
    assert shap_kernel._explain.signatures == [shap_kernel._SIGNATURE]


def _booster_text(seed: int, trees: int = 20) -> tuple[str, np.ndarray]:
    X, y = _data(1500, 5, seed=seed)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "seed": seed}
    return lgb.train(params, lgb.Dataset(X, y), trees).model_to_string(), X[:400]


def test_a_cached_explainer_is_the_built_one_and_skips_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, X = _booster_text(seed=3)
    built = TreeExplainer(text)
    first = TreeExplainer(text, tmp_path)  # builds it and keeps it
    (entry,) = tmp_path.glob("*.explainer")
    # Loaded, not built: parsing the model text would fail now.
    monkeypatch.setattr(explain, "parse_model_text", _no_parsing)
    second = TreeExplainer(text, tmp_path)
    assert second.fast is not None and second.fast is not first.fast
    # One copy of the leaf tables, as built: every tree's are a view into the flat ones.
    assert all(np.shares_memory(t.by_path, second.fast.flat.tables) for t in second.fast.trees)
    assert [t.by_path.tolist() for t in second.fast.trees] == [
        t.by_path.tolist()
        for t in built.fast.trees  # type: ignore[union-attr]
    ]
    for explainer in (first, second):
        assert explainer.sigmoid == built.sigmoid and explainer.n_features == built.n_features
        np.testing.assert_array_equal(explainer.contributions(X), built.contributions(X))
        np.testing.assert_array_equal(explainer.probability(X[:20]), built.probability(X[:20]))
    # Another model is another entry; an unreadable entry is built again and rewritten.
    other, _ = _booster_text(seed=4, trees=10)
    monkeypatch.undo()
    assert len(TreeExplainer(other, tmp_path).fast.trees) <= 10  # type: ignore[union-attr]
    assert len(list(tmp_path.glob("*.explainer"))) == 2
    entry.write_bytes(b"not a pickle")
    again = TreeExplainer(text, tmp_path)
    np.testing.assert_array_equal(again.contributions(X), built.contributions(X))
    assert entry.read_bytes() != b"not a pickle"


def _no_parsing(_text: str) -> None:
    raise AssertionError("the model text was parsed: the cached explainer was not used")


def test_the_explainer_cache_keeps_the_newest_entries_and_needs_its_folder(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "absent"
    TreeExplainer(_booster_text(seed=5, trees=3)[0], missing)
    assert not missing.exists()  # a worker without the scorer's folder only builds
    texts = [_booster_text(seed=10 + i, trees=2)[0] for i in range(explain.CACHE_KEEP + 2)]
    for i, text in enumerate(texts):
        TreeExplainer(text, tmp_path)
        for entry in tmp_path.glob("*.explainer"):  # distinct, increasing mtimes
            os.utime(entry, (entry.stat().st_atime, entry.stat().st_mtime - 1))
        assert len(list(tmp_path.glob("*.explainer"))) == min(i + 1, explain.CACHE_KEEP)
    # The newest are the ones kept: they load without parsing.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(explain, "parse_model_text", _no_parsing)
        for text in texts[-explain.CACHE_KEEP :]:
            assert TreeExplainer(text, tmp_path).fast is not None
        with pytest.raises(AssertionError, match="was parsed"):
            TreeExplainer(texts[0], tmp_path)


def test_trimming_the_explainer_cache_leaves_other_writers_temp_files(tmp_path: Path) -> None:
    # Another process writing the same cache has a hidden temp file that also ends in
    # `.explainer`; however old it looks, trimming must not delete it under its writer.
    writing = tmp_path / ".tmp-0123abcd-model.explainer"
    writing.write_bytes(b"half written")
    os.utime(writing, (0, 0))
    for i in range(explain.CACHE_KEEP + 1):
        TreeExplainer(_booster_text(seed=40 + i, trees=2)[0], tmp_path)
    assert writing.exists()
    assert len([p for p in tmp_path.glob("*.explainer") if p != writing]) == explain.CACHE_KEEP
    assert explain._modified(tmp_path / "removed-meanwhile.explainer") is None
