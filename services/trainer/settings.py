"""Trainer settings (environment variables FORESIGHT_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from foresight.settings import (
    ServiceSettings,
    metrics_port_field,
    port_field,
    shard_processes_field,
)


class TrainerSettings(ServiceSettings):
    """Everything the trainer reads from the environment."""

    port: int = port_field("trainer", 50051)
    metrics_port: int = metrics_port_field("trainer")
    import_root: Path = Field(
        Path("var/imports"),
        description="Only files under this folder can be imported by ImportDataset/ImportProfiles.",
    )
    shard_processes: int = shard_processes_field("featurizing")
