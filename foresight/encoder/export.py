"""The encoder's ONNX graph: a Hellinger prelude, then the fitted pipeline, with our tensor names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from foresight.storage.bundles import ENCODER_INPUT, ENCODER_OUTPUT

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

__all__ = ["to_onnx"]


def to_onnx(pipeline: Pipeline, mask: np.ndarray, dims: int) -> bytes:
    """skl2onnx export of the pipeline with the Hellinger prelude and our tensor names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    n_features = len(mask)
    core = convert_sklearn(
        pipeline,
        initial_types=[("prepared", FloatTensorType([None, n_features]))],
        target_opset=17,
    )
    graph = core.graph
    old_output = graph.output[0].name
    # skl2onnx reshapes every MLPRegressor output to [-1, 1] (it assumes one
    # target); a final row-major reshape to [-1, dims] restores the embedding
    # rows and is a no-op for PCA.
    graph.initializer.append(
        numpy_helper.from_array(np.array([-1, dims], dtype=np.int64), "embedding_shape")
    )
    graph.node.append(
        helper.make_node("Reshape", [old_output, "embedding_shape"], [ENCODER_OUTPUT])
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(ENCODER_OUTPUT, TensorProto.FLOAT, [None, dims])
    )
    # Prelude: prepared = where(share column, sqrt(max(x, 0)), x).
    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "prelude_zero")
    mask_t = numpy_helper.from_array(mask.reshape(1, -1), "prelude_share_mask")
    prelude = [
        helper.make_node("Max", [ENCODER_INPUT, "prelude_zero"], ["prelude_clipped"]),
        helper.make_node("Sqrt", ["prelude_clipped"], ["prelude_sqrt"]),
        helper.make_node(
            "Where", ["prelude_share_mask", "prelude_sqrt", ENCODER_INPUT], ["prepared"]
        ),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([*prelude, *nodes])
    graph.initializer.extend([zero, mask_t])
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info(ENCODER_INPUT, TensorProto.FLOAT, [None, n_features])
    )
    onnx.checker.check_model(core)
    return bytes(core.SerializeToString())
