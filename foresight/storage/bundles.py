"""The artifact contracts between services: bundle layouts, tensor names, which model serves.

The trainer writes model and encoder bundles, the scorer reads model bundles
and the segmenter reads encoder bundles. Every file name, ONNX tensor name and
manifest key they share is defined here, with the one function that writes a
bundle into its (temporary) folder and the one that reads it back, so a change
on one side cannot silently break the other. Publishing (temporary folder,
checksums in ``manifest.json``, atomic rename) is `ArtifactStore.publish`,
driven by `foresight.storage.lifecycle.Lifecycle`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from foresight.errors import FailedPrecondition
from foresight.storage.artifacts import MANIFEST
from foresight.storage.lifecycle import Status
from foresight.storage.models import InstanceRow, ModelVersionRow

__all__ = [
    "ENCODER_FILE",
    "ENCODER_INPUT",
    "ENCODER_OUTPUT",
    "EVALUATION_FILE",
    "MODEL_FILES",
    "MODEL_INPUT",
    "MODEL_OUTPUT",
    "EncoderBundleFiles",
    "ModelBundleFiles",
    "ServedVersion",
    "read_encoder_bundle",
    "read_model_bundle",
    "serving_versions",
    "write_encoder_bundle",
    "write_model_bundle",
]

# ---------------------------------------------------------------- model bundle

MODEL_ONNX: Final = "model.onnx"
"""ONNX graph: input MODEL_INPUT float32 [N, F] → output MODEL_OUTPUT float32 [N, 2]."""
MODEL_TEXT: Final = "model.txt"
"""LightGBM text model of the same trees (TreeSHAP reason codes)."""
FEATURE_SPEC_FILE: Final = "feature_spec.json"
INSTANCE_FILE: Final = "instance.json"
EVALUATION_FILE: Final = "evaluation.json"
MODEL_FILES: Final = (MODEL_ONNX, MODEL_TEXT, FEATURE_SPEC_FILE, INSTANCE_FILE, EVALUATION_FILE)
MODEL_INPUT: Final = "features"
MODEL_OUTPUT: Final = "probabilities"
MODEL_KIND: Final = "propensity_model"
"""The manifest's "kind" of a model bundle; its other keys: instance, version,
dataset, feature_count, validation_cutoff (plus "files" with the checksums)."""


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False).encode()


def write_model_bundle(
    folder: Path,
    *,
    onnx_model: bytes,
    model_text: str,
    feature_spec: dict[str, Any],
    instance: dict[str, Any],
    evaluation: dict[str, Any],
) -> None:
    """Write a model bundle's files into `folder` (the temporary folder being published)."""
    (folder / MODEL_ONNX).write_bytes(onnx_model)
    (folder / MODEL_TEXT).write_text(model_text)
    (folder / FEATURE_SPEC_FILE).write_bytes(_json_bytes(feature_spec))
    (folder / INSTANCE_FILE).write_bytes(_json_bytes(instance))
    (folder / EVALUATION_FILE).write_bytes(_json_bytes(evaluation))


def model_metadata(
    instance: str, version: int, dataset: str, feature_count: int, validation_cutoff: datetime
) -> dict[str, Any]:
    """The manifest keys of a model bundle."""
    return {
        "kind": MODEL_KIND,
        "instance": instance,
        "version": version,
        "dataset": dataset,
        "feature_count": feature_count,
        "validation_cutoff": validation_cutoff.isoformat(),
    }


@dataclass(frozen=True, slots=True)
class ModelBundleFiles:
    """A model bundle as read back: the ONNX path and the parsed documents."""

    onnx_path: Path
    model_text: str
    feature_spec: dict[str, Any]
    instance: dict[str, Any]
    evaluation: dict[str, Any]


def read_model_bundle(folder: Path) -> ModelBundleFiles:
    """Read a model bundle folder (checksums are the caller's `ArtifactStore.verify`)."""
    for name in (MODEL_ONNX, MODEL_TEXT, FEATURE_SPEC_FILE, INSTANCE_FILE):
        if not (folder / name).is_file():
            raise FailedPrecondition(f"the model bundle has no {name}")
    return ModelBundleFiles(
        onnx_path=folder / MODEL_ONNX,
        model_text=(folder / MODEL_TEXT).read_text(),
        feature_spec=json.loads((folder / FEATURE_SPEC_FILE).read_text()),
        instance=json.loads((folder / INSTANCE_FILE).read_text()),
        evaluation=read_model_documents(folder)[0],
    )


