"""Fault-suite fixtures: one prepared data folder, copied per test; services as real processes.

The session fixture runs the whole pipeline once on a small generated data
set (import, an instance, a model, a scoring run, an encoder, an index, a
discovery) with the three services as separate processes on SQLite, then
stops them with SIGTERM. Each test gets its own copy of that folder and
starts the services it needs (port 0, port files), so the tests are
independent of each other and of their order.

`FaultWorld` kills (SIGKILL) or stops (SIGTERM) a service, remembers every
process of its tree, restarts it, and checks what must hold after any
crash: no process of the old tree left, no temporary or uncatalogued file,
every READY registry row pointing at a complete bundle, no work left in a
running state. Tallies feed the `faults` stage of bench.run when
FORESIGHT_FAULTS_REPORT names a file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import psutil
import pytest
from sqlalchemy import select

from foresight.api.common.v1 import common_pb2
from foresight.api.scorer.v1 import scorer_pb2
from foresight.api.segmenter.v1 import segmenter_pb2
from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ClientConfig, ForesightClient
from foresight.storage import ArtifactStore, Database
from foresight.storage.db import default_database_url
from foresight.storage.models import (
    DatasetPartRow,
    DiscoveryRow,
    EncoderVersionRow,
    IndexVersionRow,
    ModelVersionRow,
    ScoringRunRow,
)
from foresight.tools import localrun
from foresight.tools.generate import generate

PROFILES = 1_500
DATASET = "shop"
INSTANCE = "churn"
RUNNING_STATES = {"RUNNING"}  # foresight.storage.lifecycle.Status.RUNNING
ORPHAN_WAIT_S = 60.0  # a bound, not a timing: a loaded machine may need long to end the tree

TALLY: dict[str, Any] = {"kill_points": set(), "lost_acknowledged_writes": 0, "orphans": 0}


@dataclass(frozen=True)
class Prepared:
    """The folder every test copies, and what is in it."""

    template: Path
    imports: Path
    env: dict[str, str]
    profile_ids: list[str]


def _follow(stream: Any) -> Any:
    return ForesightClient.follow(stream, lambda _p: None)


def _pipeline(client: ForesightClient) -> None:
    t = client.trainer
    t.ImportDataset(trainer_pb2.ImportDatasetRequest(dataset=DATASET, path="gen/events.parquet"))
    t.CreateInstance(
        trainer_pb2.CreateInstanceRequest(
            instance=trainer_pb2.Instance(
                name=INSTANCE,
                type=trainer_pb2.INSTANCE_TYPE_CHURN,
                goal=trainer_pb2.Goal(
                    conditions=common_pb2.Conditions(text='event_type = "commerce.purchases"'),
                    occurrence=trainer_pb2.OCCURRENCE_WILL_NOT_OCCUR,
                    window_days=30,
                ),
                dataset=DATASET,
                min_positives=50,
                min_negatives=50,
            )
        )
    )
    model = _follow(t.TrainModel(trainer_pb2.TrainModelRequest(instance=INSTANCE, max_trials=1)))
    assert model.status == common_pb2.JOB_STATUS_READY, model.error
    run = _follow(client.scorer.RunScoring(scorer_pb2.RunScoringRequest(instance=INSTANCE)))
    assert run.status == common_pb2.JOB_STATUS_READY, run.error
    encoder = _follow(
        t.TrainEncoder(
            trainer_pb2.TrainEncoderRequest(
                dataset=DATASET, dimensions=8, kind=trainer_pb2.ENCODER_KIND_PCA
            )
        )
    )
    assert encoder.status == common_pb2.JOB_STATUS_READY, encoder.error
    s = client.segmenter
    _follow(s.BuildIndex(segmenter_pb2.BuildIndexRequest(dataset=DATASET)))
    _follow(s.DiscoverSegments(segmenter_pb2.DiscoverSegmentsRequest(clusters=3)))


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """Generated data and the whole pipeline run once; services stopped afterwards."""
    root = tmp_path_factory.mktemp("faults")
    imports = root / "imports"
    generate(imports / "gen", profiles=PROFILES, seed=5)
    env = {
        "FORESIGHT_IMPORT_ROOT": str(imports),
        "FORESIGHT_SHARDS": "4",
        "FORESIGHT_SHARD_PROCESSES": "2",  # trainer and segmenter pools
        "FORESIGHT_SCORER_SERVER_PROCESSES": "1",
        "FORESIGHT_GRACE_SECONDS": "5",
        "FORESIGHT_SNAPSHOT_INTERVAL_S": "0",  # only the journal and SIGTERM persist writes
        "FORESIGHT_LOG_JSON": "true",
    }
    template = root / "template"
    services = localrun.start(template, env=env, timeout_s=180)
    try:
        with ForesightClient(services.client_config(timeout_s=120)) as client:
            _pipeline(client)
    finally:
        codes = localrun.stop(services)
    assert all(code == 0 for code in codes.values()), codes
    shutil.rmtree(template / "run", ignore_errors=True)
    ids = pl.read_parquet(imports / "gen" / "events.parquet", columns=["profile_id"])
    return Prepared(template, imports, env, sorted(ids["profile_id"].unique().head(200).to_list()))


@dataclass
class FaultWorld:
    """One test's copy of the prepared folder and the service processes on it."""

    prepared: Prepared
    data_dir: Path
    services: localrun.LocalServices
    trees: list[list[int]] = field(default_factory=list)
    _client: ForesightClient | None = None

    @property
    def client(self) -> ForesightClient:
        """A client for the current ports (made again after a restart)."""
        if self._client is None:
            self._client = ForesightClient(self.services.client_config(timeout_s=60))
        return self._client

    def start(self, *names: str) -> None:
        """Start services on this folder and wait until they serve."""
        started = localrun.start(self.data_dir, env=self.prepared.env, services=names)
        self.services.procs.update(started.procs)
        self.services.ports.update(started.ports)
        if self._client is not None:
            self._client.close()
            self._client = None

    def pid(self, name: str) -> int:
        """The service's process id."""
        return self.services.procs[name].pid

    def tree(self, name: str) -> list[int]:
        """The service's process and all its descendants (workers, resource tracker)."""
        proc = psutil.Process(self.pid(name))
        return [proc.pid, *(c.pid for c in proc.children(recursive=True))]

    def wait_for_children(self, name: str, timeout_s: float = 30.0) -> bool:
        """Wait until the service has started child processes (a job's workers)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(self.tree(name)) > 1:
                return True
            time.sleep(0.05)
        return False

    def kill(self, name: str, point: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to the service, wait for it to end; returns its exit code."""
        self.trees.append(self.tree(name))
        proc = self.services.procs[name]
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        TALLY["kill_points"].add(point)
        return code

    def kill_mid_stream(
        self, name: str, stream: Iterable[Any], point: str, wait_for_workers: bool = False
    ) -> None:
        """SIGKILL `name` at the job's first progress message; the stream must not finish.

        With `wait_for_workers` the kill waits until the job's worker processes
        exist, so their fate is part of the test.
        """
        with pytest.raises(grpc.RpcError):
            for event in stream:
                assert event.WhichOneof("event") == "progress", "the job finished before the kill"
                if wait_for_workers:
                    assert self.wait_for_children(name), f"{name} started no worker process"
                self.kill(name, point)

    @contextmanager
    def lookups(self, profile_id: str) -> Iterator[ScorePoller]:
        """Ask the scorer for a profile's scores all along; the poller's record comes back."""
        poller = ScorePoller(f"127.0.0.1:{self.services.ports['scorer']}", profile_id)
        poller.start()
        try:
            yield poller
        finally:
            poller.stop.set()
            poller.join(timeout=10)

    def lost(self, count: int) -> None:
        """Tally acknowledged writes missing after a restart (0 is the only good figure)."""
        TALLY["lost_acknowledged_writes"] += count

    def restart(self, name: str) -> None:
        """Start the service again on the same folder."""
        self.start(name)

    # ---------------------------------------------------------------- checks

    def database(self) -> Database:
        """The shared registry (SQLite in the data folder)."""
        return Database(default_database_url(self.data_dir))

    def rows(self, table: Any) -> list[Any]:
        """Every row of a registry table, read directly."""
        db = self.database()
        try:
            with db.session() as s:
                return list(s.scalars(select(table)))
        finally:
            db.dispose()

    def assert_no_orphan_processes(self) -> None:
        """Every process of every killed tree has ended (workers die with their parent)."""
        deadline = time.monotonic() + ORPHAN_WAIT_S
        alive: list[int] = []
        while time.monotonic() < deadline:
            alive = [pid for tree in self.trees for pid in tree if _alive(pid)]
            if not alive:
                return
            time.sleep(0.2)
        TALLY["orphans"] += len(alive)
        raise AssertionError(f"processes outlived their killed service: {_describe(alive)}")

    def assert_consistent(self) -> None:
        """Registry rows point at complete bundles; nothing running; no stray files."""
        db = self.database()
        artifacts = ArtifactStore(self.data_dir / "artifacts")
        try:
            with db.session() as s:
                bundles: list[str] = []
                tables: list[Any] = [
                    ModelVersionRow,
                    EncoderVersionRow,
                    IndexVersionRow,
                    DiscoveryRow,
                ]
                for table in tables:
                    rows: list[Any] = list(s.scalars(select(table)))
                    for row in rows:
                        assert row.status not in RUNNING_STATES, (table.__name__, row.status)
                        if row.status == "READY":
                            assert row.artifact_path, (table.__name__, row.version)
                            artifacts.verify(row.artifact_path)  # every file vs its checksum
                        if row.artifact_path:
                            bundles.append(row.artifact_path)
                runs = list(s.scalars(select(ScoringRunRow)))
                assert all(r.status not in RUNNING_STATES for r in runs), [r.status for r in runs]
                scores = {r.scores_path for r in runs if r.scores_path}
                for path in scores:
                    assert (self.data_dir / path).exists() or artifacts.path(path).exists(), path
                parts = {p for p in s.scalars(select(DatasetPartRow.path))}
        finally:
            db.dispose()
        stray = [
            str(p.relative_to(self.data_dir))
            for p in self.data_dir.rglob("*")
            if p.name.startswith(".tmp") or p.name.endswith(".tmp")
        ]
        assert not stray, f"temporary files left behind: {stray[:5]}"
        events = self.data_dir / "events"
        uncatalogued = [
            str(f.relative_to(events))
            for f in events.rglob("*.parquet")
            if "quarantine" not in f.parts
            and str(f.relative_to(events)) not in parts
            and str(f) not in parts
        ]
        assert not uncatalogued, f"event parts outside the catalogue: {uncatalogued[:5]}"

    def close(self) -> None:
        """Stop whatever still runs (SIGTERM, then SIGKILL)."""
        if self._client is not None:
            self._client.close()
        localrun.stop(self.services, grace_s=20)


