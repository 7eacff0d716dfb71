"""Reason codes: exact path-dependent TreeSHAP of the LightGBM model, fast for batches.

LightGBM's C++ TreeSHAP (`predict(pred_contrib=True)`) costs O(leaves × depth²)
per tree and row: with the trainer's bounds (31 leaves, depth 6, a few hundred
trees) about a millisecond per row and core, far too slow for a million
profiles. Batch scoring computes the same numbers another way:

1. A tree's SHAP values for a row depend only on which side of each of the
   tree's splits the row falls. Rows are binned per feature against the
   model's thresholds (NaN and zero get their own bins, since missing-value
   rules treat them specially), so rows with the same bins in a tree's
   features take the same path decisions everywhere in that tree. Per tree,
   the rows collapse to a few hundred or thousand distinct patterns.
2. For a leaf with d distinct path features, path-dependent TreeSHAP reduces
   to a product game: leaf value × Π over path features of (1 if the row
   satisfies the feature's splits, else the cover fraction) when the feature
   is "present". Its Shapley values depend only on the d-bit pattern of
   satisfied features, so they are tabulated once per leaf (≤ 2^6 × 6 values).
3. Per tree: distinct patterns → path bits per leaf → table lookups → one
   small matrix product into the tree's features → scattered back to rows.

The result equals LightGBM's `pred_contrib` up to float rounding (float32
tables; the tests hold it to 1e-5), about 10× faster per core on the
trainer's models. The trees are read from model.txt directly, so the scorer
process never imports LightGBM (which pulls in pandas, scikit-learn and SciPy:
~120 MB of RSS); only a model this does not cover (categorical splits, linear
trees, averaged output) falls back to LightGBM's `pred_contrib`. At load,
models.py checks that expected value + contributions give ONNX's probability.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("foresight.scorer.explain")

# LightGBM's kZeroThreshold is the float literal 1e-35f held in a double: |x| ≤ it is "zero".
K_ZERO = float(np.float32(1e-35))
MAX_DEPTH = 12  # deeper paths: tables of 2^depth rows get large, use LightGBM

_MISSING = {"None": 0, "Zero": 1, "NaN": 2}


class Unsupported(Exception):
    """The model has a structure the fast path does not handle."""


@dataclass
class _Tree:
    """One tree, prepared for pattern-based TreeSHAP."""

    features: np.ndarray  # [m] model columns the tree splits on
    luts: list[np.ndarray]  # per feature: global bin code → local bin (int16)
    multipliers: list[int]  # per feature: mixed-radix weight of its local bin in the key
    key_space: int  # product of the local radices
    node_column: np.ndarray  # [N] position in `features` of each internal node's feature
    node_threshold32: np.ndarray  # [N] float32: largest float32 ≤ the threshold
    node_default_left: np.ndarray  # [N] bool
    node_missing: np.ndarray  # [N] 0 None, 1 Zero, 2 NaN
    path_weights: np.ndarray  # [N, L] float32: Σ ±2^k over the leaf's path nodes
    path_offset: np.ndarray  # [L]: 2^k for every right turn, so bits = decisions @ weights + offset
    path_width: int  # K: bits of a path (the tree's depth)
    by_path: np.ndarray  # [L × 2^K, D] float32: Shapley values per leaf and path bits
    scatter: np.ndarray  # [L × D, m] float32: (leaf, slot) → tree feature column


def _shapley_weights(d: int) -> np.ndarray:
    """w[s] = s! (d - s - 1)! / d! for coalitions of size s among d players."""
    return np.array(
        [math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) for s in range(d)]
    )


def leaf_tables(values: np.ndarray, zero_fractions: np.ndarray) -> np.ndarray:
    """Shapley values [L, 2^d, d] of L leaves with d path features, for every pattern.

    A leaf's term of f_x(S) is value × Π_j (o_j if j ∈ S else z_j), with o_j ∈ {0, 1}
    (does x satisfy feature j's splits on the path) and z_j its cover fraction. Player
    i's Shapley value is value × (o_i − z_i) × Σ_{S ⊆ O∖{i}} w(|S|) Π_{j ∉ S ∪ {i}} z_j,
    which depends on x only through the pattern O of satisfied features.
    """
    d = zero_fractions.shape[1]
    subsets = np.arange(1 << d)
    bits = (subsets[:, None] >> np.arange(d)[None, :]) & 1  # [2^d, d]: j ∈ s
    sizes = bits.sum(axis=1)
    weights = np.zeros(1 << d)
    valid_size = sizes < d
    weights[valid_size] = _shapley_weights(d)[sizes[valid_size]]
    player = np.eye(d, dtype=bool)  # [i, j]: j == i
    # rest[l, i, s] = Π_{j ∉ s, j ≠ i} z_j
    absent = (bits[None, :, :] == 0) & ~player[:, None, :]  # [i, s, j]
    factors = np.where(absent[None], zero_fractions[:, None, None, :], 1.0)
    rest = factors.prod(axis=3)
    without_i = bits.T == 0  # [i, s]: i ∉ s
    g = rest * (without_i * weights[None, :])[None]  # [l, i, s]
    within = (subsets[None, :] & ~subsets[:, None]) == 0  # [b, s]: s ⊆ b
    sums = np.einsum("bs,lis->lbi", within.astype(np.float64), g)
    satisfied = bits.astype(np.float64)  # [b, i]: o_i in pattern b
    phi: np.ndarray = values[:, None, None] * (satisfied[None] - zero_fractions[:, None, :]) * sums
    return phi


def _float32_floor(values: np.ndarray) -> np.ndarray:
    """The largest float32 ≤ each double (so float32 x ≤ t32 ⇔ x ≤ t)."""
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float32)
    above = rounded.astype(np.float64) > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def configure_native_threads() -> None:
    """One OpenBLAS thread: the small matrix products here gain nothing from more, and
    idle BLAS threads spin on cores the shard threads need (2-3× slower on 2 cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _count(node: dict[str, Any]) -> float:
    return float(node["internal_count"] if "split_index" in node else node["leaf_count"])


def _prepare_tree(
    structure: dict[str, Any], thresholds: dict[int, np.ndarray], max_depth: int
) -> tuple[_Tree, list[tuple[int, float, list[float], np.ndarray]]]:
    """The tree's arrays, and per leaf (leaf, value, cover fractions, pattern of each path
    bits value) for the Shapley tables still to fill."""
    nodes: list[dict[str, Any]] = []
    leaves: list[tuple[float, list[tuple[int, bool]]]] = []  # value, [(node, went_left)]
    counts: dict[int, float] = {}

    def walk(node: dict[str, Any], path: list[tuple[int, bool]]) -> None:
        if "split_index" not in node:
            if "leaf_coeff" in node:
                raise Unsupported("linear trees")
            leaves.append((float(node["leaf_value"]), path))
            return
        if node.get("decision_type", "<=") != "<=":
            raise Unsupported("categorical split")
        index = len(nodes)
        nodes.append(node)
        counts[index] = _count(node)
        walk(node["left_child"], [*path, (index, True)])
        walk(node["right_child"], [*path, (index, False)])

    walk(structure["tree_structure"], [])
    features = sorted({int(n["split_feature"]) for n in nodes})
    column = {f: i for i, f in enumerate(features)}
    luts: list[np.ndarray] = []
    radices: list[int] = []
    for f in features:
        splits = [n for n in nodes if int(n["split_feature"]) == f]
        own = np.unique([float(n["threshold"]) for n in splits])
        missing = {_MISSING[str(n.get("missing_type", "None"))] for n in splits}
        # Global code = position × 4 + zero × 2 + nan (see FastTreeShap._codes). The local
        # bin keeps the position among this tree's thresholds, and the zero / NaN flags
        # only where a split of this tree treats them specially.
        glob = thresholds[f]
        upper = np.append(glob, np.inf)  # global position g covers (glob[g-1], glob[g]]
        position = np.searchsorted(own, upper, side="left")
        positions = len(own) + 1
        zero_radix = 2 if 1 in missing else 1
        nan_radix = 2 if 2 in missing else 1
        codes = np.arange(len(upper) * 4)
        local = position[codes // 4]
        if zero_radix == 2:
            local = local + positions * ((codes >> 1) & 1)
        if nan_radix == 2:
            local = local + positions * zero_radix * (codes & 1)
        luts.append(local.astype(np.int16))  # ≤ 4 × (splits + 1) local bins: small
        radices.append(positions * zero_radix * nan_radix)
    multipliers = [int(m) for m in np.cumprod([1, *radices[:-1]], dtype=np.float64)]
    key_space = int(np.prod(np.array(radices, dtype=np.float64))) if radices else 1
    if key_space >= 2**62:
        raise Unsupported("too many distinct split patterns for a 64-bit key")

    n_leaves = len(leaves)
    depth = max((len(p) for _, p in leaves), default=0)
    if depth > max_depth:
        raise Unsupported(f"depth {depth}")
    width = max(depth, 1)
    path_weights = np.zeros((len(nodes), n_leaves), dtype=np.float32)
    path_offset = np.zeros(n_leaves, dtype=np.float32)
    by_path = np.zeros((n_leaves << width, width), dtype=np.float32)
    scatter = np.zeros((n_leaves * width, max(len(features), 1)), dtype=np.float32)
    pending: list[tuple[int, float, list[float], np.ndarray]] = []
    for leaf, (value, path) in enumerate(leaves):
        slots: dict[int, int] = {}
        fractions: list[float] = []
        path_slots: list[int] = []
        for k, (node, left) in enumerate(path):
            f = int(nodes[node]["split_feature"])
            child = (
                counts[path[k + 1][0]]
                if k + 1 < len(path)
                else _count(nodes[node]["left_child" if left else "right_child"])
            )
            fraction = child / counts[node] if counts[node] > 0 else 0.0
            if f not in slots:
                slots[f] = len(slots)
                fractions.append(1.0)
            fractions[slots[f]] *= fraction
            path_slots.append(slots[f])
            # went_k = decision if the path goes left here, else 1 − decision
            path_weights[node, leaf] += (1 << k) if left else -(1 << k)
            if not left:
                path_offset[leaf] += 1 << k
        d = len(slots)
        if not d:
            continue
        # Path bits (which path nodes the row agrees with) → pattern of satisfied features.
        bits = np.arange(1 << len(path))
        failed = np.zeros(len(bits), dtype=np.int64)
        for k, slot in enumerate(path_slots):
            failed |= (((bits >> k) & 1) == 0).astype(np.int64) << slot
        patterns = ((1 << d) - 1) & ~failed
        pending.append((leaf, value, fractions, patterns))
        for f, slot in slots.items():
            scatter[leaf * width + slot, column[f]] = 1.0
    tree = _Tree(
        features=np.array(features, dtype=np.int64),
        luts=luts,
        multipliers=multipliers,
        key_space=key_space,
        node_column=np.array([column[int(n["split_feature"])] for n in nodes], dtype=np.int64),
        node_threshold32=_float32_floor(np.array([float(n["threshold"]) for n in nodes])),
        node_default_left=np.array([bool(n.get("default_left", False)) for n in nodes]),
        node_missing=np.array(
            [_MISSING[str(n.get("missing_type", "None"))] for n in nodes], dtype=np.int64
        ),
        path_weights=path_weights,
        path_offset=path_offset,
        path_width=width,
        by_path=by_path,
        scatter=scatter,
    )
    return tree, pending


def _decisions(tree: _Tree | _Flat, values: np.ndarray) -> np.ndarray:
    """Go-left decision [U, N] at every internal node, exactly as LightGBM decides.

    Values are float32, so `x <= threshold` is compared against the largest
    float32 not above the double threshold: the same answer without widening.
    """
    x = values[:, tree.node_column]
    nan = np.isnan(x)
    missing = tree.node_missing[None, :]
    # LightGBM reads dense rows sparsely, so |x| ≤ kZeroThreshold arrives as 0.0;
    # NaN counts as 0.0 too unless the split's missing type is NaN.
    zero = (np.abs(x) <= np.float32(K_ZERO)) | (nan & (missing != 2))
    x = np.where(zero, np.float32(0.0), x)
    default = ((missing == 1) & zero) | ((missing == 2) & nan)
    with np.errstate(invalid="ignore"):
        left = x <= tree.node_threshold32[None, :]
    return np.where(default, tree.node_default_left[None, :], left)


@dataclass
class _Flat:
    """Every tree's nodes and leaves in flat arrays, to explain one row in one pass.

    Batch scoring groups rows by pattern tree by tree; for a single row that is
    a few NumPy calls per tree (~45 ms for 242 trees). Here the same decisions,
    path bits and leaf tables are evaluated for all trees at once (~1 ms): node
    arrays are concatenated, path bits come from a sparse (node, leaf, ±2^k)
    list, and the leaf tables of all trees share one array.
    """

    node_column: np.ndarray  # [N] model column of each node's split
    node_threshold32: np.ndarray  # [N]
    node_default_left: np.ndarray  # [N]
    node_missing: np.ndarray  # [N]
    entry_node: np.ndarray  # [E] node of each (node, leaf) path entry
    entry_leaf: np.ndarray  # [E] global leaf
    entry_weight: np.ndarray  # [E] ±2^k
    leaf_offset: np.ndarray  # [L] path bits offset
    leaf_row: np.ndarray  # [L] row of (leaf, bits 0) in `tables`
    tables: np.ndarray  # [Σ L·2^K, D] every tree's by_path, padded to the widest
    slot_column: np.ndarray  # [L·D] model column of each (leaf, slot); n_features = none

    @classmethod
    def of(cls, trees: list[_Tree], n_features: int) -> _Flat:
        """Concatenate the trees; each tree's `by_path` becomes a view into `tables`."""
        width = max((t.path_width for t in trees), default=1)
        tables = np.zeros((sum(len(t.by_path) for t in trees), width), dtype=np.float32)
        nodes = leaves = row = 0
        entry_node, entry_leaf, entry_weight, leaf_row, slot_column = [], [], [], [], []
        for tree in trees:
            n_leaves, k = len(tree.path_offset), tree.path_width
            tables[row : row + len(tree.by_path), :k] = tree.by_path
            node, leaf = np.nonzero(tree.path_weights)
            entry_node.append(node + nodes)
            entry_leaf.append(leaf + leaves)
            entry_weight.append(tree.path_weights[node, leaf])
            leaf_row.append(row + (np.arange(n_leaves, dtype=np.int64) << k))
            columns = np.full((n_leaves, width), n_features, dtype=np.int64)
            slot, column = np.nonzero(tree.scatter)
            columns[slot // k, slot % k] = tree.features[column]
            slot_column.append(columns.reshape(-1))
            size = len(tree.by_path)
            tree.by_path = tables[row : row + size, :k]  # shared, not copied
            row += size
            nodes += len(tree.node_column)
            leaves += n_leaves

        def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return cls(
            node_column=joined([t.features[t.node_column] for t in trees], np.int64),
            node_threshold32=joined([t.node_threshold32 for t in trees], np.float32),
            node_default_left=joined([t.node_default_left for t in trees], np.bool_),
            node_missing=joined([t.node_missing for t in trees], np.int64),
            entry_node=joined(entry_node, np.int64),
            entry_leaf=joined(entry_leaf, np.int64),
            entry_weight=joined(entry_weight, np.float64),
            leaf_offset=joined([t.path_offset for t in trees], np.float64),
            leaf_row=joined(leaf_row, np.int64),
            tables=tables,
            slot_column=joined(slot_column, np.int64),
        )

    def contributions(self, x: np.ndarray, n_features: int) -> np.ndarray:
        """SHAP contributions [F] of one float32 row (no bias column)."""
        decisions = _decisions(self, x[None, :])[0].astype(np.float64)
        bits = np.bincount(
            self.entry_leaf,
            weights=decisions[self.entry_node] * self.entry_weight,
            minlength=len(self.leaf_row),
        )
        rows = self.leaf_row + (bits + self.leaf_offset).astype(np.int64)
        per_slot = self.tables[rows].reshape(-1).astype(np.float64)
        return np.bincount(self.slot_column, weights=per_slot, minlength=n_features + 1)[
            :n_features
        ]


def _expected_value(node: dict[str, Any]) -> float:
    """Cover-weighted mean leaf value of a tree (the part of the score no feature explains)."""
    if "split_index" not in node:
        return float(node["leaf_value"])
    left, right = node["left_child"], node["right_child"]
    total = _count(left) + _count(right)
    if total <= 0:
        return 0.5 * (_expected_value(left) + _expected_value(right))
    return (_count(left) * _expected_value(left) + _count(right) * _expected_value(right)) / total


def _distinct(key: np.ndarray, key_space: int) -> tuple[np.ndarray, np.ndarray]:
    """One representative row per distinct key, and each row's index among them."""
    n = len(key)
    if key_space <= 2 * n:
        # Small key space: a dense table, O(n + key_space), no sort.
        slot = np.full(key_space, -1, dtype=np.int64)
        slot[key] = np.arange(n)
        present = np.flatnonzero(slot >= 0)
        compact = np.empty(key_space, dtype=np.int64)
        compact[present] = np.arange(len(present))
        return slot[present], compact[key]
    order = np.argsort(key)
    ordered = key[order]
    first = np.empty(n, dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return order[first], inverse


@dataclass(frozen=True)
class TextModel:
    """What the explainer needs from a LightGBM text model (model.txt)."""

    n_features: int
    sigmoid: float  # probability = 1 / (1 + exp(-sigmoid × raw score))
    trees: list[dict[str, Any]]  # dump_model()-shaped {"tree_structure": nested nodes}


def _node(arrays: dict[str, list[str]], index: int) -> dict[str, Any]:
    """The nested node `index` (≥ 0 internal, < 0 leaf ~index) in dump_model's shape."""
    if index < 0:
        leaf = ~index
        counts = arrays.get("leaf_count")
        return {
            "leaf_value": float(arrays["leaf_value"][leaf]),
            "leaf_count": float(counts[leaf]) if counts else 0.0,
        }
    decision = int(arrays["decision_type"][index])
    if decision & 1:
        raise Unsupported("categorical split")
    return {
        "split_index": index,
        "split_feature": int(arrays["split_feature"][index]),
        "threshold": float(arrays["threshold"][index]),
        "decision_type": "<=",
        "default_left": bool(decision & 2),
        "missing_type": ("None", "Zero", "NaN")[(decision >> 2) & 3],
        "internal_count": float(arrays["internal_count"][index]),
        "left_child": _node(arrays, int(arrays["left_child"][index])),
        "right_child": _node(arrays, int(arrays["right_child"][index])),
    }


def parse_model_text(text: str) -> TextModel:
    """Read the trees of a LightGBM text model without importing LightGBM.

    LightGBM drags pandas, scikit-learn and SciPy into the process (~120 MB of
    RSS); the scorer only needs the tree arrays this format spells out.
    """
    header: dict[str, str] = {}
    blocks: list[dict[str, list[str]]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)  # type: ignore[arg-type]
            continue
        if line.startswith("end of trees"):
            break
        key, sep, value = line.partition("=")
        if not sep:
            continue
        (header if current is None else current)[key] = value
    if (
        int(header.get("num_class", "1")) != 1
        or int(header.get("num_tree_per_iteration", "1")) != 1
    ):
        raise Unsupported("multiclass")
    if "average_output" in header or any(
        line.strip() == "average_output" for line in text.splitlines()[:40]
    ):
        raise Unsupported("averaged (random forest) output")
    sigmoid = 1.0
    for part in header.get("objective", "").split():
        if part.startswith("sigmoid:"):
            sigmoid = float(part.split(":", 1)[1])
    trees: list[dict[str, Any]] = []
    for raw in blocks:
        block: dict[str, Any] = dict(raw)
        if block.get("is_linear", "0") != "0":
            raise Unsupported("linear trees")
        if int(block["num_leaves"]) == 1:
            trees.append(
                {"tree_structure": {"leaf_value": float(block["leaf_value"]), "leaf_count": 0.0}}
            )
            continue
        arrays = {k: str(v).split() for k, v in block.items()}
        trees.append({"tree_structure": _node(arrays, 0)})
    return TextModel(int(header["max_feature_idx"]) + 1, sigmoid, trees)


class FastTreeShap:
    """Pattern-based exact TreeSHAP of a whole model."""

    def __init__(self, model: TextModel) -> None:
        self.n_features = model.n_features
        infos = model.trees
        collected: dict[int, list[float]] = {}
        for info in infos:
            stack = [info["tree_structure"]]
            while stack:
                node = stack.pop()
                if "split_index" in node:
                    collected.setdefault(int(node["split_feature"]), []).append(
                        float(node["threshold"])
                    )
                    stack += [node["left_child"], node["right_child"]]
        self.thresholds = {f: np.unique(v) for f, v in collected.items()}
        prepared = [_prepare_tree(info, self.thresholds, MAX_DEPTH) for info in infos]
        # Fill the leaf tables in batches of leaves with the same number of path features.
        by_width: dict[int, list[tuple[_Tree, int, float, list[float], np.ndarray]]] = {}
        for tree, pending in prepared:
            for leaf, value, fractions, patterns in pending:
                by_width.setdefault(len(fractions), []).append(
                    (tree, leaf, value, fractions, patterns)
                )
        for d, everything in by_width.items():
            # Batches of leaves keep the [L, d, 2^d, d] temporaries small.
            for first in range(0, len(everything), 512):
                group = everything[first : first + 512]
                tables = leaf_tables(
                    np.array([g[2] for g in group]),
                    np.array([g[3] for g in group], dtype=np.float64),
                )
                for (tree, leaf, _, _, patterns), table in zip(group, tables, strict=True):
                    start = leaf << tree.path_width
                    tree.by_path[start : start + len(patterns), :d] = table[patterns]
        # Single-leaf trees explain nothing (their value is all expected value).
        self.trees = [tree for tree, _ in prepared if len(tree.features)]
        self.flat = _Flat.of(self.trees, self.n_features)
        self.expected_value = sum(_expected_value(info["tree_structure"]) for info in infos)

    def _codes(self, X: np.ndarray) -> dict[int, np.ndarray]:
        """Per split feature: position × 4 + zero × 2 + nan, for every row.

        Position is among all of the feature's thresholds, with NaN and
        |x| ≤ kZeroThreshold counted as 0.0 (what LightGBM compares unless the
        split's missing type is NaN); zero flags that 0.0. Together they fix the
        decision at every split on the feature, whatever its missing type.
        """
        codes: dict[int, np.ndarray] = {}
        for f, glob in self.thresholds.items():
            x = X[:, f].astype(np.float64)
            nan = np.isnan(x)
            x[nan] = 0.0
            zero = np.abs(x) <= K_ZERO
            x[zero] = 0.0  # LightGBM reads dense rows sparsely: tiny values become 0.0
            position = np.searchsorted(glob, x, side="left")
            codes[f] = position * 4 + zero * 2 + nan
        return codes

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP contributions [n, F] on the raw score (no bias column)."""
        n = X.shape[0]
        out = np.zeros((self.n_features, n))  # feature-major: each feature's column is contiguous
        if n == 0:
            return out.T
        codes = self._codes(X)
        for tree in self.trees:
            key = np.zeros(n, dtype=np.int64)
            for j, f in enumerate(tree.features):
                local = tree.luts[j][codes[int(f)]]
                key += local if tree.multipliers[j] == 1 else local * np.int64(tree.multipliers[j])
            representatives, inverse = _distinct(key, tree.key_space)
            values = X[representatives[:, None], tree.features[None, :]]
            phi = np.ascontiguousarray(self._tree_phi(tree, values).T)  # [m, U]
            for j, f in enumerate(tree.features):
                out[f] += phi[j][inverse]
        return out.T

    @staticmethod
    def _tree_phi(tree: _Tree, values: np.ndarray) -> np.ndarray:
        """Per distinct pattern: the tree's SHAP values on its own features [U, m]."""
        u = values.shape[0]
        decisions = _decisions(tree, values).astype(np.float32)
        bits = (decisions @ tree.path_weights + tree.path_offset).astype(np.int64)  # [U, L]
        bits += (np.arange(bits.shape[1], dtype=np.int64) << tree.path_width)[None, :]
        per_leaf = tree.by_path[bits]  # [U, L, D]
        return np.asarray(per_leaf.reshape(u, -1) @ tree.scatter, dtype=np.float64)


class TreeExplainer:
    """TreeSHAP contributions and raw scores of one LightGBM text model (thread-safe).

    The pattern tables need no LightGBM at all; a model they cannot handle
    (categorical splits, linear trees, averaged output) is explained by
    LightGBM's own `pred_contrib`, imported only then.
    """

    def __init__(self, model_text: str) -> None:
        self.fast: FastTreeShap | None = None
        self._booster: Any = None
        try:
            parsed = parse_model_text(model_text)
            self.fast = FastTreeShap(parsed)
            self.n_features = parsed.n_features
            self.sigmoid = parsed.sigmoid
        except Unsupported as exc:
            import lightgbm as lgb  # heavy (pandas, scikit-learn): only for models that need it

            log.info("pattern TreeSHAP not available (%s); using LightGBM pred_contrib", exc)
            self._booster = lgb.Booster(model_str=model_text)
            self.n_features = self._booster.num_feature()
            self.sigmoid = 1.0

    def contributions(self, X: np.ndarray, threads: int = 1) -> np.ndarray:
        """Contributions [n, F] on the raw (log-odds) score; the bias column is dropped."""
        if X.shape[0] == 0:
            return np.zeros((0, self.n_features))
        if self.fast is not None:
            # Features never hold inf (featurize turns it into NaN); treat one as NaN too.
            return self.fast.contributions(
                np.where(np.isinf(X), np.nan, X) if np.isinf(X).any() else X
            )
        out = self._booster.predict(X, pred_contrib=True, num_threads=max(1, threads))
        return np.asarray(out)[:, : self.n_features]

    def contributions_one(self, x: np.ndarray) -> np.ndarray:
        """Contributions [F] of one row, all trees in one pass (real-time scoring).

        The same tables as `contributions`, summed in another order: equal to it
        within float32 rounding (the tests hold it to 1e-6).
        """
        if self.fast is None:
            return np.asarray(self.contributions(x[None, :])[0])
        row = np.where(np.isinf(x), np.nan, x).astype(np.float32)
        return self.fast.flat.contributions(row, self.n_features)

    def probability(self, X: np.ndarray) -> np.ndarray:
        """The model's probability per row, rebuilt from the contributions (SHAP's local accuracy)."""
        if self.fast is None:
            return np.asarray(self._booster.predict(X, num_threads=1), dtype=np.float64)
        raw = self.contributions(X).sum(axis=1) + self.fast.expected_value
        return np.asarray(1.0 / (1.0 + np.exp(-self.sigmoid * raw)))