def read_model_documents(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(evaluation, instance config) of a model bundle; {} / None for a missing file."""
    evaluation_file, config_file = folder / EVALUATION_FILE, folder / INSTANCE_FILE
    evaluation = json.loads(evaluation_file.read_text()) if evaluation_file.is_file() else {}
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return evaluation, config


# ---------------------------------------------------------------- which model serves


@dataclass(frozen=True, slots=True)
class ServedVersion:
    """The model version an instance serves, and where its bundle is."""

    version: int
    artifact_path: str
    finished_at: datetime | None


def serving_versions(s: Session, instance: str | None = None) -> dict[str, ServedVersion]:
    """Instance → the version it serves: its current version when that is READY,
    else its newest READY version. The one rule the trainer's registry and the
    scorer both apply; `instance` narrows the query to one instance."""
    instances = select(InstanceRow.name, InstanceRow.current_version)
    ready = select(
        ModelVersionRow.instance_name,
        ModelVersionRow.version,
        ModelVersionRow.artifact_path,
        ModelVersionRow.finished_at,
    ).where(
        ModelVersionRow.status == Status.READY.value, ModelVersionRow.artifact_path.is_not(None)
    )
    if instance is not None:
        instances = instances.where(InstanceRow.name == instance)
        ready = ready.where(ModelVersionRow.instance_name == instance)
    current: dict[str, int | None] = {name: v for name, v in s.execute(instances)}
    versions: dict[str, dict[int, ServedVersion]] = {}
    for name, version, path, finished in s.execute(ready):
        if name in current and path is not None:
            versions.setdefault(name, {})[version] = ServedVersion(version, path, finished)
    served: dict[str, ServedVersion] = {}
    for name, by_version in versions.items():
        pinned = current.get(name)
        served[name] = by_version[pinned if pinned in by_version else max(by_version)]
    return served


# ---------------------------------------------------------------- encoder bundle

ENCODER_FILE: Final = "encoder.onnx"
"""ONNX graph: input ENCODER_INPUT float32 [N, B] → output ENCODER_OUTPUT float32 [N, D]."""
BEHAVIOUR_SPEC_FILE: Final = "behaviour_spec.json"
ENCODER_METRICS_FILE: Final = "metrics.json"
ENCODER_INPUT: Final = "behaviour"
ENCODER_OUTPUT: Final = "embedding"


def encoder_metadata(
    version: int, kind: str, dimensions: int, dataset: str, chosen_by: str
) -> dict[str, Any]:
    """The manifest keys of an encoder bundle."""
    return {
        "version": version,
        "kind": kind,
        "dimensions": dimensions,
        "dataset": dataset,
        "input": ENCODER_INPUT,
        "output": ENCODER_OUTPUT,
        "chosen_by": chosen_by,
    }


def write_encoder_bundle(
    folder: Path,
    *,
    onnx_model: bytes,
    behaviour_spec_json: str,
    metrics: dict[str, float],
    chosen_by: str,
) -> None:
    """Write an encoder bundle's files into `folder` (the temporary folder being published)."""
    (folder / ENCODER_FILE).write_bytes(onnx_model)
    (folder / BEHAVIOUR_SPEC_FILE).write_text(behaviour_spec_json)
    (folder / ENCODER_METRICS_FILE).write_text(
        json.dumps({"metrics": metrics, "chosen_by": chosen_by}, indent=2)
    )


@dataclass(frozen=True, slots=True)
class EncoderBundleFiles:
    """An encoder bundle as read back: its manifest, ONNX path and behaviour spec text."""

    manifest: dict[str, Any]
    onnx_path: Path
    behaviour_spec_json: str

    @property
    def kind(self) -> str:
        """The encoder family ("pca", "autoencoder")."""
        return str(self.manifest.get("kind", ""))

    @property
    def version(self) -> int:
        """The encoder version the bundle was published as."""
        return int(self.manifest.get("version", 0))

    @property
    def dimensions(self) -> int:
        """Embedding dimensions (0 when the manifest does not say)."""
        return int(self.manifest.get("dimensions") or 0)


def read_encoder_bundle(folder: Path) -> EncoderBundleFiles:
    """Read an encoder bundle folder's manifest and locate its files."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FailedPrecondition(f"encoder bundle {folder.name} has no manifest")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    if not (folder / BEHAVIOUR_SPEC_FILE).is_file():
        raise FailedPrecondition(f"encoder bundle {folder.name} has no {BEHAVIOUR_SPEC_FILE}")
    return EncoderBundleFiles(
        manifest, folder / ENCODER_FILE, (folder / BEHAVIOUR_SPEC_FILE).read_text()
    )
