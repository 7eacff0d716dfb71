"""The batch loop of pattern TreeSHAP, compiled (Numba): rows → patterns → tables → contributions.

`FastTreeShap.contributions` (explain.py) describes the method: per tree, rows
collapse to distinct patterns of split decisions, each pattern's SHAP values
come from the leaf tables, and they are scattered back to the rows. One
compiled pass per tree does it: bin keys, distinct keys by open addressing,
each node's decision looked up by its feature's bin (`Tree.node_decisions`:
what `go_left` decides for any value in the bin; ~20% less time than
comparing values), path bits as integers, built top-down (each node's bits
its parent's plus one turn), each feature's value the float64 sum of its
float32 table entries over (leaf, slot) in order, added to the rows tree by
tree (eight trees at a time, feature by feature: `_scatter`). `tests/unit/test_scorer_explain.py` holds it to a NumPy
formulation of the same arithmetic, bit for bit, and to LightGBM.

Compiled once per machine and cached on disk (`cache=True`); a process that
finds the cache loads it in under a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit

from services.scorer.shap_tables import Flat, Tree

__all__ = ["Packed", "contributions"]


@dataclass(frozen=True)
class Packed:
    """What the compiled loop reads besides `Flat` (each leaf's row in the tables, and the
    tables end to end): each tree's features and bin lookups, every node's decision per
    local bin, and where every node and leaf hangs in its tree, local to its tree."""

    flat: Flat
    tree_features: np.ndarray  # [T + 1] start of each tree's features in `features`
    features: np.ndarray  # [Σm] model column
    multipliers: np.ndarray  # [Σm] mixed-radix weight of the feature's local bin
    lut_start: np.ndarray  # [Σm + 1] start of each feature's bin lookup in `luts`
    luts: np.ndarray  # global bin code → local bin
    tree_nodes: np.ndarray  # [T + 1] start of each tree's nodes (pre-order, root first)
    node_column: np.ndarray  # [N] the node's feature, local to its tree
    decision_start: np.ndarray  # [N + 1] start of each node's decisions in `decisions`
    decisions: np.ndarray  # local bin → goes left (int8)
    node_parent: np.ndarray  # [N] parent node, local to its tree (root: -1)
    node_weight: np.ndarray  # [N] ±2^k: the path bit at the parent, depth k, is
    node_offset: np.ndarray  # [N]   offset + weight × the parent's decision
    tree_leaves: np.ndarray  # [T + 1] start of each tree's leaves in `flat`
    leaf_parent: np.ndarray  # [L] the leaf's node, local to its tree
    leaf_weight: np.ndarray  # [L] as node_weight
    leaf_offset: np.ndarray  # [L] as node_offset
    leaf_slots: np.ndarray  # [L + 1] start of each leaf's path features in `slot_*`
    slot_index: np.ndarray  # [S] the slot's column in `flat.tables`
    slot_feature: np.ndarray  # [S] the slot's feature, local to its tree

    @classmethod
    def of(cls, trees: list[Tree], flat: Flat) -> Packed:
        """Pack the trees `flat` was made of."""
        luts: list[np.ndarray] = []
        node_parent, node_weight, node_offset = [], [], []
        leaf_parent, leaf_weight, leaf_offset = [], [], []
        slot_index, slot_feature, slots = [], [], []
        for tree in trees:
            n_nodes, n_leaves, k = len(tree.node_column), len(tree.path_offset), tree.path_width
            luts += tree.luts
            # A leaf's path: its nodes by depth, the k-th weighing ±2^k (left: +, so the
            # bit is the decision; right: −, after an offset of 2^k: 1 − the decision).
            parent = np.full(n_nodes, -1, dtype=np.int64)
            weight = np.zeros(n_nodes, dtype=np.int64)
            offset = np.zeros(n_nodes, dtype=np.int64)
            for leaf in range(n_leaves):
                on_path = np.flatnonzero(tree.path_weights[:, leaf])
                w = tree.path_weights[on_path, leaf].astype(np.int64)
                order = np.argsort(np.abs(w))  # root first
                path, w = on_path[order], w[order]
                o = np.where(w < 0, -w, 0)
                parent[path[1:]], weight[path[1:]], offset[path[1:]] = path[:-1], w[:-1], o[:-1]
                leaf_parent.append(path[-1])
                leaf_weight.append(w[-1])
                leaf_offset.append(o[-1])
            node_parent.append(parent)
            node_weight.append(weight)
            node_offset.append(offset)
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
            node_column=joined([t.node_column for t in trees], np.int64),
            decision_start=starts([n for t in trees for n in np.diff(t.decision_start).tolist()]),
            decisions=joined([t.node_decisions for t in trees], np.int8),
            node_parent=joined(node_parent, np.int64),
            node_weight=joined(node_weight, np.int64),
            node_offset=joined(node_offset, np.int64),
            tree_leaves=starts([len(t.path_offset) for t in trees]),
            leaf_parent=np.array(leaf_parent, dtype=np.int64),
            leaf_weight=np.array(leaf_weight, dtype=np.int64),
            leaf_offset=np.array(leaf_offset, dtype=np.int64),
            leaf_slots=starts(slots),
            slot_index=joined(slot_index, np.int64),
            slot_feature=joined(slot_feature, np.int64),
        )


def contributions(packed: Packed, codes: np.ndarray, n_features: int) -> np.ndarray:
    """SHAP contributions [F, n] (feature-major) of n rows given each feature's global bin
    code per row (`codes` [F, n], see `FastTreeShap._codes`): the bins fix every decision."""
    out = np.zeros((n_features, codes.shape[1]))
    _explain(
        codes,
        out,
        packed.tree_features,
        packed.features,
        packed.multipliers,
        packed.lut_start,
        packed.luts,
        packed.tree_nodes,
        packed.node_column,
        packed.decision_start,
        packed.decisions,
        packed.node_parent,
        packed.node_weight,
        packed.node_offset,
        packed.tree_leaves,
        packed.leaf_parent,
        packed.leaf_weight,
        packed.leaf_offset,
        packed.flat.leaf_row,
        packed.leaf_slots,
        packed.slot_index,
        packed.slot_feature,
        packed.flat.tables,
    )
    return out


def warm() -> None:
    """Load the loop's machine code for the argument types `contributions` passes (or
    compile it, ~3 s, where Numba has no cache yet), so processes forked afterwards
    start with it: the scorer's forkserver does this once (`kernel_preload`)."""
    _explain.compile(_SIGNATURE)


