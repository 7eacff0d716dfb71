"""Segmenter settings (environment variables FORESIGHT_*)."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from foresight.settings import ServiceSettings


class SegmenterSettings(ServiceSettings):
    """Everything the segmenter reads from the environment."""

    # Field names work too (tests and embedding code build settings directly).

    port: int = Field(
        50053,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("FORESIGHT_SEGMENTER_PORT", "FORESIGHT_PORT"),
        description="gRPC port of the segmenter (0 = any free port).",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("FORESIGHT_SEGMENTER_METRICS_PORT", "FORESIGHT_METRICS_PORT"),
        description="Prometheus /metrics port of the segmenter (0 = off).",
    )
    shards: int = Field(
        16,
        ge=1,
        le=1024,
        description="Event-store shards (must match the trainer's FORESIGHT_SHARDS).",
    )
    workers: int = Field(
        0, ge=0, le=256, description="Processes that embed shards in BuildIndex; 0 = all cores."
    )
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
        description="Save upserts/removals as a new index version at most this often (0 = never).",
    )
    rebuild_corrupt_index: bool = Field(
        True,
        description="Rebuild an index whose files fail their checksum at start (else serve none).",
    )
