"""Names `vulture` cannot see used: set for, or called by, a library (checked in `make lint`).

Add a line only for such a name, with the reason; dead code is deleted, not listed here.
"""

# grpc calls these on interceptors.
_.intercept_service
_.intercept_unary_unary
_.intercept_unary_stream
_.intercept_stream_unary
_.intercept_stream_stream

# Attributes that onnxruntime and onnx read from the objects we set them on.
_.intra_op_num_threads
_.inter_op_num_threads
_.log_severity_level
_.dim_param
_.doc_string

# scikit-learn reads the fitted attributes of the encoder's MLP when converting it to ONNX.
_.n_layers_
_.n_outputs_
_.out_activation_
_.n_features_in_

# SQLAlchemy reads these on a TypeDecorator and on the declarative base.
_.impl
_.cache_ok
_.process_bind_param
_.process_result_value
_.type_annotation_map

# Records written for people and tools (catalogue listings, the generator's summary).
_.size_bytes
_.future_purchase_rate
_.churn_rate

# Called from a subprocess's command line (bench/dask_bench.py runs it by name).
_.train_once


# Fields of the typed evaluation report: serialized with dataclasses.asdict, read by people and the CLI.
_.mean_impact
_.observed_rate
_.tuning_auc
_.served_positives

# Imported by name in a subprocess a test starts (tests/unit/test_shards.py).
_service_loaded
