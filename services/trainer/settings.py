"""Trainer settings (environment variables FORESIGHT_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field

from foresight.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Everything the trainer reads from the environment."""

    port: int = Field(
        50051,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("FORESIGHT_TRAINER_PORT", "FORESIGHT_PORT"),
        description="gRPC port of the trainer (0 = any free port).",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        validation_alias=AliasChoices("FORESIGHT_TRAINER_METRICS_PORT", "FORESIGHT_METRICS_PORT"),
        description="Prometheus /metrics port of the trainer (0 = off).",
    )
    import_root: Path = Field(
        Path("var/imports"),
        description="Only files under this folder can be imported by ImportDataset/ImportProfiles.",
    )
    shards: int = Field(
        16, ge=1, le=1024, description="Event-store shards (profiles hash into them)."
    )
    workers: int = Field(0, ge=0, le=256, description="Processes for featurizing; 0 = all cores.")
