"""Segmenter service: journey index, discovered segments, lookalikes and the cluster map."""
