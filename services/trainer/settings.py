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
    import_root: Path | None = Field(
        None,
        description="Only files under this folder can be imported by ImportDataset/ImportProfiles "
        "(default: <data_dir>/imports).",
    )

    @property
    def resolved_import_root(self) -> Path:
        """The import root, defaulting to `imports` under the data directory."""
        return self.import_root if self.import_root is not None else self.data_dir / "imports"

    shard_processes: int = shard_processes_field("featurizing")
