"""The load tests' parts: answer checks, arrivals, raw statistics, report, baseline, runner plan.

Fast: no model training, no `bentoml serve`. The real Locust runs here are 1 to 2 seconds long,
against stub servers in this process; the end-to-end run is in test_loadtests_e2e.py.
"""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from loadtests.arrivals import PoissonSchedule, latency_from_schedule_ms
from loadtests.protocol import (
    UNANSWERED,
    WRONG_DIGIT,
    check_answer,
    load_payloads,
    parse_predictions,
    predict_body,
)
from loadtests.report import build_report
from loadtests.runner import LOCUSTFILE, REPO_ROOT, LoadTestConfig, check_config, plan, rotated
from loadtests.samples import read_locust_totals, read_raw, summarize
from loadtests.servers import (
    Server,
    check_loopback,
    histogram_delta,
    histogram_quantile,
    parse_histograms,
)
from models.contract import FRAMEWORKS
from models.data import MnistDataError
from tests.conftest import FIXTURE_MNIST


def answer_body(digits: list[int]) -> bytes:
    return json.dumps({"framework": "pytorch", "predictions": [
        {"digit": d, "probabilities": [0.1] * 10} for d in digits]}).encode()


# --- answer checks -------------------------------------------------------------------------

def test_right_digits_pass_the_check():
    verdict = check_answer(200, answer_body([3, 7]), np.array([3, 7]))
    assert verdict.error is None and verdict.correct == 2


def test_wrong_digit_is_a_failure_named_wrong_digit():
    verdict = check_answer(200, answer_body([3, 1]), np.array([3, 7]))
    assert verdict.error.startswith(WRONG_DIGIT)
    assert verdict.correct == 1


@pytest.mark.parametrize(("status", "body", "reason"), [
    (500, b'{"error": "boom"}', "HTTP 500"),
    (200, b"not json", "bad answer"),
    (200, answer_body([3]), "1 predictions for 2 images"),
    (200, json.dumps({"predictions": [{"digit": 3, "probabilities": [1.0]}] * 2}).encode(),
     "probabilities"),
    (200, json.dumps({"predictions": [{"digit": 12, "probabilities": [0.1] * 10}] * 2}).encode(),
     "not 0-9"),
])
def test_broken_answers_are_failures_that_say_why(status, body, reason):
    verdict = check_answer(status, body, np.array([3, 7]))
    assert reason in verdict.error
    assert not verdict.error.startswith(WRONG_DIGIT)


def test_predictions_parse_from_the_documented_shape_or_a_bare_list():
    assert parse_predictions({"predictions": [{"digit": 1}]}) == [{"digit": 1}]
    assert parse_predictions([{"digit": 1}]) == [{"digit": 1}]
    with pytest.raises(ValueError):
        parse_predictions({"results": {}})


def test_request_body_carries_contract_pixels():
    images = np.full((1, 28, 28), 255, dtype=np.uint8)
    body = json.loads(predict_body("keras", images))
    assert body["framework"] == "keras"
    assert np.asarray(body["images"]).shape == (1, 28, 28)
    assert np.asarray(body["images"]).max() == 1.0


def test_payloads_fall_back_to_the_mnist_cache(monkeypatch):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.setattr("models.data.default_cache_dir", lambda: FIXTURE_MNIST)
    load_payloads.cache_clear()
    payloads = load_payloads("pytorch", "", "", 10, 4, 0)
    assert len(payloads.single) == len(payloads.labels) == 10
    assert len(payloads.batches) == 2


def test_no_payloads_anywhere_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    monkeypatch.setattr("models.data.default_cache_dir", lambda: tmp_path / "empty")
    load_payloads.cache_clear()
    with pytest.raises(MnistDataError, match="--payloads.*--mnist-dir") as raised:
        load_payloads("pytorch", "", "", 10, 4, 0)
    assert "MNIST_DATA_DIR" in str(raised.value)


# --- open-loop arrivals --------------------------------------------------------------------

