"""LightGBM's text model (model.txt), read without importing LightGBM.

LightGBM drags pandas, scikit-learn and SciPy into the process (~120 MB of
RSS); the scorer only needs the tree arrays this format spells out. Trees
come out as typed nodes (`Split`, `Leaf`), which the pattern tables of
`shap_tables` are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

__all__ = [
    "Leaf",
    "MissingType",
    "Node",
    "Split",
    "TextModel",
    "Unsupported",
    "expected_value",
    "parse_model_text",
    "split_thresholds",
]


class Unsupported(Exception):
    """The model has a structure the fast path does not handle."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """A leaf: its raw-score value and how many training rows reached it."""

    value: float
    count: float


@dataclass(frozen=True, slots=True)
class Split:
    """A numerical split: rows with ``x <= threshold`` go left (missing values per `missing`)."""

    feature: int
    threshold: float
    default_left: bool
    """Where a missing value goes (see `missing`)."""
    missing: MissingType
    """Which values count as missing: none, zero (|x| ≤ kZeroThreshold, and NaN), or NaN."""
    count: float
    """Training rows that reached the split (its cover)."""
    left: Node
    right: Node


Node = Split | Leaf
MissingType = Literal["None", "Zero", "NaN"]
_MISSING_TYPES: Final[tuple[MissingType, ...]] = ("None", "Zero", "NaN")


@dataclass(frozen=True)
class TextModel:
    """What the explainer needs from a LightGBM text model (model.txt)."""

    n_features: int
    sigmoid: float  # probability = 1 / (1 + exp(-sigmoid × raw score))
    trees: list[Node]  # the root of every tree


def _node(arrays: dict[str, list[str]], index: int) -> Node:
    """Node `index` of a tree block (≥ 0 internal, < 0 leaf ~index), with its subtree."""
    if index < 0:
        leaf = ~index
        counts = arrays.get("leaf_count")
        return Leaf(float(arrays["leaf_value"][leaf]), float(counts[leaf]) if counts else 0.0)
    decision = int(arrays["decision_type"][index])
    if decision & 1:
        raise Unsupported("categorical split")
    return Split(
        feature=int(arrays["split_feature"][index]),
        threshold=float(arrays["threshold"][index]),
        default_left=bool(decision & 2),
        missing=_MISSING_TYPES[(decision >> 2) & 3],
        count=float(arrays["internal_count"][index]),
        left=_node(arrays, int(arrays["left_child"][index])),
        right=_node(arrays, int(arrays["right_child"][index])),
    )


def parse_model_text(text: str) -> TextModel:
    """Read the trees of a LightGBM text model without importing LightGBM.

    LightGBM drags pandas, scikit-learn and SciPy into the process (~120 MB of
    RSS); the scorer only needs the tree arrays this format spells out.
    """
    header: dict[str, str] = {}
    blocks: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if line.startswith("Tree="):
            current = {}
            blocks.append(current)
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
    trees: list[Node] = []
    for block in blocks:
        if block.get("is_linear", "0") != "0":
            raise Unsupported("linear trees")
        if int(block["num_leaves"]) == 1:
            trees.append(Leaf(float(block["leaf_value"]), 0.0))
            continue
        arrays = {k: v.split() for k, v in block.items()}
        trees.append(_node(arrays, 0))
    return TextModel(int(header["max_feature_idx"]) + 1, sigmoid, trees)


def expected_value(node: Node) -> float:
    """Cover-weighted mean leaf value of a tree (the part of the score no feature explains)."""
    if isinstance(node, Leaf):
        return node.value
    left, right = node.left, node.right
    total = left.count + right.count
    if total <= 0:
        return 0.5 * (expected_value(left) + expected_value(right))
    return (left.count * expected_value(left) + right.count * expected_value(right)) / total


def split_thresholds(model: TextModel) -> dict[int, np.ndarray]:
    """Per split feature: every threshold any tree compares it with, sorted and distinct."""
    collected: dict[int, list[float]] = {}
    for root in model.trees:
        stack = [root]
        while stack:
            node = stack.pop()
            if isinstance(node, Split):
                collected.setdefault(node.feature, []).append(node.threshold)
                stack += [node.left, node.right]
    return {f: np.unique(v) for f, v in collected.items()}
