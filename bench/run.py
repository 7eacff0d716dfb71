"""`make bench`: measure the figures the issues name; print a table, write bench/results.json.

Every figure comes from a run on this machine; nothing is copied in. Stages
that take a long time reuse the 1M-profile data set under bench/data.
Run one stage with `python -m bench.run --only NAME` (ingest, scorer, segmenter,
loadtest, faults, dask, dask_score, train_rss, fuzz, simulator — faults and fuzz are
`make faults`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from foresight.api.trainer.v1 import trainer_pb2
from foresight.client import ForesightClient
from foresight.tools import localrun
from foresight.tools.generate import generate

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
RESULTS = ROOT / "results.json"
PROFILES = int(os.environ.get("FORESIGHT_BENCH_PROFILES", "1000000"))
console = Console()

# figure → (target text, unit)
TARGETS: dict[str, tuple[str, str]] = {
    "generate_events_per_s": ("≥ 333k (20M in ≤ 60 s)", "events/s"),
    "generate_1m_s": ("≤ 60", "s"),
    "ingest_events_per_s": ("report", "events/s"),
    "featurize_events_per_s": ("≥ 1,000,000", "events/s"),
    "train_200k_s": ("≤ 90", "s"),
    "onnx_parity_max_abs_diff": ("≤ 1e-5", ""),
    "auc_conversion": ("≥ 0.75", ""),
    "auc_churn": ("≥ 0.75", ""),
    "ece_after_conversion": ("report (ECE, 10 bins)", ""),
    "ece_after_churn": ("report (ECE, 10 bins)", ""),
    "batch_score_1m_s": ("≤ 30", "s"),
    "batch_score_featurize_s": ("report (Σ shards)", "s"),
    "batch_score_predict_s": ("report (Σ shards)", "s"),
    "batch_score_explain_s": ("report (Σ shards)", "s"),
    "batch_score_write_s": ("report", "s"),
    "batch_score_snapshot_s": ("report", "s"),
    "lookup_rps_ratio_vs_empty": ("≥ 0.8", "ratio"),
    "lookup_p99_ms_at_1k_rps": ("≤ 2", "ms"),
    "lookup_rps_2_workers_ratio": ("report (> 1)", "ratio"),
    "score_profile_p99_ms": ("≤ 25 at 100 req/s", "ms"),
    "score_profile_rps": ("≥ 300", "req/s"),
    "score_profile_rps_2_processes": ("report (2 server processes, 8 connections)", "req/s"),
    "score_profile_first_call_ms": ("report (cold cache: the shard's parts copied)", "ms"),
    "scorer_rss_mb_1m": ("≤ 400", "MB"),
    "scorer_peak_rss_mb_1m": ("report (peak after the load tests, first call included)", "MB"),
    "scorer_rss_mb_1m_all_read": (
        "report (after the load tests and a read of every mapped snapshot page; "
        "anonymous part: scorer_anon_mb_1m_all_read)",
        "MB",
    ),
    "scorer_forkserver_rss_mb": ("report (idle; shard workers fork from it)", "MB"),
    "onnx_vs_lightgbm_single_row_ratio": ("report", "ratio"),
    "onnx_vs_lightgbm_batch10k_ratio": ("report", "ratio"),
    "index_build_1m_s": ("≤ 150", "s"),
    "recall_at_10": ("≥ 0.95", ""),
    "expand_10k_to_100k_s": ("≤ 2", "s"),
    "discover_1m_s": ("≤ 120", "s"),
    "segmenter_rss_mb_1m": ("≤ 1,500", "MB"),
    "persona_ari": ("≥ 0.8", ""),
    "lookalike_conversion_lift": ("≥ 3", "×"),
    **{
        f"loadtest_{name}_{figure}": ("report", unit)
        for name in (
            "get_profile_scores",
            "batch_get_profile_scores",
            "score_profile",
            "expand_segment",
            "find_similar",
        )
        for figure, unit in (("rps", "req/s"), ("p50_ms", "ms"), ("p99_ms", "ms"))
    },
    "auc_pure_foresight_minus_bgnbd": ("≥ -0.005", ""),
    "auc_pure_oracle": ("report", ""),
    "auc_pure_foresight": ("report", ""),
    "auc_pure_bgnbd": ("report", ""),
    "auc_pure_bgnbd_true_params": ("report (best from the data)", ""),
    "auc_oracle": ("report", ""),
    "auc_foresight": ("report", ""),
    "auc_bgnbd": ("report", ""),
    "auc_recency": ("report", ""),
    "auc_oracle_minus_foresight": ("≤ 0.01", ""),
    "auc_foresight_minus_bgnbd": ("≥ 0.01", ""),
    "brier_oracle": ("report", ""),
    "brier_foresight": ("report", ""),
    "brier_bgnbd": ("report", ""),
    "dask_featurize_events_per_s": ("report", "events/s"),
    "dask_vs_local_featurize_ratio": ("report", "ratio"),
    "dask_batch_score_1m_s": ("report (at dask_batch_score_profiles)", "s"),
    "dask_batch_score_profiles": ("report", "profiles"),
    "local_warm_batch_score_s": ("report (same run, local pool kept warm)", "s"),
    "local_batch_score_s": ("report (same run, local pool as the scorer runs it)", "s"),
    "dask_vs_local_throughput_ratio": ("≥ 0.8", "ratio"),
    "dask_vs_local_as_shipped_ratio": ("report", "ratio"),
    "dask_profiles": ("report (N of the dask stage)", "profiles"),
    "train_peak_rss_mb_1m": ("report (at train_rss_measured.profiles[0])", "MB"),
    "train_peak_rss_mb_2m": ("≤ 1.2 × train_peak_rss_mb_1m (at 2 × that)", "MB"),
    "lost_acknowledged_writes": ("0", ""),
    "kill9_cases": ("≥ 8", "kill points"),
    "orphan_processes_after_kill": ("0", ""),
    "fuzz_requests": ("≥ 20,000", "requests"),
    "fuzz_internal_or_unknown": ("0", ""),
    "path_escape_attempts_refused": ("all tried, ≥ 10", ""),
    "path_escapes": ("0", ""),
}


def synthetic_dir() -> Path:
    """The 1M-profile data set (generated once; reused by later stages)."""
    return DATA / "imports" / f"synthetic-{PROFILES}"


def stage_generate(results: dict[str, Any]) -> None:
    """generate_events_per_s: the generator at 1M profiles."""
    out = synthetic_dir()
    summary = generate(out, profiles=PROFILES, seed=11)
    results["generate_events_per_s"] = round(summary.events / summary.seconds)
    results["generate_1m_s"] = round(summary.seconds, 1)
    results["generate_events"] = summary.events


def stage_ingest(results: dict[str, Any]) -> None:
    """ingest_events_per_s: ImportDataset of the whole file over gRPC, validation included."""
    if not (synthetic_dir() / "events.parquet").exists():
        stage_generate(results)
    var = DATA / "var-ingest"
    subprocess.run(["rm", "-rf", str(var)], check=True)
    services = localrun.start(
        var, env={"FORESIGHT_IMPORT_ROOT": str((DATA / "imports").resolve())}, services=("trainer",)
    )
    try:
        with ForesightClient(services.client_config(timeout_s=3600)) as client:
            t0 = time.perf_counter()
            summary = client.trainer.ImportDataset(
                trainer_pb2.ImportDatasetRequest(
                    dataset="bench", path=f"{synthetic_dir().name}/events.parquet"
                )
            )
            seconds = time.perf_counter() - t0
    finally:
        localrun.stop(services)
    results["ingest_events_per_s"] = round(summary.rows_read / seconds)
    results["ingest_seconds"] = round(seconds, 1)
    results["ingest_rows"] = summary.rows_read


def _optional(module: str) -> Callable[[dict[str, Any]], None]:
    def run(results: dict[str, Any]) -> None:
        if not synthetic_dir().joinpath("events.parquet").exists():
            stage_generate(results)
        importlib.import_module(module).run(results, DATA)

    return run


def _dask_stage(results: dict[str, Any]) -> None:
    """Dask figures on their own generated data (bench/dask_bench.py)."""
    from bench import dask_bench

    dask_bench.run(results, DATA)


def stage_faults(results: dict[str, Any]) -> None:
    """The kill -9 / SIGTERM fault suite on its own small data (no 1M data set needed)."""
    from bench import faults_bench

    faults_bench.run(results)
    # Its own record of where and when: the 1M-profile `machine` block stays the other stages'.
    results["faults_machine"] = {**machine(), "profiles": results["faults_profiles"]}


def _simulator_stage(results: dict[str, Any]) -> None:
    """Foresight vs BG/NBD vs the truth on simulated logs (bench/simulator_bench.py)."""
    from bench import simulator_bench

    simulator_bench.run(results, DATA)
    # Its own record of where and when, like the fault figures.
    results["simulator_machine"] = {**machine(), "profiles": results["sim_customers"]}


STAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "generate": stage_generate,
    "ingest": stage_ingest,
    "trainer": _optional("bench.trainer_bench"),
    "scorer": _optional("bench.scorer_bench"),
    "segmenter": _optional("bench.segmenter_bench"),
    "loadtest": lambda results: importlib.import_module("bench.loadtest_bench").run(results, DATA),
    "dask": lambda results: _dask_stage(results),
    # Batch scoring on Dask vs the local pool alone (part of "dask" too).
    "dask_score": lambda results: importlib.import_module(
        "bench.dask_score_bench"
    ).run_batch_scoring(results, DATA),
    # Trainer peak memory at 1M and 2M profiles (bench/dask_bench.py's data sets).
    "train_rss": lambda results: importlib.import_module("bench.dask_bench").train_rss(
        results, DATA
    ),
    "faults": stage_faults,
    # The fuzzer needs no data set: in-process services, small seeded data.
    "fuzz": lambda results: importlib.import_module("bench.fuzz_bench").run(results),
    # Simulated logs with a known truth (issue 13): their own small data, no 1M data set.
    "simulator": lambda results: _simulator_stage(results),
}


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": commit,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profiles": PROFILES,
    }


def print_table(results: dict[str, Any]) -> None:
    """The figures next to their targets."""
    table = Table("figure", "value", "target")
    for name, (target, unit) in TARGETS.items():
        value = results.get(name, "not measured")
        table.add_row(name, f"{value} {unit}".strip() if value != "not measured" else value, target)
    console.print(table)


def update_readme(results: dict[str, Any]) -> None:
    """Rewrite the README's benchmark table from the results."""
    readme = ROOT.parent / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return
    m = results.get("machine", {})
    lines = [
        start,
        f"Last stage measured {m.get('measured_at', '?')} at commit {m.get('commit', '?')} "
        f"on {m.get('cpus', '?')} cores, {m.get('profiles', '?')} profiles.",
    ]
    stages = results.get("stage_machine", {})
    if stages:
        lines.append(
            "Stages: "
            + "; ".join(
                f"{name} {r.get('measured_at', '?')[:16]} at {r.get('commit', '?')} "
                f"({r.get('profiles', '?')} profiles)"
                for name, r in sorted(stages.items())
            )
            + "; the figures of other stages come from earlier runs."
        )
    if "faults_machine" in results:
        f = results["faults_machine"]
        lines.append(
            f"Fault figures (`make faults`): measured {f.get('measured_at', '?')} at commit "
            f"{f.get('commit', '?')} on {f.get('cpus', '?')} cores, {f.get('profiles', '?')} profiles."
        )
    if "simulator_machine" in results:
        f = results["simulator_machine"]
        lines.append(
            f"Simulator figures (stage `simulator`): measured {f.get('measured_at', '?')} at commit "
            f"{f.get('commit', '?')} on {f.get('cpus', '?')} cores, {f.get('profiles', '?')} "
            "simulated customers per setting."
        )
    if "train_rss_measured" in results:
        f = results["train_rss_measured"]
        lines.append(
            f"Trainer memory figures (stage `train_rss`): measured {f.get('measured_at', '?')} "
            f"at {' and '.join(f'{n:,}' for n in f.get('profiles', []))} profiles, sample bound "
            f"{f.get('sample_rows', '?'):,} rows, on {f.get('cpus', '?')} cores."
        )
    lines += [
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    for name, (target, unit) in TARGETS.items():
        value = results.get(name)
        shown = "not measured" if value is None else f"{value} {unit}".strip()
        lines.append(f"| `{name}` | {shown} | {target} |")
    lines.append(end)
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(head + "\n".join(lines) + tail)


def main() -> None:
    """Run the stages (all by default) and merge into bench/results.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(STAGES), action="append")
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    DATA.mkdir(parents=True, exist_ok=True)
    # A whole run skips `dask_score`: the `dask` stage measures the same figures.
    for name in args.only or [s for s in STAGES if s != "dask_score"]:
        console.rule(f"stage {name}")
        t0 = time.perf_counter()
        STAGES[name](results)
        console.print(f"stage {name}: {time.perf_counter() - t0:.0f} s")
        own_records = ("faults", "fuzz", "dask", "dask_score", "train_rss", "simulator")
        if name not in own_records:
            results["machine"] = machine()
            # Which stage was measured when: a partial run does not relabel the others.
            record = dict(results["machine"])
            if name == "loadtest":  # its own, smaller data set
                record["profiles"] = results.get("loadtest_profiles", record["profiles"])
            results.setdefault("stage_machine", {})[name] = record
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_table(results)
    update_readme(results)


if __name__ == "__main__":
    main()