class ScorePoller(threading.Thread):
    """Asks the scorer for one profile's scores until stopped; counts failures (own channel)."""

    def __init__(self, address: str, profile_id: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.profile_id = profile_id
        self.stop = threading.Event()
        self.calls = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with ForesightClient(ClientConfig(scorer=self.address, timeout_s=5)) as client:
            while not self.stop.is_set():
                try:
                    resp = client.scorer.GetProfileScores(
                        scorer_pb2.GetProfileScoresRequest(profile_id=self.profile_id)
                    )
                    if not resp.scores:
                        self.failures.append("no score")
                except grpc.RpcError as exc:
                    self.failures.append(str(exc))
                self.calls += 1
                self.stop.wait(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:120]}")
        except psutil.Error:
            out.append(str(pid))
    return out


@pytest.fixture
def world(prepared: Prepared, tmp_path: Path) -> Iterator[FaultWorld]:
    """A private copy of the prepared folder; services are started by the test."""
    data_dir = tmp_path / "var"
    shutil.copytree(prepared.template, data_dir)
    w = FaultWorld(prepared, data_dir, localrun.LocalServices(data_dir.resolve()))
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="session", autouse=True)
def faults_report() -> Iterator[None]:
    """Write the tallies for bench.run's `faults` stage (only when asked)."""
    yield
    target = os.environ.get("FORESIGHT_FAULTS_REPORT")
    if target:
        Path(target).write_text(
            json.dumps(
                {
                    "kill9_cases": len(
                        [p for p in TALLY["kill_points"] if not p.startswith("sigterm")]
                    ),
                    "kill_points": sorted(TALLY["kill_points"]),
                    "lost_acknowledged_writes": TALLY["lost_acknowledged_writes"],
                    "orphan_processes_after_kill": TALLY["orphans"],
                    "profiles": PROFILES,
                }
            )
        )
