"""The journey encoder: behaviour vector → dense embedding, fitted by the trainer, used by the segmenter.

Two candidate families are fitted on the same sample and compared on a
held-out part of it:

- ``pca``: standardize + PCA (a scikit-learn Pipeline);
- ``autoencoder``: standardize + a small MLPRegressor trained to reconstruct
  its input through a bottleneck; only the encoder half (input → bottleneck)
  is exported.

Both see the behaviour vector after a Hellinger transform of its share blocks
(square root of each share): mixes are distributions, and the square root
makes Euclidean/cosine geometry on them behave like a distance between
distributions instead of being dominated by the largest share. The transform
is part of the exported ONNX graph, so callers feed the raw behaviour vector.

The choice is made by measurement at two levels (see `_choose`): the
benchmark's quality figures (persona ARI, lookalike lift at 1M profiles)
decided that the autoencoder is preferred; each fit then measures both
families on held-out rows (silhouette of k-means on the L2-normalised
embeddings, neighbour recall@10 against the behaviour space, reconstruction
error, fit and embed time) and falls back to PCA when the autoencoder fails
its guards. Every number lands in the encoder version's metrics.

The ONNX model has input ``behaviour`` float32 [N, B] and output
``embedding`` float32 [N, D]; `Encoder.embed` L2-normalises the output.

The package, by seam:

- `model`: the loaded encoder (`Encoder`, `load_encoder`) and the facts every
  side shares (kinds, the behaviour as-of time, the share mask). The
  segmenter's embedding workers import only this, so they never pay for
  scikit-learn or skl2onnx.
- `candidates`: the two families, fitted and measured, and `choose`.
- `export`: the ONNX graph (Hellinger prelude + skl2onnx pipeline).
- `fitting`: `fit_encoder`, sample in, `EncoderBundle` out.
- `registry`: encoder versions (publish, list, get) through the shared lifecycle.
- `trainer`: `EncoderTrainer`, the facade the trainer's servicer calls.
"""