def test_poisson_arrivals_follow_the_rate():
    rate, seconds = 200.0, 50.0
    schedule = PoissonSchedule(rate, start=0.0, seed=1)
    times = []
    while not times or times[-1] < seconds:
        times.append(schedule.next())
    gaps = np.diff(times)
    assert len(times) == pytest.approx(rate * seconds, rel=0.05)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.1)  # exponential gaps
    assert np.all(gaps >= 0)


def test_late_send_adds_its_lateness_to_the_service_time():
    # scheduled at t=10 s, sent 50 ms late because every user was busy, answered in 2 ms
    assert latency_from_schedule_ms(10.0, 10.05, 2.0) == pytest.approx(52.0)
    assert latency_from_schedule_ms(10.0, 9.999, 2.0) == pytest.approx(2.0)


def test_arrival_rate_must_be_positive():
    with pytest.raises(ValueError):
        PoissonSchedule(0.0, start=0.0)


def test_unanswered_arrivals_are_those_taken_and_never_done_and_those_never_taken():
    schedule = PoissonSchedule(100.0, start=0.0, seed=3)
    taken = [schedule.next() for _ in range(5)]
    for scheduled in taken[:3]:
        schedule.done(scheduled)
    until = taken[-1] + 0.1
    never_taken = []
    probe = PoissonSchedule(100.0, start=0.0, seed=3)  # the same stream, to know what follows
    for _ in range(5):
        probe.next()
    while (t := probe.next()) < until:
        never_taken.append(t)
    assert schedule.unanswered(until=until) == taken[3:] + never_taken
    assert schedule.unanswered(until=until) == []  # handed out once


# --- raw samples ---------------------------------------------------------------------------

RAW_HEADER = ["start", "end", "latency_ms", "service_ms", "name", "images", "correct", "error"]


def write_raw(run_dir: Path, rows: list[list], name: str = "raw-1.csv") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / name).open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(RAW_HEADER)
        writer.writerows(rows)


def synthetic_rows(latencies_ms, *, t0: float = 1000.0, gap: float = 0.01,
                   errors: dict[int, str] | None = None, images: int = 1) -> list[list]:
    rows = []
    for i, latency in enumerate(latencies_ms):
        start = t0 + i * gap
        error = (errors or {}).get(i, "")
        rows.append([start, start + latency / 1000, latency, latency, "pytorch x1", images,
                     0 if error else images, error])
    return rows


def test_percentiles_keep_sub_millisecond_precision(tmp_path):
    # Locust would file all of these under 0 or 1 ms
    latencies = np.linspace(0.30, 0.70, 401)  # p50 0.50 ms
    write_raw(tmp_path, synthetic_rows(latencies))
    stats = summarize(read_raw(tmp_path), warmup=0.0, duration=100.0, drain=0.0)
    assert stats.p50 == pytest.approx(0.50, abs=0.005)
    assert stats.p99 == pytest.approx(0.696, abs=0.005)


def test_warmup_requests_are_left_out(tmp_path):
    slow_then_fast = [50.0] * 100 + [1.0] * 300  # the first second is slow (warm-up)
    write_raw(tmp_path, synthetic_rows(slow_then_fast))
    stats = summarize(read_raw(tmp_path), warmup=1.1, duration=100.0, drain=0.0)
    assert stats.p99 == pytest.approx(1.0)
    assert stats.warmup_requests >= 100


def test_a_slow_request_counts_in_the_window_it_started_in(tmp_path):
    # 10 s of 1 ms answers, and one request due at 8 s that takes 5 s: it ends after the run,
    # and leaving it out would hide the worst latency of the run
    latencies = [1.0] * 1000
    latencies[800] = 5000.0
    write_raw(tmp_path, synthetic_rows(latencies))
    stats = summarize(read_raw(tmp_path), warmup=1.0, duration=10.0, drain=1.0)
    assert stats.max == pytest.approx(5000.0)
    assert stats.requests == pytest.approx(800, abs=1)  # due in [1 s, 9 s]
    assert stats.warmup_requests == 100


