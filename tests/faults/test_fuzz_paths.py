"""Path-escape attempts through every RPC that takes a name or a path (issue 11.1).

Each attempt must be refused (never OK) and nothing may appear outside the
data directory: names are slugs at the entry point, derived paths are proven
to stay under their root, symlinks planted in the stores included.
`make faults` collects the counts (FORESIGHT_FUZZ_REPORT_DIR).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from foresight.api.segmenter.v1 import segmenter_pb2, segmenter_pb2_grpc
from foresight.api.trainer.v1 import trainer_pb2, trainer_pb2_grpc

if TYPE_CHECKING:
    from tests.faults.inprocess import Suite

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]
MARK = "escaped"  # every hostile name carries it, so an escape is easy to find


def _events(n: int = 3) -> list[common_pb2.Event]:
    out = []
    for i in range(n):
        event = common_pb2.Event(
            event_id=f"x{i}", profile_id=f"p{i}", event_type="web.webpagedetails.pageViews"
        )
        event.timestamp.FromSeconds(1_767_225_600 + i)
        out.append(event)
    return out


def _instance(name: str, dataset: str) -> trainer_pb2.CreateInstanceRequest:
    return trainer_pb2.CreateInstanceRequest(
        instance=trainer_pb2.Instance(
            name=name,
            type=trainer_pb2.INSTANCE_TYPE_CHURN,
            dataset=dataset,
            goal=trainer_pb2.Goal(window_days=7),
        )
    )


def _attempts(suite: Suite, outside: Path) -> dict[str, Callable[[Metadata], object]]:
    """Distinct ways to ask a service to touch a path outside its data directory."""
    trainer = trainer_pb2_grpc.TrainerServiceStub(suite.channels["trainer"])
    up = "../" * 8
    return {
        "instance ../": lambda md: trainer.CreateInstance(
            _instance(f"{up}{MARK}-instance", suite.dataset), metadata=md
        ),
        "instance absolute": lambda md: trainer.CreateInstance(
            _instance(f"{outside}/{MARK}-abs", suite.dataset), metadata=md
        ),
        "instance dot-dot": lambda md: trainer.CreateInstance(
            _instance("..", suite.dataset), metadata=md
        ),
        "ingest dataset ../": lambda md: trainer.IngestEvents(
            iter([trainer_pb2.IngestEventsRequest(dataset=f"{up}{MARK}-ds", events=_events())]),
            metadata=md,
        ),
        "ingest into a symlinked dataset": lambda md: trainer.IngestEvents(
            iter([trainer_pb2.IngestEventsRequest(dataset="linked", events=_events())]),
            metadata=md,
        ),
        "import dataset name ../": lambda md: trainer.ImportDataset(
            trainer_pb2.ImportDatasetRequest(dataset=f"../{MARK}-import", path="ok.jsonl"),
            metadata=md,
        ),
        "import path ../": lambda md: trainer.ImportDataset(
            trainer_pb2.ImportDatasetRequest(dataset="fine", path=f"{up}{outside.name}/x.jsonl"),
            metadata=md,
        ),
        "import absolute path": lambda md: trainer.ImportDataset(
            trainer_pb2.ImportDatasetRequest(dataset="fine", path=str(outside / "x.jsonl")),
            metadata=md,
        ),
        "import through a symlink": lambda md: trainer.ImportDataset(
            trainer_pb2.ImportDatasetRequest(dataset="fine", path="link/x.jsonl"), metadata=md
        ),
        "profiles path ../": lambda md: trainer.ImportProfiles(
            trainer_pb2.ImportProfilesRequest(path=f"{up}{outside.name}/x.jsonl"), metadata=md
        ),
        "verify dataset ..": lambda md: trainer.VerifyDataset(
            trainer_pb2.VerifyDatasetRequest(dataset=".."), metadata=md
        ),
        "repair dataset ../": lambda md: trainer.RepairDataset(
            trainer_pb2.RepairDatasetRequest(dataset=f"{up}{MARK}"), metadata=md
        ),
    }


def _more_attempts(suite: Suite) -> dict[str, Callable[[Metadata], object]]:
    """The same through the encoder, the scorer and the segmenter."""
    trainer = trainer_pb2_grpc.TrainerServiceStub(suite.channels["trainer"])
    scorer = scorer_pb2_grpc.ScorerServiceStub(suite.channels["scorer"])
    segmenter = segmenter_pb2_grpc.SegmenterServiceStub(suite.channels["segmenter"])
    up = "../" * 8
    return {
        "encoder dataset ../": lambda md: list(
            trainer.TrainEncoder(
                trainer_pb2.TrainEncoderRequest(dataset=f"{up}{MARK}-enc"), metadata=md
            )
        ),
        "score segment name ../": lambda md: scorer.CreateSegment(
            scorer_pb2.CreateSegmentRequest(name=f"{up}{MARK}-seg", instance=suite.instance),
            metadata=md,
        ),
        "scoring run instance ../": lambda md: list(
            scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=f"{up}{MARK}"), metadata=md)
        ),
        "index dataset ../": lambda md: list(
            segmenter.BuildIndex(
                segmenter_pb2.BuildIndexRequest(dataset=f"{up}{MARK}-index"), metadata=md
            )
        ),
        "cluster segment name ../": lambda md: segmenter.SaveClusterSegment(
            segmenter_pb2.SaveClusterSegmentRequest(cluster_id=0, name=f"{up}{MARK}-cluster"),
            metadata=md,
        ),
    }


def _marked_files(suite: Suite, outside: Path) -> list[Path]:
    """Files or folders a hostile name could have created: anywhere near the suite, in
    the folder outside, at the top of /tmp and of the file system."""
    found = list(suite.data.parent.rglob(f"*{MARK}*")) + list(outside.rglob(f"*{MARK}*"))
    for top in (Path("/tmp"), Path("/")):
        found += top.glob(f"*{MARK}*")
    return found


def test_every_path_escape_attempt_is_refused(
    suite: Suite, metadata: Metadata, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.jsonl").write_text('{"profile_id": "p", "event_type": "x"}\n')
    (suite.data / "imports" / "ok.jsonl").write_text('{"profile_id": "p", "event_type": "x"}\n')
    (suite.data / "imports" / "link").symlink_to(outside, target_is_directory=True)
    (suite.data / "events" / "linked").symlink_to(outside, target_is_directory=True)
    before = set(_marked_files(suite, outside))
    refused: dict[str, str] = {}
    accepted: list[str] = []
    for name, attempt in {**_attempts(suite, outside), **_more_attempts(suite)}.items():
        try:
            attempt(metadata)
        except grpc.RpcError as err:
            refused[name] = err.code().name
        else:
            accepted.append(name)
    escapes = [p for p in _marked_files(suite, outside) if p not in before]
    escapes += [p for p in outside.iterdir() if p.name != "x.jsonl"]
    report = os.environ.get("FORESIGHT_FUZZ_REPORT_DIR")
    if report:
        Path(report, "paths.json").write_text(
            json.dumps(
                {
                    "path_escape_attempts": len(refused) + len(accepted),
                    "path_escape_attempts_refused": len(refused),
                    "path_escapes": len(escapes),
                    "codes": refused,
                },
                indent=2,
            )
        )
    assert not accepted, f"accepted: {accepted}"
    assert not escapes, escapes
    assert len(refused) >= 10
    assert set(refused.values()) <= {"INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND"}
