"""The batch loop of pattern TreeSHAP, compiled (Numba): rows → patterns → tables → contributions.

`FastTreeShap.contributions` (explain.py) describes the method: per tree, rows
collapse to distinct patterns of split decisions, each pattern's SHAP values
come from the leaf tables, and they are scattered back to the rows. One
compiled pass per tree does it: bin keys, distinct keys by open addressing,
decisions as `go_left` decides them, path bits as integers, each feature's
value the float64 sum of its float32 table entries over (leaf, slot) in
order, added to the rows tree by tree (eight trees at a time, feature by
feature: `_scatter`). `tests/unit/test_scorer_explain.py` holds it to a NumPy
formulation of the same arithmetic, bit for bit, and to LightGBM.

Compiled once per machine and cached on disk (`cache=True`); a process that
finds the cache loads it in under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

from services.scorer.shap_tables import K_ZERO, Flat, Tree

__all__ = ["Packed", "contributions"]


@dataclass(frozen=True)
class Packed:
    """What the compiled loop reads besides `Flat` (the trees' nodes, leaf offsets and
    rows, and tables end to end): each tree's features and bin lookups, and every leaf's
    path entries and slots grouped by leaf, local to its tree."""

    flat: Flat
    tree_features: np.ndarray  # [T + 1] start of each tree's features in `features`
    features: np.ndarray  # [Σm] model column
    multipliers: np.ndarray  # [Σm] mixed-radix weight of the feature's local bin
    lut_start: np.ndarray  # [Σm + 1] start of each feature's bin lookup in `luts`
    luts: np.ndarray  # global bin code → local bin
    tree_nodes: np.ndarray  # [T + 1] start of each tree's nodes in `flat`
    tree_leaves: np.ndarray  # [T + 1] start of each tree's leaves in `flat`
    leaf_entries: np.ndarray  # [L + 1] start of each leaf's path entries
    entry_node: np.ndarray  # [E] node, local to its tree
    entry_weight: np.ndarray  # [E] ±2^k
    leaf_slots: np.ndarray  # [L + 1] start of each leaf's path features in `slot_*`
    slot_index: np.ndarray  # [S] the slot's column in `flat.tables`
    slot_feature: np.ndarray  # [S] the slot's feature, local to its tree

    @classmethod
    def of(cls, trees: list[Tree], flat: Flat) -> Packed:
        """Pack the trees `flat` was made of."""
        luts: list[np.ndarray] = []
        entry_node, entry_weight, entries = [], [], []
        slot_index, slot_feature, slots = [], [], []
        for tree in trees:
            n_leaves, k = len(tree.path_offset), tree.path_width
            luts += tree.luts
            for leaf in range(n_leaves):
                node = np.flatnonzero(tree.path_weights[:, leaf])
                entry_node.append(node)
                entry_weight.append(tree.path_weights[node, leaf])
                entries.append(len(node))
            slot, column = np.nonzero(tree.scatter)  # (leaf × k + slot, feature), in order
            slot_index.append(slot % k)
            slot_feature.append(column)
            slots += np.bincount(slot // k, minlength=n_leaves).tolist()

        def starts(counts: list[int]) -> np.ndarray:
            return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

        def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

        return cls(
            flat=flat,
            tree_features=starts([len(t.features) for t in trees]),
            features=joined([t.features for t in trees], np.int64),
            multipliers=joined([np.array(t.multipliers) for t in trees], np.int64),
            lut_start=starts([len(lut) for lut in luts]),
            luts=joined(luts, np.int32),
            tree_nodes=starts([len(t.node_column) for t in trees]),
            tree_leaves=starts([len(t.path_offset) for t in trees]),
            leaf_entries=starts(entries),
            entry_node=joined(entry_node, np.int64),
            entry_weight=joined(entry_weight, np.int64),
            leaf_slots=starts(slots),
            slot_index=joined(slot_index, np.int64),
            slot_feature=joined(slot_feature, np.int64),
        )


def contributions(packed: Packed, X: np.ndarray, codes: np.ndarray, n_features: int) -> np.ndarray:
    """SHAP contributions [F, n] (feature-major) of float32 rows `X` [n, F], given each
    feature's global bin code per row (`codes` [F, n], see `FastTreeShap._codes`)."""
    out = np.zeros((n_features, X.shape[0]))
    flat = packed.flat
    _explain(
        np.ascontiguousarray(X.T),
        codes,
        out,
        packed.tree_features,
        packed.features,
        packed.multipliers,
        packed.lut_start,
        packed.luts,
        packed.tree_nodes,
        flat.node_column,
        flat.node_threshold32,
        flat.node_default_left,
        flat.node_missing,
        packed.tree_leaves,
        packed.leaf_entries,
        packed.entry_node,
        packed.entry_weight,
        flat.leaf_offset,
        flat.leaf_row,
        packed.leaf_slots,
        packed.slot_index,
        packed.slot_feature,
        flat.tables,
    )
    return out


