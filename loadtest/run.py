"""`make loadtest` / `python -m loadtest.run`: load the scorer and segmenter.

    python -m loadtest.run                        # every config against running services
    python -m loadtest.run get_profile_scores     # only some (names of configs/*.json)
    python -m loadtest.run --tool h2load          # force the fallback
    python -m loadtest.run --start                # start local services on a small dataset first

Targets FORESIGHT_SCORER_ADDR and FORESIGHT_SEGMENTER_ADDR (default
127.0.0.1:50052 / 127.0.0.1:50053, the ports of `make up`) and starts
nothing unless --start is given. Uses ghz when it is on PATH, otherwise
h2load (Debian's nghttp2-client). Prints requests/s, latency percentiles and
status counts per configuration; exits 1 when any call failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from foresight.client import ForesightClient
from foresight.tools import localrun
from loadtest import ghz, h2load
from loadtest.calls import LoadConfig, client_config, load_configs
from loadtest.make_data import build_requests, facts_from_services, write_requests
from loadtest.result import Result, format_table


def pick_tool(requested: str) -> str:
    """ghz when installed (or asked for), else h2load; fails when neither exists."""
    if requested != "auto":
        if shutil.which(requested) is None:
            raise SystemExit(f"{requested} is not on PATH")
        return requested
    if shutil.which("ghz"):
        return "ghz"
    if shutil.which("h2load"):
        return "h2load"
    raise SystemExit("neither ghz nor h2load found: apt-get install nghttp2-client (h2load)")


def check_targets(configs: Sequence[LoadConfig], env: dict[str, str]) -> None:
    """Fail early, with a hint, when a target service is not SERVING."""
    from foresight.healthcheck import check

    for address in sorted({c.address(env) for c in configs}):
        serving, status = check(address, timeout_s=5)
        if not serving:
            raise SystemExit(
                f"{address} is not serving ({status}). Start the services and give them "
                "scores and an index (`make up`, then `python -m loadtest.prepare`), point "
                "FORESIGHT_SCORER_ADDR / FORESIGHT_SEGMENTER_ADDR at running ones, or pass --start."
            )


def run_all(
    configs: Sequence[LoadConfig], tool: str, env: dict[str, str], sample: int
) -> list[Result]:
    """Run each configuration in turn (never in parallel: they would share the cores)."""
    results = []
    for config in configs:
        address = config.address(env)
        print(
            f"→ {config.name}: {config.total} × {config.call} on {address} with {tool}", flush=True
        )
        try:
            if tool == "ghz":
                result = ghz.run(config, address)
            else:
                result = h2load.run(config, address, sample=sample)
        except (RuntimeError, OSError) as exc:
            result = Result(config.name, tool, 0, 0.0, 0.0, errors=[str(exc)])
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="configs to run (default: all)")
    parser.add_argument("--tool", choices=["auto", "ghz", "h2load"], default="auto")
    parser.add_argument("--start", action="store_true", help="start local services first")
    parser.add_argument("--work", type=Path, help="work folder for --start (default: temporary)")
    parser.add_argument("--profiles", type=int, default=3000, help="synthetic profiles for --start")
    parser.add_argument("--total", type=int, help="override every config's request count")
    parser.add_argument(
        "--sample", type=int, default=50, help="calls whose grpc-status is checked (h2load)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    tool = pick_tool(args.tool)
    configs = load_configs(args.names or None)
    if args.total:
        configs = [replace(c, raw={**c.raw, "total": args.total}) for c in configs]
    env = dict(os.environ)
    services = None
    tmp = None
    try:
        if args.start:
            from loadtest import prepare

            work = args.work
            if work is None:
                tmp = tempfile.TemporaryDirectory(prefix="foresight-loadtest-")
                work = Path(tmp.name)
            print(f"starting services on {args.profiles:,} synthetic profiles in {work} …")
            services = prepare.start(work, profiles=args.profiles)
            env["FORESIGHT_SCORER_ADDR"] = f"127.0.0.1:{services.ports['scorer']}"
            env["FORESIGHT_SEGMENTER_ADDR"] = f"127.0.0.1:{services.ports['segmenter']}"
            env["FORESIGHT_TRAINER_ADDR"] = f"127.0.0.1:{services.ports['trainer']}"
            # Request data from this run, not the committed files.
            data_dir = work / "loadtest-data"
            with ForesightClient(client_config(env)) as client:
                write_requests(build_requests(facts_from_services(client)), data_dir)
            configs = [
                replace(c, raw={**c.raw, "data-file": str(data_dir / c.data_file.name)})
                for c in configs
            ]
        check_targets(configs, env)
        results = run_all(configs, tool, env, args.sample)
    finally:
        if services is not None:
            print(f"services stopped: {localrun.stop(services)}")
        if tmp is not None:
            tmp.cleanup()
    print()
    print(format_table(results))
    if any(r.statuses.get("NOT_FOUND") for r in results):
        print(
            "NOT_FOUND answers: the request data names profiles these services do not know; "
            "regenerate it with `python -m loadtest.make_data` against them."
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
