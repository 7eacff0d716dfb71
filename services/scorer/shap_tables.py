"""Pattern tables of path-dependent TreeSHAP: per tree, the arrays that turn rows into SHAP values.

See `explain` for the method. `prepare_tree` reads one tree (dump_model
shape) into a `Tree`: each feature's bin lookup, the path bits of every
leaf, and the Shapley values of every leaf for every pattern of satisfied
path features (`leaf_tables`, filled by `fill_leaf_tables`). `Flat` lays
every tree end to end to explain one row in one pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from services.scorer.model_text import Leaf, MissingType, Node, Split, Unsupported

__all__ = [
    "K_ZERO",
    "MAX_DEPTH",
    "Flat",
    "Tree",
    "fill_leaf_tables",
    "go_left",
    "leaf_tables",
    "prepare_tree",
]

# LightGBM's kZeroThreshold is the float literal 1e-35f held in a double: |x| ≤ it is "zero".
K_ZERO = float(np.float32(1e-35))
MAX_DEPTH = 12  # deeper paths: tables of 2^depth rows get large, use LightGBM

_MISSING: dict[MissingType, int] = {"None": 0, "Zero": 1, "NaN": 2}


@dataclass
class Tree:
    """One tree, prepared for pattern-based TreeSHAP."""

    features: np.ndarray  # [m] model columns the tree splits on
    luts: list[np.ndarray]  # per feature: global bin code → local bin (int16)
    multipliers: list[int]  # per feature: mixed-radix weight of its local bin in the key
    key_space: int  # product of the local radices
    node_column: np.ndarray  # [N] position in `features` of each internal node's feature
    node_threshold32: np.ndarray  # [N] float32: largest float32 ≤ the threshold
    node_default_left: np.ndarray  # [N] bool
    node_missing: np.ndarray  # [N] 0 None, 1 Zero, 2 NaN
    node_decisions: np.ndarray  # int8: go-left decision per local bin, node after node
    decision_start: np.ndarray  # [N + 1] start of each node's decisions
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


_Path = list[tuple[int, bool]]  # (internal node, went left) from the root down
_Pending = tuple[int, float, list[float], np.ndarray]  # leaf, value, cover fractions, patterns


def _walk(root: Node) -> tuple[list[Split], list[tuple[float, _Path]]]:
    """The tree's splits in depth-first order, and its leaves with their paths."""
    nodes: list[Split] = []
    leaves: list[tuple[float, _Path]] = []

    def walk(node: Node, path: _Path) -> None:
        if isinstance(node, Leaf):
            leaves.append((node.value, path))
            return
        index = len(nodes)
        nodes.append(node)
        walk(node.left, [*path, (index, True)])
        walk(node.right, [*path, (index, False)])

    walk(root, [])
    return nodes, leaves


@dataclass(frozen=True)
class _Bins:
    """A tree feature's local bins: its position among the tree's own thresholds, then the
    zero flag (zero_radix 2) and the NaN flag (nan_radix 2), mixed radix in that order."""

    own: np.ndarray  # the tree's thresholds on the feature, sorted, distinct
    zero_radix: int  # 2 where a split of this tree treats zero as missing, else 1
    nan_radix: int  # 2 where a split of this tree treats NaN as missing, else 1

    @property
    def radix(self) -> int:
        return (len(self.own) + 1) * self.zero_radix * self.nan_radix