def warm() -> None:
    """Load the loop's machine code for the argument types `contributions` passes (or
    compile it, ~3 s, where Numba has no cache yet), so processes forked afterwards
    start with it: the scorer's forkserver does this once (`kernel_preload`)."""
    _explain.compile(_SIGNATURE)


_ZERO32 = np.float32(K_ZERO)
_GOLDEN = np.int64(-0x61C8864680B583EB)  # 2^64 / φ as int64: Fibonacci hashing
# Trees whose values are scattered to the rows together (step 4): 8 take ~10% less time
# than one by one (4 or 16 no less than 8), as each row of `out` is added to while cached.
_GROUP = 8


@njit(cache=True, nogil=True)
def _explain(
    columns: np.ndarray,
    codes: np.ndarray,
    out: np.ndarray,
    tree_features: np.ndarray,
    features: np.ndarray,
    multipliers: np.ndarray,
    lut_start: np.ndarray,
    luts: np.ndarray,
    tree_nodes: np.ndarray,
    node_feature: np.ndarray,
    node_threshold32: np.ndarray,
    node_default_left: np.ndarray,
    node_missing: np.ndarray,
    tree_leaves: np.ndarray,
    leaf_entries: np.ndarray,
    entry_node: np.ndarray,
    entry_weight: np.ndarray,
    leaf_offset: np.ndarray,
    leaf_row: np.ndarray,
    leaf_slots: np.ndarray,
    slot_index: np.ndarray,
    slot_feature: np.ndarray,
    tables: np.ndarray,
) -> None:
    n = columns.shape[1]
    capacity = 1
    while capacity < 2 * n:
        capacity *= 2
    mask = capacity - 1
    table_key = np.empty(capacity, dtype=np.int64)
    table_id = np.empty(capacity, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)  # each pattern's first row
    keys = np.empty(n, dtype=np.int64)
    max_nodes = 1
    max_features = 1
    n_trees = len(tree_nodes) - 1
    for t in range(n_trees):
        max_nodes = max(max_nodes, tree_nodes[t + 1] - tree_nodes[t])
        max_features = max(max_features, tree_features[t + 1] - tree_features[t])
    decision = np.empty((max_nodes, n), dtype=np.int8)
    rows = np.empty(n, dtype=np.int64)
    # The trees of a group waiting to be scattered (step 4): each one's row patterns,
    # and its tables [m, patterns] end to end in `phi_store`. A tree's tables hold at
    # most m × n values; twice the largest tree's room fits a group of eight typical ones.
    group = np.empty(_GROUP, dtype=np.int64)
    group_phi = np.empty(_GROUP, dtype=np.int64)
    group_patterns = np.empty(_GROUP, dtype=np.int64)
    row_patterns = np.empty((_GROUP, n), dtype=np.int32)
    phi_store = np.empty(2 * max_features * n)
    touches = np.empty((_GROUP * max_features, 2), dtype=np.int64)
    per_feature = np.empty(out.shape[0] + 1, dtype=np.int64)
    members = 0
    used = 0
    for t in range(n_trees + 1):
        m = tree_features[t + 1] - tree_features[t] if t < n_trees else 0
        # 4. (of the trees before) The group goes back to the rows when it is complete,
        # when this tree's tables might not fit, and after the last tree.
        if members and (members == _GROUP or t == n_trees or used + m * n > len(phi_store)):
            _scatter(
                out,
                row_patterns,
                phi_store,
                group[:members],
                group_phi,
                group_patterns,
                tree_features,
                features,
                touches,
                per_feature,
            )
            members = 0
            used = 0
        if t == n_trees:
            break
        f0 = tree_features[t]
        # 1. Each row's key: its local bin in every feature of the tree, mixed radix.
        for i in range(n):
            keys[i] = 0
        for j in range(m):
            f = features[f0 + j]
            weight = multipliers[f0 + j]
            lut = luts[lut_start[f0 + j] : lut_start[f0 + j + 1]]
            for i in range(n):
                keys[i] += lut[codes[f, i]] * weight
        # 2. Distinct keys (open addressing), in order of first row.
        table_id[:] = -1
        patterns = 0
        pattern = row_patterns[members]
        for i in range(n):
            key = keys[i]
            slot = ((key * _GOLDEN) >> 32) & mask
            while table_id[slot] >= 0 and table_key[slot] != key:
                slot = (slot + 1) & mask
            if table_id[slot] < 0:
                table_key[slot] = key
                table_id[slot] = patterns
                first[patterns] = i
                patterns += 1
            pattern[i] = table_id[slot]
        # 3. Each pattern's SHAP values on the tree's features, from its first row. Loops
        # run over the patterns innermost: long, independent, no data-dependent branch.
        n0 = tree_nodes[t]
        for node in range(tree_nodes[t + 1] - n0):
            # go_left: NaN compares false; as 0.0 unless the split's missing type is NaN,
            # |x| ≤ kZeroThreshold is 0.0 too.
            g = n0 + node
            column = columns[node_feature[g]]
            threshold = node_threshold32[g]
            missing = node_missing[g]
            zero_left = np.int64(threshold >= 0)
            default_left = np.int64(node_default_left[g])
            for p in range(patterns):
                x = column[first[p]]
                nan = np.int64(np.isnan(x))
                zero = np.int64(abs(x) <= _ZERO32) | (nan & np.int64(missing != 2))
                left = np.int64(x <= threshold) | (zero & zero_left)
                default = (zero & np.int64(missing == 1)) | (nan & np.int64(missing == 2))
                decision[node, p] = (default & default_left) | ((1 - default) & left)
        phi = phi_store[used : used + m * patterns].reshape((m, patterns))
        for j in range(m):
            for p in range(patterns):
                phi[j, p] = 0.0
        for leaf in range(tree_leaves[t], tree_leaves[t + 1]):
            start = leaf_row[leaf] + leaf_offset[leaf]
            for p in range(patterns):
                rows[p] = start
            for e in range(leaf_entries[leaf], leaf_entries[leaf + 1]):
                weight = entry_weight[e]
                went = decision[entry_node[e]]
                for p in range(patterns):
                    rows[p] += weight * went[p]
            for e in range(leaf_slots[leaf], leaf_slots[leaf + 1]):
                values = tables[:, slot_index[e]]
                into = phi[slot_feature[e]]
                for p in range(patterns):
                    into[p] += np.float64(values[rows[p]])
        group[members] = t
        group_phi[members] = used
        group_patterns[members] = patterns
        members += 1
        used += m * patterns