def test_goodput_counts_only_successful_requests(tmp_path):
    # a server failing every other request fast does not serve twice as much
    errors = {i: "HTTP 503: busy" for i in range(0, 200, 2)}
    write_raw(tmp_path, synthetic_rows([1.0] * 200, gap=0.01, errors=errors, images=4))
    stats = summarize(read_raw(tmp_path), warmup=0.0, duration=2.0, drain=0.0)
    assert stats.requests == 200 and stats.errors == 100
    assert stats.goodput == pytest.approx(100 / 1.99)
    assert stats.images_per_second == pytest.approx(4 * 100 / 1.99)


def test_unanswered_requests_are_failures_that_count_in_the_percentiles(tmp_path):
    rows = synthetic_rows([1.0] * 90 + [2500.0] * 10,
                          errors={i: UNANSWERED for i in range(90, 100)})
    write_raw(tmp_path, rows)
    stats = summarize(read_raw(tmp_path), warmup=0.0, duration=100.0, drain=0.0)
    assert (stats.unanswered, stats.errors, stats.wrong_answers) == (10, 0, 0)
    assert stats.p99 == pytest.approx(2500.0)
    assert stats.goodput == pytest.approx(90 / 0.99)


def test_processes_raw_files_merge_and_failures_split(tmp_path):
    write_raw(tmp_path, synthetic_rows([1.0] * 10, errors={0: "HTTP 503: busy"}), "raw-1.csv")
    write_raw(tmp_path, synthetic_rows([1.0] * 10, t0=1000.005,
                                       errors={1: f"{WRONG_DIGIT}: 1 of 1"}), "raw-2.csv")
    stats = summarize(read_raw(tmp_path), warmup=0.0, duration=100.0, drain=0.0)
    assert (stats.requests, stats.errors, stats.wrong_answers) == (20, 1, 1)


def test_locust_totals_come_from_its_final_statistics(tmp_path):
    (tmp_path / "locust.json").write_text(json.dumps([
        {"name": "pytorch x1", "num_requests": 120, "num_failures": 2}]))
    assert read_locust_totals(tmp_path) == {"requests": 120, "failures": 2}
    assert read_locust_totals(tmp_path / "missing") is None


# --- report builder ------------------------------------------------------------------------

def recorded_run(out: Path, *, scenario: str, target: str, framework: str, users: int,
                 rate: float | None, latencies, round_index: int = 0, images: int = 1) -> None:
    level = f"{rate:g}rps" if rate is not None else f"{users}u"
    run_id = f"r{round_index}-{scenario}-{level}-{target}-{framework}"
    run_dir = out / "runs" / run_id
    write_raw(run_dir, synthetic_rows(latencies, images=images))
    (run_dir / "locust.json").write_text(json.dumps(
        [{"name": "x", "num_requests": len(latencies), "num_failures": 0}]))
    metrics = {}
    if target == "service":
        metrics = {"mnist_inference_seconds": {framework: {
            "buckets": {"0.0001": 0.0, "0.00025": 40.0, "0.0005": 50.0, "inf": 50.0},
            "sum": 0.01, "count": 50.0}}}
    (run_dir / "run.json").write_text(json.dumps({
        "round": round_index, "scenario": scenario, "target": target, "framework": framework,
        "users": users, "rate": rate, "exit_code": 0, "seconds": 3.0, "metrics": metrics,
        "run_id": run_id, "command": [], "warmup": 0.0, "duration": 100}))


