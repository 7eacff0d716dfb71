"""Segmenter settings (environment variables FORESIGHT_*)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from foresight.settings import (
    ServiceSettings,
    metrics_port_field,
    port_field,
    shard_processes_field,
)


class SegmenterSettings(ServiceSettings):
    """Everything the segmenter reads from the environment."""

    # Field names work too (tests and embedding code build settings directly).

    port: int = port_field("segmenter", 50053)
    metrics_port: int = metrics_port_field("segmenter")
    shard_processes: int = shard_processes_field("embedding shards in BuildIndex")
    hnsw_ef: int = Field(
        128,
        ge=10,
        le=4096,
        validation_alias=AliasChoices("FORESIGHT_SEGMENTER_HNSW_EF", "FORESIGHT_HNSW_EF"),
        description="HNSW ef at query time (higher = better recall, slower queries).",
    )
    snapshot_interval_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description=(
            "Fold journaled upserts/removals into a new index version this often "
            "(0 = only at shutdown); they are durable in the journal either way."
        ),
    )
    rebuild_corrupt_index: bool = Field(
        True,
        description="Rebuild an index whose files fail their checksum at start (else serve none).",
    )
