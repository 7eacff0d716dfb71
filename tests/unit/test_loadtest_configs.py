"""The load-test configurations and the h2load framing, without any server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from loadtest import calls, ghz, h2load, make_data
from loadtest.result import Result, format_table, percentiles

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit

CONFIG_FILES = sorted(calls.CONFIG_DIR.glob("*.json"))
EXPECTED_CALLS = {
    "foresight.scorer.v1.ScorerService.GetProfileScores",
    "foresight.scorer.v1.ScorerService.BatchGetProfileScores",
    "foresight.scorer.v1.ScorerService.ScoreProfile",
    "foresight.segmenter.v1.SegmenterService.ExpandSegment",
    "foresight.segmenter.v1.SegmenterService.FindSimilar",
}


def test_one_config_per_loaded_rpc() -> None:
    assert {json.loads(p.read_text())["call"] for p in CONFIG_FILES} == EXPECTED_CALLS


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_is_a_reflection_ghz_config(path: Path) -> None:
    raw = json.loads(path.read_text())
    # No proto/protoset: ghz then resolves the method by server reflection.
    assert "proto" not in raw and "protoset" not in raw
    assert raw["insecure"] is True
    host, port = raw["host"].rsplit(":", 1)
    assert host and port.isdigit()
    assert raw["total"] >= raw["concurrency"] > 0
    # Bounded runs: ghz stops at max-duration even if `total` is not reached.
    assert raw["max-duration"].endswith("s")
    method = calls.method_descriptor(raw["call"])
    assert not method.client_streaming and not method.server_streaming
    config = calls.LoadConfig(path, raw)
    assert config.path_header == "/" + raw["call"].rsplit(".", 1)[0] + "/" + method.name
    default_port = {"ScorerService": "50052", "SegmenterService": "50053"}
    assert port == default_port[method.containing_service.name]


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_data_parses_into_the_request_message(path: Path) -> None:
    config = calls.LoadConfig(path, json.loads(path.read_text()))
    assert config.data_file.is_file(), f"run python -m loadtest.make_data ({config.data_file})"
    messages = config.messages()  # ParseDict rejects unknown fields and bad types
    assert len(messages) >= 10
    for message in messages:
        assert message.DESCRIPTOR.full_name == config.method.input_type.full_name
        assert message.ByteSize() > 0


def test_address_comes_from_the_environment() -> None:
    by_name = {c.name: c for c in calls.load_configs()}
    env = {"FORESIGHT_SCORER_ADDR": "10.1.1.1:1", "FORESIGHT_SEGMENTER_ADDR": ""}
    assert by_name["get_profile_scores"].address(env) == "10.1.1.1:1"
    assert by_name["expand_segment"].address(env) == "127.0.0.1:50053"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_h2load_body_decodes_back_into_the_request(path: Path) -> None:
    config = calls.LoadConfig(path, json.loads(path.read_text()))
    body = h2load.request_body(config)
    assert body[0] == 0  # not compressed
    assert int.from_bytes(body[1:5], "big") == len(body) - 5
    [payload] = h2load.unframe(body)
    decoded = calls.request_class(config.call).FromString(payload)
    assert decoded == config.messages()[0]


def test_unframe_rejects_malformed_bodies() -> None:
    assert h2load.unframe(h2load.frame(b"") + h2load.frame(b"ab")) == [b"", b"ab"]
    with pytest.raises(ValueError, match="truncated"):
        h2load.unframe(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="wants 9 bytes"):
        h2load.unframe(b"\x00\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="compressed"):
        h2load.unframe(b"\x01\x00\x00\x00\x00")


def test_h2load_command_and_output_parsing(tmp_path: Path) -> None:
    config = calls.load_configs(["batch_get_profile_scores"])[0]
    cmd = h2load.command(config, tmp_path / "b", tmp_path / "l", "127.0.0.1:9")
    assert cmd[-1] == "http://127.0.0.1:9/foresight.scorer.v1.ScorerService/BatchGetProfileScores"
    assert "--header=content-type: application/grpc" in cmd
    assert "--header=te: trailers" in cmd
    stdout = (
        "finished in 2.00s, 500.00 req/s, 31.25KB/s\n"
        "requests: 1000 total, 1000 started, 1000 done, 998 succeeded, 2 failed, "
        "0 errored, 0 timeout\n"
    )
    log = "".join(f"1795450120331489\t200\t{1000 * (i + 1)}\n" for i in range(998))
    log += "1795450120331489\t-1\t5\n" * 2
    result = h2load.parse_output(stdout, log, "x")
    assert (result.requests, result.rps, result.seconds) == (1000, 500.0, 2.0)
    assert result.http_statuses == {"200": 998, "-1": 2}
    assert result.latency_ms[50] == pytest.approx(499.0)
    assert result.errors and not result.ok


def test_ghz_report_parsing() -> None:
    report = {
        "count": 200,
        "total": 2_000_000_000,
        "average": 1_500_000,
        "rps": 100.0,
        "latencyDistribution": [
            {"percentage": p, "latency": p * 100_000} for p in (10, 25, 50, 75, 90, 95, 99)
        ],
        "statusCodeDistribution": {"OK": 199, "NotFound": 1},
        "errorDistribution": {"rpc error: code = NotFound": 1},
    }
    result = ghz.parse_report(report, "x")
    assert result.latency_ms == {50: 5.0, 90: 9.0, 95: 9.5, 99: 9.9}
    assert result.mean_ms == 1.5 and result.rps == 100.0
    assert not result.ok
    config = calls.load_configs(["get_profile_scores"])[0]
    run_cfg = ghz.run_config(config, "127.0.0.1:1")
    assert run_cfg["host"] == "127.0.0.1:1" and Path(run_cfg["data-file"]).is_absolute()


def test_percentiles_and_table() -> None:
    assert percentiles([float(i) for i in range(1, 101)]) == {50: 50, 90: 90, 95: 95, 99: 99}
    assert percentiles([]) == {}
    table = format_table(
        [Result("get", "h2load", 10, 1.0, 10.0, {50: 1.0}, 1.0, {"OK": 5}, {"200": 10})]
    )
    assert "get" in table and "OK=5" in table and "200=10" in table


def test_make_data_builds_valid_requests() -> None:
    facts = make_data.RunFacts(
        profile_ids=[f"p{i:07d}" for i in range(300)],
        instances=["churn", "conversion"],
        as_of=None,
        segments=["high-churn"],
    )
    requests = make_data.build_requests(facts, seed=1)
    assert requests == make_data.build_requests(facts, seed=1)  # deterministic
    by_file = {c.data_file.stem: c for c in calls.load_configs()}
    assert set(requests) == set(by_file)
    for name, items in requests.items():
        cls = calls.request_class(by_file[name].call)
        for item in items:
            json_format.ParseDict(item, cls())
    assert any(item.get("segment") == "high-churn" for item in requests["expand_segment"])
    assert all(len(item["profile_ids"]) <= 1000 for item in requests["batch_get_profile_scores"])