def recorded_meta(out: Path, config: LoadTestConfig) -> None:
    from dataclasses import asdict

    out.mkdir(parents=True, exist_ok=True)
    accuracy = {"images": 250, "in_process": {f: 0.9 for f in config.frameworks},
                "service": {f: 0.9 for f in config.frameworks},
                "baseline": {f: 0.9 for f in config.frameworks},
                "providers": {"service": {f: "CPUExecutionProvider" for f in config.frameworks}}}
    (out / "meta.json").write_text(json.dumps({
        "started": "2026-01-01T00:00:00+00:00", "config": asdict(config), "quick": False,
        "machine": {"cpu": "test cpu", "cores": 2, "memory": "1 GiB", "os": "Linux",
                    "python": "3.11"},
        "versions": {"locust": "2"}, "service": {"url": "http://127.0.0.1:1",
                                                 "started_here": True, "module": "s:S",
                                                 "tags": {}},
        "baseline": {"frameworks": list(config.frameworks), "onnx": {}, "ort_threads": 1},
        "data": "fixture", "payload_images": 200, "accuracy": accuracy,
        "floor": {f: {"p50_ms": 0.03, "p99_ms": 0.05, "batch_size": 64, "batch_p50_ms": 1.3,
                      "images_per_second": 49000.0} for f in config.frameworks}}))