@njit(cache=True, nogil=True)
def _scatter(
    out: np.ndarray,
    row_patterns: np.ndarray,
    phi_store: np.ndarray,
    group: np.ndarray,
    group_phi: np.ndarray,
    group_patterns: np.ndarray,
    tree_features: np.ndarray,
    features: np.ndarray,
    touches: np.ndarray,
    per_feature: np.ndarray,
) -> None:
    """4. The group's SHAP values back to the rows, in float64, feature by feature: each
    feature's row of `out` takes its trees' values one tree after another (the order
    tree by tree would add them in), while it is in the core's cache."""
    n = row_patterns.shape[1]
    n_out = out.shape[0]
    per_feature[:] = 0
    for g in range(len(group)):
        for j in range(tree_features[group[g]], tree_features[group[g] + 1]):
            per_feature[features[j] + 1] += 1
    for f in range(n_out):
        per_feature[f + 1] += per_feature[f]
    # Counting sort: each feature's (member, table start) pairs, in tree order.
    fill = per_feature[:n_out].copy()
    for g in range(len(group)):
        f0 = tree_features[group[g]]
        for j in range(tree_features[group[g] + 1] - f0):
            f = features[f0 + j]
            touches[fill[f], 0] = g
            touches[fill[f], 1] = group_phi[g] + j * group_patterns[g]
            fill[f] += 1
    for f in range(n_out):
        into = out[f]
        for q in range(per_feature[f], per_feature[f + 1]):
            pattern = row_patterns[touches[q, 0]]
            phi = phi_store[touches[q, 1] :]
            for i in range(n):
                into[i] += phi[pattern[i]]


# The argument types of `contributions`' call (C-contiguous arrays), in order;
# tests/unit/test_scorer_explain.py checks that a real call compiles no other.
_A = {
    (dtype, ndim): numba.types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")
    for dtype in ("float32", "int32", "float64", "int64", "bool")
    for ndim in (1, 2)
}
_SIGNATURE = (
    _A["float32", 2],  # columns
    _A["int32", 2],  # codes
    _A["float64", 2],  # out
    *[_A["int64", 1]] * 4,  # tree_features, features, multipliers, lut_start
    _A["int32", 1],  # luts
    *[_A["int64", 1]] * 2,  # tree_nodes, node_feature
    _A["float32", 1],  # node_threshold32
    _A["bool", 1],  # node_default_left
    *[_A["int64", 1]] * 10,  # node_missing … slot_feature
    _A["float32", 2],  # tables
)
