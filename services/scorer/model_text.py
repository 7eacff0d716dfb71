"""LightGBM's text model (model.txt), read without importing LightGBM.

LightGBM drags pandas, scikit-learn and SciPy into the process (~120 MB of
RSS); the scorer only needs the tree arrays this format spells out. Trees
come out in `Booster.dump_model()`'s nested-node shape, the shape the
pattern tables of `shap_tables` are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "TextModel",
    "Unsupported",
    "expected_value",
    "node_count",
    "parse_model_text",
    "split_thresholds",
]


class Unsupported(Exception):
    """The model has a structure the fast path does not handle."""


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


def node_count(node: dict[str, Any]) -> float:
    """Training rows that reached a node (its cover)."""
    return float(node["internal_count"] if "split_index" in node else node["leaf_count"])


def expected_value(node: dict[str, Any]) -> float:
    """Cover-weighted mean leaf value of a tree (the part of the score no feature explains)."""
    if "split_index" not in node:
        return float(node["leaf_value"])
    left, right = node["left_child"], node["right_child"]
    total = node_count(left) + node_count(right)
    if total <= 0:
        return 0.5 * (expected_value(left) + expected_value(right))
    return (
        node_count(left) * expected_value(left) + node_count(right) * expected_value(right)
    ) / total


def split_thresholds(model: TextModel) -> dict[int, np.ndarray]:
    """Per split feature: every threshold any tree compares it with, sorted and distinct."""
    collected: dict[int, list[float]] = {}
    for info in model.trees:
        stack = [info["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_index" in node:
                collected.setdefault(int(node["split_feature"]), []).append(
                    float(node["threshold"])
                )
                stack += [node["left_child"], node["right_child"]]
    return {f: np.unique(v) for f, v in collected.items()}