def has_row(report: str, *cells: str) -> bool:
    """Whether a markdown table row starts with these cells."""
    rows = ([c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
            if line.startswith("|"))
    return any(row[: len(cells)] == list(cells) for row in rows)


def test_report_builder_turns_recorded_runs_into_tables_and_charts(tmp_path):
    config = LoadTestConfig(frameworks=("keras", "pytorch"), users=(1, 8), rates=(50.0, 100.0),
                            rounds=2)
    recorded_meta(tmp_path, config)
    for round_index in range(2):
        for framework in config.frameworks:
            for target, scale in (("service", 2.0), ("baseline", 1.0)):
                for users in config.users:
                    recorded_run(tmp_path, scenario="closed", target=target, framework=framework,
                                 users=users, rate=None, round_index=round_index,
                                 latencies=np.linspace(0.5, 1.5, 201) * scale * users)
                for rate in config.rates:  # p99 passes 25 ms at 100 req/s for the service only
                    latency = 30.0 if (target == "service" and rate == 100.0) else 2.0
                    recorded_run(tmp_path, scenario="open", target=target, framework=framework,
                                 users=64, rate=rate, round_index=round_index,
                                 latencies=[latency] * 100)
                recorded_run(tmp_path, scenario="batch", target=target, framework=framework,
                             users=config.batch_users, rate=None, round_index=round_index,
                             latencies=[10.0 * scale] * 50, images=64)

    report = build_report(tmp_path).read_text()

    assert has_row(report, "pytorch", "BentoML service", "2.00")  # p50 at 1 user, to 0.01 ms
    assert has_row(report, "pytorch", "Starlette baseline", "1.00")
    assert has_row(report, "pytorch", "2.00x")  # serving tax: p50 ratio at 1 user
    assert has_row(report, "BentoML service", "keras", "50")  # max rate with p99 under 25 ms
    assert has_row(report, "Starlette baseline", "keras", "≥ 100")  # never over: ladder too low
    assert "equal in every run" in report
    assert "0 errors, 0 wrong answers" in report
    assert "mnist_inference_seconds" not in report  # the histogram was found and tabulated
    for chart in ("latency_percentiles", "throughput_vs_users", "latency_vs_rate",
                  "batch_throughput"):
        assert (tmp_path / f"{chart}.png").stat().st_size > 10_000
        assert f"({chart}.png)" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["max_rate"]["service/keras"]["per_round"] == [50.0, 50.0]
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 1 + 2 * 2 * 2 * 5


def test_max_rate_is_the_rate_sustained_in_every_round(tmp_path):
    # the service passes 100 req/s in round 0 and 200 in round 1: it sustained 100, not "150"
    config = LoadTestConfig(frameworks=("keras",), scenarios=("closed", "open"), users=(1,),
                            rates=(50.0, 100.0, 200.0, 400.0), rounds=2)
    recorded_meta(tmp_path, config)
    for round_index, service_top in ((0, 100.0), (1, 200.0)):
        for target in ("service", "baseline"):
            recorded_run(tmp_path, scenario="closed", target=target, framework="keras", users=1,
                         rate=None, round_index=round_index, latencies=[1.0] * 100)
        for rate in config.rates:
            for target, top in (("service", service_top), ("baseline", 200.0)):
                if rate <= 2 * top:  # the runner stops each ladder after its first failure
                    recorded_run(tmp_path, scenario="open", target=target, framework="keras",
                                 users=64, rate=rate, round_index=round_index,
                                 latencies=[2.0 if rate <= top else 40.0] * 100)

    report = build_report(tmp_path).read_text()

    # summary: the sustained rate, then each round's
    assert has_row(report, "keras", "BentoML service", "1.00", "1.00", "101", "100 (100 / 200)")
    assert has_row(report, "BentoML service", "keras", "100", "100 / 200", "200 / 400")
    assert has_row(report, "keras", "1.00x", "1.00x", "0.50x")  # tax: 100 over baseline's 200
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["max_rate"]["service/keras"]["sustained"] == 100.0


# --- servers and metrics -------------------------------------------------------------------

def test_traffic_goes_to_loopback_only():
    assert check_loopback("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("http://example.com:3000")


METRICS = """\
# HELP mnist_inference_seconds ONNX Runtime time per adaptive batch.
# TYPE mnist_inference_seconds histogram
mnist_inference_seconds_bucket{framework="keras",le="0.0001",provider="CPU"} 0.0
mnist_inference_seconds_bucket{framework="keras",le="0.0002",provider="CPU"} 10.0
mnist_inference_seconds_bucket{framework="keras",le="0.0004",provider="CPU"} 20.0
mnist_inference_seconds_bucket{framework="keras",le="+Inf",provider="CPU"} 20.0
mnist_inference_seconds_sum{framework="keras",provider="CPU"} 0.004
mnist_inference_seconds_count{framework="keras",provider="CPU"} 20.0
"""


def test_metrics_histograms_parse_and_give_interpolated_quantiles():
    after = parse_histograms(METRICS)
    entry = after["mnist_inference_seconds"]["keras"]
    assert entry["count"] == 20 and entry["sum"] == pytest.approx(0.004)
    assert histogram_quantile(entry, 0.5) == pytest.approx(0.0002)
    assert histogram_quantile(entry, 0.75) == pytest.approx(0.0003)
    delta = histogram_delta(after, after)
    assert delta["mnist_inference_seconds"]["keras"]["count"] == 0


# --- baseline server -----------------------------------------------------------------------

def tiny_onnx(path: Path, digit: int) -> Path:
    """An ONNX model of the contract's shape whose logits always favour ``digit``."""
    import onnx
    from onnx import TensorProto, helper

    bias = np.zeros(10, dtype=np.float32)
    bias[digit] = 5.0
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weights"], ["product"]),
         helper.make_node("Add", ["product", "bias"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 784]),
         helper.make_tensor("weights", TensorProto.FLOAT, [784, 10], np.zeros(7840).tolist()),
         helper.make_tensor("bias", TensorProto.FLOAT, [10], bias.tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def baseline_client(tmp_path):
    import warnings

    with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from loadtests.baseline_server import create_app, load_sessions

    sessions = load_sessions({"pytorch": tiny_onnx(tmp_path / "model.onnx", 7)}, threads=1)
    return TestClient(create_app(sessions))


def test_baseline_answers_in_the_service_format(baseline_client):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    response = baseline_client.post("/predict", content=predict_body("pytorch", images),
                                    headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert check_answer(200, response.content, np.array([7, 7])).error is None
    assert response.json()["provider"] == "CPUExecutionProvider"
    assert "pytorch" in baseline_client.post(
        "/predict", json={"framework": "all", "images": [[[0.0] * 28] * 28]}).json()["results"]


@pytest.mark.parametrize("body", [
    {"framework": "pytorch", "images": [[[0.0] * 28] * 27]},
    {"framework": "pytorch", "images": [[[2.0] * 28] * 28]},
    {"framework": "pytorch", "images": []},
    {"framework": "mxnet", "images": [[[0.0] * 28] * 28]},
    {"images": [[[0.0] * 28] * 28]},
])
def test_baseline_rejects_bad_input_with_400(baseline_client, body):
    response = baseline_client.post("/predict", json=body)
    assert response.status_code == 400
    assert response.json()["error"]


# --- runner plan ---------------------------------------------------------------------------

def test_each_round_starts_with_the_next_framework():
    assert rotated(FRAMEWORKS, 0) == ["tensorflow", "keras", "pytorch"]
    assert rotated(FRAMEWORKS, 1) == ["keras", "pytorch", "tensorflow"]
    assert rotated(FRAMEWORKS, 3) == rotated(FRAMEWORKS, 0)


def test_bad_settings_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="whole seconds"):
        check_config(LoadTestConfig(duration=2.5))
    with pytest.raises(ValueError, match="warm-up"):
        check_config(LoadTestConfig(duration=2, warmup=2))
    with pytest.raises(ValueError, match="drain"):
        check_config(LoadTestConfig(duration=2, warmup=1, drain=1))
    with pytest.raises(ValueError, match="scenario"):
        check_config(LoadTestConfig(scenarios=("soak",)))


def test_default_plan_interleaves_frameworks_and_servers_over_rounds():
    config = LoadTestConfig()
    specs = plan(config, {"service": FRAMEWORKS, "baseline": FRAMEWORKS})
    assert config.rounds >= 2
    settings = {r: sorted((s.scenario, s.users, s.rate or 0, s.target, s.framework)
                          for s in specs if s.round == r) for r in range(config.rounds)}
    assert settings[0] == settings[1]  # every round runs every setting once
    assert len(settings[0]) == (len(config.users) + len(config.rates) + 1) * 3 * 2
    first_step = {r: [(s.framework, s.target) for s in specs
                      if s.round == r and s.scenario == "closed" and s.users == 1]
                  for r in range(2)}
    assert first_step[0] == [("tensorflow", "service"), ("tensorflow", "baseline"),
                             ("keras", "service"), ("keras", "baseline"),
                             ("pytorch", "service"), ("pytorch", "baseline")]
    assert first_step[1] == [("keras", "baseline"), ("keras", "service"),
                             ("pytorch", "baseline"), ("pytorch", "service"),
                             ("tensorflow", "baseline"), ("tensorflow", "service")]


def test_plan_leaves_out_frameworks_a_server_lacks():
    specs = plan(LoadTestConfig(rounds=1), {"service": FRAMEWORKS, "baseline": ("keras",)})
    assert {s.framework for s in specs if s.target == "baseline"} == {"keras"}
    assert {s.framework for s in specs if s.target == "service"} == set(FRAMEWORKS)


def test_open_ladder_stops_in_each_round_at_the_first_rate_over_the_bound(tmp_path, monkeypatch):
    from loadtests import runner

    config = LoadTestConfig(frameworks=("keras",), scenarios=("open",), rounds=2,
                            rates=(50.0, 100.0, 200.0), p99_bound_ms=25.0)
    ran = []
    monkeypatch.setattr(runner, "run_locust", lambda spec, *_args: ran.append(spec))
    monkeypatch.setattr(runner, "read_raw", lambda run_dir: run_dir.name)
    monkeypatch.setattr(runner, "summarize", lambda run_id, **_kwargs: SimpleNamespace(
        p99=30.0 if "-100rps-" in run_id else 5.0, errors=0, wrong_answers=0))
    runner.execute_plan(config, {"service": Server("service", "http://127.0.0.1:1")}, tmp_path,
                        tmp_path / "payloads.npz", progress=False)
    assert [(s.round, s.rate) for s in ran] == [(0, 50.0), (0, 100.0), (1, 50.0), (1, 100.0)]


# --- the locustfile, through real Locust runs against stubs --------------------------------

def test_locustfile_defaults_are_those_of_tool_locust():
    """A locustfile run without pyproject.toml (another folder, --config) behaves the same."""
    code = ("import argparse, json\n"
            "from loadtests.locustfile import add_arguments\n"
            "parser = argparse.ArgumentParser()\n"
            "add_arguments(parser)\n"
            "print(json.dumps(vars(parser.parse_args([]))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    defaults = json.loads(result.stdout.splitlines()[-1])
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    table = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["locust"]
    ours = {key: value for key, value in table.items() if key.replace("-", "_") in defaults}
    assert "arrival-rate" in ours
    assert {key: defaults[key.replace("-", "_")] for key in ours} == ours


class AlwaysSevenHandler(BaseHTTPRequestHandler):
    """Answers every /predict with digit 7 for each image sent."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        images = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["images"]
        body = answer_body([7] * len(images))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysSevenHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("label", "all_fail"), [(7, False), (3, True)])
def test_locustfile_counts_a_wrong_digit_as_a_failure(tmp_path, stub_server, label, all_fail):
    payloads = tmp_path / "payloads.npz"
    np.savez(payloads, images=np.zeros((10, 28, 28), np.uint8), labels=np.full(10, label))
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
         "--host", stub_server, "-u", "2", "-r", "2", "-t", "1s", "--payloads", str(payloads),
         "--raw-dir", str(tmp_path), "--json-file", str(tmp_path / "locust"),
         "--loglevel", "WARNING"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    totals = read_locust_totals(tmp_path)
    assert totals and totals["requests"] > 0, result.stderr[-2000:]
    assert totals["failures"] == (totals["requests"] if all_fail else 0)
    assert result.returncode == (1 if all_fail else 0)
    stats = summarize(read_raw(tmp_path), warmup=0.0, duration=100.0, drain=0.0)
    assert len(read_raw(tmp_path)) == totals["requests"]  # raw timings miss no request
    assert stats.wrong_answers == (stats.requests if all_fail else 0)
    assert stats.errors == 0


def test_workers_run_locust_distributed_on_loopback(tmp_path):
    from loadtests.runner import RunSpec, locust_command

    spec = RunSpec(0, "open", "service", "keras", users=64, rate=200.0)
    command = locust_command(spec, LoadTestConfig(workers=3), "http://127.0.0.1:3000", tmp_path,
                             tmp_path / "payloads.npz")
    assert command[command.index("--processes") + 1] == "3"
    assert command[command.index("--master-bind-host") + 1] == "127.0.0.1"
    assert command[command.index("--master-bind-port") + 1] == command[
        command.index("--master-port") + 1]
    assert command[command.index("--arrival-rate") + 1] == "200.0"  # split across workers
    local = locust_command(spec, LoadTestConfig(), "http://127.0.0.1:3000", tmp_path, tmp_path)
    assert "--processes" not in local


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class StallingHandler(AlwaysSevenHandler):
    """Answers one request at a time; STALL_AT s after the first request, stalls for STALL_S
    (every user waits); HANG_AT s after it, stops answering until ``release`` is set."""

    STALL_AT, STALL_S, HANG_AT = 0.4, 0.5, 1.4
    lock = threading.Lock()
    release = threading.Event()
    first: float | None = None
    stall: tuple[float, float] | None = None  # epoch seconds

    def do_POST(self):  # noqa: N802 (http.server's name)
        cls = type(self)
        with cls.lock:
            now = time.time()
            cls.first = cls.first or now
            if cls.stall is None and now - cls.first >= cls.STALL_AT:
                time.sleep(cls.STALL_S)
                cls.stall = (now, time.time())
        if now - cls.first >= cls.HANG_AT:
            cls.release.wait(30)
            return
        super().do_POST()


def test_open_loop_latency_runs_from_the_scheduled_time_and_unanswered_requests_count(tmp_path):
    """A real OpenLoopUser run: requests due while the server stalled are sent late, and their
    latency includes the wait; requests due once it stops answering are recorded at the stop."""
    handler = type("Handler", (StallingHandler,), {"lock": threading.Lock(),
                                                    "release": threading.Event()})
    payloads = tmp_path / "payloads.npz"
    np.savez(payloads, images=np.zeros((10, 28, 28), np.uint8), labels=np.full(10, 7))
    with serving(handler) as url:
        try:
            result = subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                 "--only-summary", "--host", url, "--scenario", "open", "--arrival-rate", "50",
                 "-u", "2", "-r", "2", "-t", "2s", "--stop-timeout", "1",
                 "--payloads", str(payloads), "--raw-dir", str(tmp_path),
                 "--json-file", str(tmp_path / "locust"), "--loglevel", "WARNING"],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        finally:
            handler.release.set()
    samples = read_raw(tmp_path)
    assert len(samples) == read_locust_totals(tmp_path)["requests"], result.stderr[-2000:]
    answered = samples.select(samples.ok)
    # latency runs from the scheduled time (the start column) to the answer
    assert np.allclose(answered.latency_ms, (answered.end - answered.start) * 1000, atol=5)

    stall_start, stall_end = handler.stall
    due = answered.select((answered.start > stall_start) & (answered.start < stall_end - 0.05))
    assert len(due) >= 5  # about 25 were due: 50/s for 0.5 s
    assert np.all(due.latency_ms >= (stall_end - due.start) * 1000 - 5)
    late = due.latency_ms - due.service_ms  # both users were stuck: the sends were late
    assert np.sum(late > 20) >= len(due) - 2

    unanswered = samples.select(samples.unanswered)
    assert len(unanswered) >= 10  # about 30 due between the hang and the stop
    assert np.all(unanswered.latency_ms >= 900)  # the stop waited 1 s for them, in vain
    assert read_locust_totals(tmp_path)["failures"] == len(unanswered)
    stats = summarize(samples, warmup=0.0, duration=2.0, drain=0.0)
    assert stats.unanswered > 0 and stats.p99 >= 900


def test_a_rate_with_fast_errors_is_not_served_within_the_bound():
    from dataclasses import replace

    from loadtests.samples import RunStats, within_bound

    fast = RunStats(requests=100, errors=0, wrong_answers=0, unanswered=0, images=100,
                    correct_images=100, seconds=8.0, goodput=12.5, images_per_second=12.5,
                    p50=1.0, p90=2.0, p99=3.0, p99_9=4.0, mean=1.2, max=5.0, service_p50=1.0,
                    warmup_requests=10)
    assert within_bound(fast, 25.0)
    assert not within_bound(replace(fast, p99=30.0), 25.0)
    assert not within_bound(replace(fast, errors=3), 25.0)  # quick 503s are not speed
    assert not within_bound(replace(fast, wrong_answers=1), 25.0)
    assert not within_bound(replace(fast, p99=float("nan")), 25.0)  # nothing answered


def test_workers_really_share_the_load_and_every_request_is_recorded(tmp_path, stub_server):
    """A real distributed run: a master and 2 worker processes on loopback, 2 s, closed loop."""
    from loadtests.runner import RunSpec, locust_command

    payloads = tmp_path / "payloads.npz"
    np.savez(payloads, images=np.zeros((10, 28, 28), np.uint8), labels=np.full(10, 7))
    spec = RunSpec(0, "closed", "baseline", "keras", users=4, rate=None)
    config = LoadTestConfig(workers=2, duration=2, warmup=0.0, drain=0.0)
    command = locust_command(spec, config, stub_server, tmp_path, payloads)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90)
    totals = read_locust_totals(tmp_path)
    assert totals and totals["requests"] > 0, result.stderr[-2000:]
    raw_files = sorted(tmp_path.glob("raw-*.csv"))
    assert len(raw_files) == 2  # one per worker process: both sent requests
    assert len(read_raw(tmp_path)) == totals["requests"] and totals["failures"] == 0
