"""`make demo`: the whole mission over gRPC against locally started services.

Generates synthetic journeys, starts trainer, scorer and segmenter as local
processes (SQLite), imports the data and describes it, then checks health and
reflection of every service. Later stages (models, scores, segments) run when
their services answer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rich.console import Console

from foresight import localrun
from foresight.api.trainer.v1 import trainer_pb2
from foresight.cli import print_description
from foresight.client import ForesightClient
from foresight.generate import generate

console = Console()


def step(title: str) -> None:
    """Print a stage header."""
    console.rule(f"[bold cyan]{title}")


def list_services(address: str) -> list[str]:
    """Service names a server lists through reflection."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
        return sorted(s.name for s in answer.list_services_response.service)


def run(data: Path, profiles: int, seed: int) -> None:
    """Run every stage of the demo."""
    imports = data / "imports"
    synthetic = imports / "synthetic"
    step(f"1. Generate {profiles:,} synthetic profiles (seed {seed})")
    if (synthetic / "events.parquet").exists() and (
        synthetic / ".profiles"
    ).read_text() == f"{profiles}:{seed}":
        console.print(f"reusing {synthetic}")
    else:
        generated = generate(synthetic, profiles=profiles, seed=seed)
        (synthetic / ".profiles").write_text(f"{profiles}:{seed}")
        console.print(f"{generated.events:,} events in {generated.seconds:.1f} s")

    step("2. Start trainer, scorer and segmenter (local processes, SQLite)")
    t0 = time.perf_counter()
    services = localrun.start(data / "var", env={"FORESIGHT_IMPORT_ROOT": str(imports.resolve())})
    console.print(
        ", ".join(f"{k} on :{v}" for k, v in services.ports.items()),
        f"({time.perf_counter() - t0:.1f} s)",
    )
    try:
        with ForesightClient(services.client_config(timeout_s=600)) as client:
            for name in localrun.SERVICES:
                addr = f"127.0.0.1:{services.ports[name]}"
                console.print(
                    f"{name:10s} health={client.health(name)}  reflection={list_services(addr)}"
                )

            step("3. Import the events and profile attributes over gRPC")
            summary = client.trainer.ImportDataset(
                trainer_pb2.ImportDatasetRequest(dataset="shop", path="synthetic/events.parquet"),
                timeout=3600,
            )
            console.print(
                f"read {summary.rows_read:,}  accepted {summary.accepted:,}  rejected {summary.rejected:,}  "
                f"written {summary.written:,}  duplicates {summary.duplicates:,}"
            )
            profiles_summary = client.trainer.ImportProfiles(
                trainer_pb2.ImportProfilesRequest(path="synthetic/profiles.parquet"), timeout=3600
            )
            console.print(
                f"profiles {profiles_summary.profiles:,} with {list(profiles_summary.attributes)}"
            )

            step("4. Describe the dataset")
            print_description(
                client.trainer.DescribeDataset(trainer_pb2.DescribeDatasetRequest(dataset="shop"))
            )
    finally:
        codes = localrun.stop(services)
        console.print(f"services stopped: {codes}")


def main() -> None:
    """`python -m foresight.demo --data DIR`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("var/demo"))
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    run(args.data, args.profiles, args.seed)


if __name__ == "__main__":
    main()