def _feature_bins(
    features: list[int], nodes: list[Split], thresholds: dict[int, np.ndarray]
) -> tuple[list[_Bins], list[np.ndarray], list[int], int]:
    """Per tree feature: its bins, global bin code → local bin; the mixed-radix weights;
    the key space."""
    bins: list[_Bins] = []
    luts: list[np.ndarray] = []
    for f in features:
        splits = [n for n in nodes if n.feature == f]
        missing = {_MISSING[n.missing] for n in splits}
        b = _Bins(
            own=np.array(sorted({n.threshold for n in splits})),
            zero_radix=2 if 1 in missing else 1,
            nan_radix=2 if 2 in missing else 1,
        )
        # Global code = position × 4 + zero × 2 + nan (see FastTreeShap._codes). The local
        # bin keeps the position among this tree's thresholds, and the zero / NaN flags
        # only where a split of this tree treats them specially.
        glob = thresholds[f]
        upper = np.append(glob, np.inf)  # global position g covers (glob[g-1], glob[g]]
        position = np.searchsorted(b.own, upper, side="left")
        positions = len(b.own) + 1
        codes = np.arange(len(upper) * 4)
        local = position[codes // 4]
        if b.zero_radix == 2:
            local = local + positions * ((codes >> 1) & 1)
        if b.nan_radix == 2:
            local = local + positions * b.zero_radix * (codes & 1)
        luts.append(local.astype(np.int16))  # ≤ 4 × (splits + 1) local bins: small
        bins.append(b)
    radices = [b.radix for b in bins]
    multipliers = [int(m) for m in np.cumprod([1, *radices[:-1]], dtype=np.float64)]
    key_space = int(np.prod(np.array(radices, dtype=np.float64))) if radices else 1
    if key_space >= 2**62:
        raise Unsupported("too many distinct split patterns for a 64-bit key")
    return bins, luts, multipliers, key_space


def _decisions(node: Split, bins: _Bins) -> np.ndarray:
    """The node's go-left decision (int8) for each local bin of its feature, as `go_left`
    decides for any value in that bin: NaN (NaN missing type) and zero (Zero missing type,
    NaN included: it reads as 0.0) take the default side, any other value goes left when
    its position among the tree's thresholds is at most the node's own (x ≤ threshold;
    NaN and |x| ≤ kZeroThreshold have the position of 0.0)."""
    local = np.arange(bins.radix)
    positions = len(bins.own) + 1
    position = local % positions
    zero = (local // positions) % 2 if bins.zero_radix == 2 else np.zeros_like(local)
    nan = local // (positions * bins.zero_radix) if bins.nan_radix == 2 else np.zeros_like(local)
    missing = _MISSING[node.missing]
    if missing == 1:
        default = zero == 1
    elif missing == 2:
        default = nan == 1
    else:
        default = np.zeros(len(local), dtype=bool)
    left = position <= np.searchsorted(bins.own, node.threshold)
    return np.where(default, node.default_left, left).astype(np.int8)


def _leaf_paths(
    nodes: list[Split],
    leaves: list[tuple[float, _Path]],
    column: dict[int, int],
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[_Pending]]:
    """Path weights [N, L], path offsets [L], the (leaf, slot) → column scatter, and per
    leaf with path features what its Shapley table needs (see `prepare_tree`)."""
    counts = [n.count for n in nodes]
    n_leaves = len(leaves)
    path_weights = np.zeros((len(nodes), n_leaves), dtype=np.float32)
    path_offset = np.zeros(n_leaves, dtype=np.float32)
    scatter = np.zeros((n_leaves * width, max(len(column), 1)), dtype=np.float32)
    pending: list[_Pending] = []
    for leaf, (value, path) in enumerate(leaves):
        slots: dict[int, int] = {}
        fractions: list[float] = []
        path_slots: list[int] = []
        for k, (node, left) in enumerate(path):
            f = nodes[node].feature
            child = (
                counts[path[k + 1][0]]
                if k + 1 < len(path)
                else (nodes[node].left if left else nodes[node].right).count
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
        if not slots:
            continue
        pending.append((leaf, value, fractions, _satisfied(tuple(path_slots))))
        for f, slot in slots.items():
            scatter[leaf * width + slot, column[f]] = 1.0
    return path_weights, path_offset, scatter, pending


@functools.lru_cache(maxsize=1024)
def _satisfied(path_slots: tuple[int, ...]) -> np.ndarray:
    """Path bits (which path nodes a row agrees with) → pattern of satisfied path features,
    for a path whose k-th node splits on feature slot `path_slots[k]`. Leaves share a few
    hundred such shapes at most (depth ≤ 6), so each is built once (read-only)."""
    bits = np.arange(1 << len(path_slots))
    failed = np.zeros(len(bits), dtype=np.int64)
    for k, slot in enumerate(path_slots):
        failed |= (((bits >> k) & 1) == 0).astype(np.int64) << slot
    patterns = ((1 << (max(path_slots) + 1)) - 1) & ~failed
    patterns.setflags(write=False)
    return patterns


def prepare_tree(
    root: Node, thresholds: dict[int, np.ndarray], max_depth: int
) -> tuple[Tree, list[_Pending]]:
    """The tree's arrays, and per leaf (leaf, value, cover fractions, pattern of each path
    bits value) for the Shapley tables still to fill (`fill_leaf_tables`)."""
    nodes, leaves = _walk(root)
    features = sorted({n.feature for n in nodes})
    column = {f: i for i, f in enumerate(features)}
    bins, luts, multipliers, key_space = _feature_bins(features, nodes, thresholds)
    depth = max((len(p) for _, p in leaves), default=0)
    if depth > max_depth:
        raise Unsupported(f"depth {depth}")
    width = max(depth, 1)
    path_weights, path_offset, scatter, pending = _leaf_paths(nodes, leaves, column, width)
    decisions = [_decisions(n, bins[column[n.feature]]) for n in nodes]
    tree = Tree(
        features=np.array(features, dtype=np.int64),
        luts=luts,
        multipliers=multipliers,
        key_space=key_space,
        node_column=np.array([column[n.feature] for n in nodes], dtype=np.int64),
        node_threshold32=_float32_floor(np.array([n.threshold for n in nodes])),
        node_default_left=np.array([n.default_left for n in nodes]),
        node_missing=np.array([_MISSING[n.missing] for n in nodes], dtype=np.int64),
        node_decisions=np.concatenate(decisions) if decisions else np.zeros(0, dtype=np.int8),
        decision_start=np.cumsum([0, *map(len, decisions)], dtype=np.int64),
        path_weights=path_weights,
        path_offset=path_offset,
        path_width=width,
        by_path=np.zeros((len(leaves) << width, width), dtype=np.float32),
        scatter=scatter,
    )
    return tree, pending


def fill_leaf_tables(prepared: list[tuple[Tree, list[_Pending]]]) -> None:
    """Fill every tree's `by_path`, in batches of leaves with the same number of path features."""
    by_width: dict[int, list[tuple[Tree, int, float, list[float], np.ndarray]]] = {}
    for tree, pending in prepared:
        for leaf, value, fractions, patterns in pending:
            by_width.setdefault(len(fractions), []).append((tree, leaf, value, fractions, patterns))
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


def go_left(tree: Tree | Flat, values: np.ndarray) -> np.ndarray:
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
class Flat:
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
    def of(cls, trees: list[Tree], n_features: int) -> Flat:
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
            leaf_offset=joined([t.path_offset for t in trees], np.int64),
            leaf_row=joined(leaf_row, np.int64),
            tables=tables,
            slot_column=joined(slot_column, np.int64),
        )

    def contributions(self, x: np.ndarray, n_features: int) -> np.ndarray:
        """SHAP contributions [F] of one float32 row (no bias column)."""
        decisions = go_left(self, x[None, :])[0].astype(np.float64)
        bits = np.bincount(
            self.entry_leaf,
            weights=decisions[self.entry_node] * self.entry_weight,
            minlength=len(self.leaf_row),
        )
        rows = self.leaf_row + (bits + self.leaf_offset).astype(np.int64)
        # `take` copies whole rows (5× faster than fancy indexing here); bincount
        # widens the float32 weights to float64 itself, exactly as astype would.
        per_slot = self.tables.take(rows, axis=0).reshape(-1)
        return np.bincount(self.slot_column, weights=per_slot, minlength=n_features + 1)[
            :n_features
        ]
