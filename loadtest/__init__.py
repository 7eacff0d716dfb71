"""Load tests of the scorer and segmenter (`make loadtest`).

`configs/*.json` are ghz configuration files that resolve the method through
server reflection (no .proto files); `data/*.json` is their request data,
written by `python -m loadtest.make_data` from a real run. `python -m
loadtest.run` runs them with ghz where it is installed, otherwise with h2load
(Debian's nghttp2-client) using framed gRPC bodies, and prints requests/s,
latency percentiles and status counts.
"""