_GOLDEN = np.int64(-0x61C8864680B583EB)  # 2^64 / φ as int64: Fibonacci hashing
# Trees whose values are scattered to the rows together (step 4): 8 take ~10% less time
# than one by one (4 or 16 no less than 8), as each row of `out` is added to while cached.
_GROUP = 8


@njit(cache=True, nogil=True)
def _explain(
    codes: np.ndarray,
    out: np.ndarray,
    tree_features: np.ndarray,
    features: np.ndarray,
    multipliers: np.ndarray,
    lut_start: np.ndarray,
    luts: np.ndarray,
    tree_nodes: np.ndarray,
    node_column: np.ndarray,
    decision_start: np.ndarray,
    decisions: np.ndarray,
    node_parent: np.ndarray,
    node_weight: np.ndarray,
    node_offset: np.ndarray,
    tree_leaves: np.ndarray,
    leaf_parent: np.ndarray,
    leaf_weight: np.ndarray,
    leaf_offset: np.ndarray,
    leaf_row: np.ndarray,
    leaf_slots: np.ndarray,
    slot_index: np.ndarray,
    slot_feature: np.ndarray,
    tables: np.ndarray,
) -> None:
    n = codes.shape[1]
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
    local = np.empty((max_features, n), dtype=np.int32)  # each pattern's bin per feature
    decision = np.empty((max_nodes, n), dtype=np.int8)
    above = np.empty((max_nodes, n), dtype=np.int32)  # path bits above each node
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
        # 3. Each pattern's SHAP values on the tree's features, from its bins. Loops run
        # over the patterns innermost: long, independent, no data-dependent branch.
        for j in range(m):
            lut = luts[lut_start[f0 + j] : lut_start[f0 + j + 1]]
            row_codes = codes[features[f0 + j]]
            bins = local[j]
            for p in range(patterns):
                bins[p] = lut[row_codes[first[p]]]
        # The decision at each node is its bin's (`Tree.node_decisions`), and the path
        # bits of each node and leaf its parent's plus the bit of the turn it took there.
        n0 = tree_nodes[t]
        for node in range(tree_nodes[t + 1] - n0):
            g = n0 + node
            lookup = decisions[decision_start[g] : decision_start[g + 1]]
            bins = local[node_column[g]]
            went = decision[node]
            for p in range(patterns):
                went[p] = lookup[bins[p]]
            q = node_parent[g]
            bits = above[node]
            if q < 0:
                for p in range(patterns):
                    bits[p] = 0
            else:
                weight = node_weight[g]
                base = node_offset[g]
                at, turn = above[q], decision[q]
                for p in range(patterns):
                    bits[p] = at[p] + base + weight * turn[p]
        phi = phi_store[used : used + m * patterns].reshape((m, patterns))
        for j in range(m):
            for p in range(patterns):
                phi[j, p] = 0.0
        for leaf in range(tree_leaves[t], tree_leaves[t + 1]):
            q = leaf_parent[leaf]
            start = leaf_row[leaf] + leaf_offset[leaf]
            weight = leaf_weight[leaf]
            at, turn = above[q], decision[q]
            for p in range(patterns):
                rows[p] = start + at[p] + weight * turn[p]
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
    for dtype in ("float32", "int8", "int32", "float64", "int64")
    for ndim in (1, 2)
}
_SIGNATURE = (
    _A["int32", 2],  # codes
    _A["float64", 2],  # out
    *[_A["int64", 1]] * 4,  # tree_features, features, multipliers, lut_start
    _A["int32", 1],  # luts
    *[_A["int64", 1]] * 3,  # tree_nodes, node_column, decision_start
    _A["int8", 1],  # decisions
    *[_A["int64", 1]] * 11,  # node_parent … slot_feature
    _A["float32", 2],  # tables
)
