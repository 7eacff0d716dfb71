"""Scorer settings (environment variables FORESIGHT_*)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator

from foresight.settings import ServiceSettings, metrics_port_field, port_field


class ScorerSettings(ServiceSettings):
    """Everything the scorer reads from the environment."""

    port: int = port_field("scorer", 50052)
    metrics_port: int = metrics_port_field("scorer")
    server_processes: int = Field(
        1,
        ge=1,
        le=256,
        # FORESIGHT_SCORER_WORKERS is the deprecated name (see foresight.settings.RENAMED).
        validation_alias=AliasChoices(
            "FORESIGHT_SCORER_SERVER_PROCESSES", "FORESIGHT_SCORER_WORKERS"
        ),
        description="Server processes sharing the port with SO_REUSEPORT (lookups scale across cores).",
    )
    scoring_threads: int = Field(
        0,
        ge=0,
        le=1024,
        validation_alias=AliasChoices("FORESIGHT_SCORER_SCORING_THREADS"),
        description=(
            "Worker processes for batch scoring (featurize, ONNX, TreeSHAP); 0 = all cores. "
            "Unused with FORESIGHT_DASK_SCHEDULER: the cluster's workers score."
        ),
    )
    top_factors: int = Field(
        5,
        ge=1,
        le=20,
        validation_alias=AliasChoices("FORESIGHT_SCORER_TOP_FACTORS"),
        description="Influential factors kept per profile and score.",
    )
    poll_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("FORESIGHT_SCORER_POLL_SECONDS"),
        description="How often the registry is polled for new model versions and scoring runs.",
    )
    schedule_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        validation_alias=AliasChoices("FORESIGHT_SCORER_SCHEDULE_SECONDS"),
        description="How often instance scoring schedules are checked (first server process only).",
    )
    health_sample_profiles: int = Field(
        20_000,
        ge=100,
        le=1_000_000,
        validation_alias=AliasChoices("FORESIGHT_SCORER_HEALTH_SAMPLE_PROFILES"),
        description="Profiles per run whose probability is kept to measure realized quality "
        "once the outcome window closes (a uniform sample; all of them in smaller runs).",
    )
    health_auc_drop: float = Field(
        0.05,
        gt=0,
        le=0.5,
        validation_alias=AliasChoices("FORESIGHT_SCORER_HEALTH_AUC_DROP"),
        description="Recommend a retrain when a run's realized AUC is this much below the "
        "model's validation AUC.",
    )
    health_psi_threshold: float = Field(
        0.25,
        gt=0,
        le=10,
        validation_alias=AliasChoices("FORESIGHT_SCORER_HEALTH_PSI_THRESHOLD"),
        description="Recommend a retrain when the score PSI or a key feature's PSI between "
        "consecutive runs is above this (0.25: the usual mark of a significant shift).",
    )

    @model_validator(mode="after")
    def _server_processes_need_fixed_port(self) -> ScorerSettings:
        if self.server_processes > 1 and self.port == 0:
            raise ValueError(
                "FORESIGHT_SCORER_SERVER_PROCESSES > 1 needs a fixed FORESIGHT_SCORER_PORT "
                "(the processes share one port with SO_REUSEPORT)"
            )
        return self

    @property
    def artifacts_dir(self) -> Path:
        """The artifact store root (model bundles, score copies)."""
        return self.data_dir / "artifacts"

    @property
    def resolved_scoring_threads(self) -> int:
        """Threads for batch scoring."""
        return self.scoring_threads or os.cpu_count() or 1
