"""Every `foresight` command: its success path and one bad input (one-line error, exit code).

The long jobs (train, score, train-encoder, build-index, discover, import …)
ran once while the shared system was prepared; their tests check that output.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from foresight.cli import app
from foresight.cli.app import ExitCode
from tests.cli.conftest import DATASET, INSTANCE, PROFILES, SEGMENT, System, ok, one_line_error

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- bad input, one line each

BAD_INPUT = [
    (("describe", "no-such-dataset"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("import", "../outside.csv", "--dataset", DATASET), "PERMISSION_DENIED", ExitCode.DENIED),
    (("import", "synthetic/events.parquet", "--dataset", "Bad Name"), "INVALID_ARGUMENT", 3),
    (("import-profiles", "no/such/file.parquet"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("instance", "get", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("instance", "delete", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("validate-goal", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("train", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("versions", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("evaluation", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("score", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("lookup", "no-such-profile"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("score-profile", "no-such-instance", "p1"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("segment", SEGMENT, "--instance", INSTANCE), "ALREADY_EXISTS", ExitCode.CONFLICT),
    (("segments", "--json", "--csv"), "USAGE", ExitCode.USAGE),
    (("insights", "no-such-instance"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("train-encoder", "no-such-dataset"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("build-index", "no-such-dataset"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("discover", "--clusters", "-1"), "INVALID_ARGUMENT", ExitCode.INVALID_INPUT),
    (("clusters", "--discovery", "999"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("save-cluster-segment", "999", "cli-bad-cluster"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("similar", "no-such-profile"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("expand", "--segment", "no-such-segment"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (
        ("expand", "--profile", "p0000001", "--min-similarity", "0.5", "--target-multiple", "5000"),
        "INVALID_ARGUMENT",
        ExitCode.INVALID_INPUT,
    ),
    (("cluster-map", "--sample-size", "0"), "USAGE", ExitCode.USAGE),
    (("export-segment", "no-such-segment", "--out", "x.csv"), "NOT_FOUND", ExitCode.NOT_FOUND),
    (("segment", "cli-x", "--instance", INSTANCE, "--bucket", "HUGE"), "USAGE", ExitCode.USAGE),
    (("datasets", "--json", "--csv"), "USAGE", ExitCode.USAGE),
    (("describe", DATASET, "--csv"), "USAGE", ExitCode.USAGE),
    (("no-such-command",), "USAGE", ExitCode.USAGE),
]


@pytest.mark.parametrize(("args", "status", "code"), BAD_INPUT, ids=lambda v: str(v))
def test_bad_input_is_one_line(
    system: System, args: tuple[str, ...], status: str, code: int, tmp_path: Path
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        one_line_error(system.cli(*args), status, code)
        assert not (tmp_path / "x.csv").exists()  # a failed export leaves no file


def test_refused_path_says_which_root_applies(system: System) -> None:
    line = one_line_error(
        system.cli("import", "../outside.csv", "--dataset", DATASET),
        "PERMISSION_DENIED",
        ExitCode.DENIED,
    )
    assert "FORESIGHT_IMPORT_ROOT" in line and str(system.imports) not in line


def test_invalid_argument_names_the_field(system: System) -> None:
    line = one_line_error(
        system.cli("import", "synthetic/events.parquet", "--dataset", "Bad Name"),
        "INVALID_ARGUMENT",
        ExitCode.INVALID_INPUT,
    )
    assert "dataset" in line


def test_debug_shows_the_traceback(system: System) -> None:
    result = system.cli("--debug", "describe", "no-such-dataset")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: NOT_FOUND: ")


def test_unreachable_service_is_unavailable(no_services: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["datasets"], env=no_services)
    one_line_error(result, "UNAVAILABLE", ExitCode.UNAVAILABLE)


# ---------------------------------------------------------------- health


def test_health_serving(system: System) -> None:
    result = ok(system.cli("health", "--json"))
    statuses = {row["service"]: row["status"] for row in json.loads(result.stdout)}
    assert statuses == {"trainer": "SERVING", "scorer": "SERVING", "segmenter": "SERVING"}


def test_health_exits_non_zero_when_down(no_services: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["health"], env=no_services)
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "not serving: trainer, scorer, segmenter" in result.stderr
    assert "UNAVAILABLE" in result.stdout


# ---------------------------------------------------------------- data


def test_generate(tmp_path: Path) -> None:
    result = ok(CliRunner().invoke(app, ["generate", "--out", str(tmp_path), "--profiles", "50"]))
    assert "50 profiles" in result.stdout
    assert (tmp_path / "events.parquet").exists()
    bad = CliRunner().invoke(app, ["generate", "--out", str(tmp_path), "--profiles", "0"])
    one_line_error(bad, "USAGE", ExitCode.USAGE)


def test_import_ingest_and_profiles_were_summarised(system: System) -> None:
    imported = system.output_of("foresight import synthetic")
    assert "accepted" in imported and "rejected 0" in imported
    streamed = system.output_of("foresight ingest")
    assert "written 0" in streamed  # the same rows again: every one a duplicate
    assert "profiles from" in system.output_of("foresight import-profiles")


def test_import_json_is_typed(system: System) -> None:
    result = ok(system.cli("import", "synthetic/events.parquet", "--dataset", "cli-json", "--json"))
    summary = json.loads(result.stdout)
    assert isinstance(summary["rows_read"], int) and summary["rows_read"] > 0
    assert summary["rejected"] == 0  # zeros are printed, not left out
    assert summary["reject_reasons"] == []


def test_datasets_table_json_csv(system: System) -> None:
    assert DATASET in ok(system.cli("datasets")).stdout
    rows = json.loads(ok(system.cli("datasets", "--json")).stdout)["datasets"]
    assert any(d["name"] == DATASET and isinstance(d["rows"], int) for d in rows)
    table = list(csv.DictReader(io.StringIO(ok(system.cli("datasets", "--csv")).stdout)))
    assert {"dataset", "rows", "parts", "updated"} <= set(table[0])


def test_describe(system: System) -> None:
    result = ok(system.cli("describe", DATASET))
    assert "commerce.purchases" in result.stdout and "profiles" in result.stdout
    data = json.loads(ok(system.cli("describe", DATASET, "--json")).stdout)
    assert data["profiles"] > 0 and data["event_types"]


def test_piped_output_is_not_wrapped_at_80_columns(system: System) -> None:
    result = ok(CliRunner().invoke(app, ["clusters"], env={**system.env, "COLUMNS": ""}))
    assert max(len(line) for line in result.stdout.splitlines()) > 80


# ---------------------------------------------------------------- instances


def test_instance_init_schema_create_list_get_delete(system: System, tmp_path: Path) -> None:
    path = tmp_path / "instance.yaml"
    ok(CliRunner().invoke(app, ["instance", "init", str(path)]))
    text = path.read_text().replace("name: churn", "name: cli-init")
    path.write_text(text)
    again = CliRunner().invoke(app, ["instance", "init", str(path)])
    one_line_error(again, "USAGE", ExitCode.USAGE)  # never overwrites without --force
    schema = json.loads(ok(CliRunner().invoke(app, ["instance", "schema"])).stdout)
    assert "goal" in schema["required"]
    ok(system.cli("instance", "create", "-f", str(path)))
    listed = json.loads(ok(system.cli("instance", "list", "--json")).stdout)["instances"]
    assert {"cli-init", INSTANCE} <= {i["name"] for i in listed}
    got = json.loads(ok(system.cli("instance", "get", "cli-init")).stdout)
    assert got["goal"]["window_days"] == 30 and got["type"] == "CHURN"
    ok(system.cli("instance", "delete", "cli-init"))
    one_line_error(system.cli("instance", "get", "cli-init"), "NOT_FOUND", ExitCode.NOT_FOUND)


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        (
            "name: x\ndataset: shop\ngoal: {conditions: 'value >', window_days: 30}",
            "goal.conditions",
        ),
        ("name: x\ndataset: shop\ngoal: {conditions: a = 1, window_days: 999}", "goal.window_days"),
        ("name: x\ndataset: shop\nbogus: 1\ngoal: {conditions: a = 1}", "bogus"),
    ],
)
def test_instance_create_bad_file(
    system: System, tmp_path: Path, yaml_text: str, field: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    line = one_line_error(system.cli("instance", "create", "-f", str(path)), "INVALID_ARGUMENT", 3)
    assert f": {field}:" in line


def test_instance_create_missing_file(system: System) -> None:
    one_line_error(
        system.cli("instance", "create", "-f", "/no/such/file.yaml"),
        "NOT_FOUND",
        ExitCode.NOT_FOUND,
    )


def test_validate_goal(system: System) -> None:
    data = json.loads(ok(system.cli("validate-goal", INSTANCE, "--json")).stdout)
    assert data["eligible"] == data["positives"] + data["negatives"] > 0
    assert "eligible" in ok(system.cli("validate-goal", INSTANCE)).stdout


def test_train_and_versions(system: System) -> None:
    assert "READY" in system.output_of("foresight train")
    versions = json.loads(ok(system.cli("versions", INSTANCE, "--json")).stdout)["versions"]
    assert versions[0]["status"] == "READY" and isinstance(versions[0]["auc"], float)
    rows = list(csv.DictReader(io.StringIO(ok(system.cli("versions", INSTANCE, "--csv")).stdout)))
    assert rows[0]["status"] == "READY"


def test_evaluation_writes_report(system: System, tmp_path: Path) -> None:
    result = ok(system.cli("evaluation", INSTANCE, "--out", str(tmp_path)))
    assert "AUC" in result.stdout and "model_health.png" in result.stdout
    page = next(tmp_path.glob(f"{INSTANCE}-v*/report.html")).read_text()
    # The scorer has runs of the instance: the page has the model health section.
    assert "Model health over time" in page and 'data-chart="model_health"' in page
    # Without a scorer the page is still written, and says what was left out.
    down = system.env | {"FORESIGHT_SCORER_ADDR": "127.0.0.1:1"}
    alone = CliRunner().invoke(
        app, ["evaluation", INSTANCE, "--out", str(tmp_path / "alone")], env=down
    )
    assert alone.exit_code == 0 and "model health left out: UNAVAILABLE" in alone.stdout
    assert "Model health" not in next((tmp_path / "alone").glob("*/report.html")).read_text()


def test_scoring_right_after_training_uses_the_new_version(system: System) -> None:
    """The scorer never polls in these tests: each new READY version is loaded on demand."""
    path = system.root / "retrain.yaml"
    path.write_text(
        (system.root / "churn.yaml").read_text().replace("name: churn ", "name: cli-retrain ")
    )
    ok(system.cli("instance", "create", "-f", str(path)))
    for version in (1, 2):
        trained = json.loads(ok(system.cli("train", "cli-retrain", "--json")).stdout)
        assert trained["version"] == version
        run = json.loads(ok(system.cli("score", "cli-retrain", "--json")).stdout)
        assert run["model_version"] == version


# ---------------------------------------------------------------- scorer


def test_score_lookup_score_profile(system: System) -> None:
    assert "profiles scored" in system.output_of("foresight score churn")
    scores = json.loads(ok(system.cli("lookup", system.profile_id, "--json")).stdout)["scores"]
    assert scores[0]["instance"] == INSTANCE and scores[0]["bucket"] in {"LOW", "MEDIUM", "HIGH"}
    assert 1 <= scores[0]["percentile"] <= 100
    rows = list(
        csv.DictReader(io.StringIO(ok(system.cli("lookup", system.profile_id, "--csv")).stdout))
    )
    assert rows[0]["profile"] == system.profile_id
    live = json.loads(ok(system.cli("score-profile", INSTANCE, system.profile_id, "--json")).stdout)
    assert 0 <= live["score"]["probability"] <= 1 and live["score"]["factors"]


def test_segments_and_export(system: System, tmp_path: Path) -> None:
    assert SEGMENT in system.output_of("foresight segment ")
    listed = json.loads(ok(system.cli("segments", "--json")).stdout)["segments"]
    size = next(s["size"] for s in listed if s["name"] == SEGMENT)
    out = tmp_path / "high.parquet"
    ok(system.cli("export-segment", SEGMENT, "--out", str(out)))
    assert pl.read_parquet(out).height == size > 0
    ok(system.cli("segment", "cli-medium", "--instance", INSTANCE, "--bucket", "MEDIUM"))
    assert "cli-medium" in ok(system.cli("segments", "--csv")).stdout


def test_insights(system: System) -> None:
    data = json.loads(ok(system.cli("insights", INSTANCE, "--json")).stdout)
    assert sum(b["count"] for b in data["histogram"]) == data["run"]["profiles"]
    assert all(isinstance(b["count"], int) for b in data["histogram"])
    assert "bucket" in ok(system.cli("insights", INSTANCE)).stdout
    # The demo's churn goal (no activity at all) fills every bucket.
    assert {b["bucket"]: b["profiles"] > 0 for b in data["buckets"]} == {
        "LOW": True,
        "MEDIUM": True,
        "HIGH": True,
    }


def test_model_health(system: System) -> None:
    """The README scored churn as of 2024-11-15 (its window is in the data) and as of the end."""
    data = json.loads(ok(system.cli("model-health", INSTANCE, "--json")).stdout)
    runs = data["runs"]
    assert data["instance"] == INSTANCE and len(runs) >= 2
    as_of = [r["run"]["as_of"] for r in runs]
    assert as_of == sorted(as_of, reverse=True)  # newest as-of first
    latest = runs[0]
    assert not latest["window_closed"] and latest["realized"] is None
    early = next(r for r in runs if r["run"]["as_of"].startswith("2024-11-15"))
    realized = early["realized"]
    assert early["window_closed"] and realized["profiles"] == early["run"]["profiles"] > 0
    assert 0 <= realized["auc"] <= 1 and 0 <= realized["positive_rate"] <= 1
    assert latest["drift"]["previous_run_id"] in {r["run"]["run_id"] for r in runs[1:]}
    assert latest["drift"]["score_psi"] >= 0 and latest["drift"]["top_features"]
    assert data["retrain_recommended"] == bool(data["reasons"])
    table = ok(system.cli("model-health", INSTANCE)).stdout
    assert ("retrain recommended" in table) == data["retrain_recommended"]
    assert "realized AUC" in table and "2024-11-15" in table
    rows = list(
        csv.DictReader(io.StringIO(ok(system.cli("model-health", INSTANCE, "--csv")).stdout))
    )
    assert [r["run"] for r in rows] == [r["run"]["run_id"] for r in runs]
    assert float(rows[[r["run"] for r in rows].index(early["run"]["run_id"])]["realized AUC"]) == (
        pytest.approx(realized["auc"])
    )


def test_model_health_errors(system: System) -> None:
    one_line_error(system.cli("model-health", "nope"), "NOT_FOUND", 4)
    result = system.cli("model-health", INSTANCE, "--max-runs", "101")
    assert result.exit_code == 2  # usage: out of range


# ---------------------------------------------------------------- segmenter


def test_encoder_index_discover(system: System) -> None:
    assert "discovery v1" in system.output_of("foresight discover")
    assert "dimensions" in system.output_of("foresight build-index")


def test_clusters_and_save_cluster_segment(system: System) -> None:
    clusters = json.loads(ok(system.cli("clusters", "--json")).stdout)["clusters"]
    assert len(clusters) >= 2
    rows = list(csv.DictReader(io.StringIO(ok(system.cli("clusters", "--csv")).stdout)))
    assert len(rows) == len(clusters)
    first = clusters[0]
    result = json.loads(
        ok(
            system.cli("save-cluster-segment", str(first["cluster_id"]), "cli-cluster", "--json")
        ).stdout
    )
    assert result["size"] == first["size"]


def test_similar(system: System) -> None:
    rows = list(
        csv.DictReader(
            io.StringIO(ok(system.cli("similar", system.profile_id, "--k", "5", "--csv")).stdout)
        )
    )
    assert len(rows) == 5 and system.profile_id not in {r["profile"] for r in rows}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_expand_writes_lookalikes_and_reach_ends_at_target(
    system: System, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"lookalikes{suffix}"
    result = ok(
        system.cli(
            "expand", "--segment", SEGMENT, "--target-size", "40", "--out", str(out), "--json"
        )
    )
    data = json.loads(result.stdout)
    frame = pl.read_parquet(out) if suffix == ".parquet" else pl.read_csv(out)
    assert frame.height == len(data["lookalikes"]) == 40
    assert frame["profile_id"].to_list() == [n["profile_id"] for n in data["lookalikes"]]
    assert data["reach"][-1]["audience_size"] == 40


def test_expand_default_target_is_not_the_whole_population(system: System) -> None:
    data = json.loads(ok(system.cli("expand", "--segment", SEGMENT, "--json")).stdout)
    others = PROFILES - data["seed_size"]
    assert 0 < len(data["lookalikes"]) <= max(1, others // 10)
    multiple = json.loads(
        ok(
            system.cli("expand", "--profile", system.profile_id, "--target-multiple", "7", "--json")
        ).stdout
    )
    assert len(multiple["lookalikes"]) == 7


def test_cluster_map(system: System, tmp_path: Path) -> None:
    result = ok(system.cli("cluster-map", "--out", str(tmp_path), "--sample-size", "500"))
    assert "cluster-map.html" in result.stdout
    assert (tmp_path / "cluster-map.png").stat().st_size > 0


# ---------------------------------------------------------------- ingest (streaming)


def test_ingest_streams_csv_and_jsonl_like_import(system: System, tmp_path: Path) -> None:
    csv_file = tmp_path / "events.csv"
    csv_file.write_text(
        "profile_id,timestamp,event_type,value,attributes\n"
        'p1,2024-05-01T10:00:00Z,commerce.purchases,12.5,"{""tier"":""gold""}"\n'
        "p2,1714557600000,web.webpagedetails.pageViews,,\n"
        "p3,not a time,commerce.purchases,1,\n"
    )
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text(
        '{"profile_id":"p4","timestamp":"2024-05-01 10:00:00","event_type":"a","attributes":{"x":"1"}}\n'
        '{"profile_id":"p5","timestamp":1714557600000,"event_type":"a"}\n'
    )
    for path, accepted, rejected in ((csv_file, 2, 1), (jsonl, 2, 0)):
        data = json.loads(
            ok(system.cli("ingest", str(path), "--dataset", "cli-stream", "--json")).stdout
        )
        assert (data["accepted"], data["rejected"]) == (accepted, rejected), data
    unsupported = tmp_path / "events.txt"  # exists, but is no event format
    unsupported.write_text("profile_id\np1\n")
    bad = system.cli("ingest", str(unsupported), "--dataset", "cli-stream")
    one_line_error(bad, "INVALID_ARGUMENT", ExitCode.INVALID_INPUT)
