"""A real `--quick` load test: `bentoml serve` and the baseline on fixture models, Locust, report.

Slow (trains the fixture models once per session, then about a minute of serving and load).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import FIXTURE_MNIST


@pytest.mark.slow
def test_quick_loadtest_serves_every_framework_without_failures(built_models, tmp_path):
    from loadtests.report import CHARTS
    from loadtests.runner import run_loadtest

    report = run_loadtest(quick=True, data_dir=FIXTURE_MNIST, artifacts=built_models.artifacts,
                          out=tmp_path / "report", progress=False)

    results = json.loads((report.parent / "results.json").read_text())
    settings = results["settings"]
    assert {(s["target"], s["framework"]) for s in settings} == {
        (target, framework) for target in ("service", "baseline")
        for framework in ("tensorflow", "keras", "pytorch")}
    assert all(s["requests"] > 0 for s in settings)
    failures = [(s["scenario"], s["target"], s["framework"], s["errors"], s["wrong_answers"])
                for s in settings if s["errors"] or s["wrong_answers"]]
    assert not failures, f"failed requests: {failures}; see {report.parent}/runs/*/locust_failures.csv"
    accuracy = results["accuracy"]
    assert accuracy["service"] == accuracy["in_process"] == accuracy["baseline"]
    text = report.read_text()
    assert "equal in every run" in text
    for chart in CHARTS.values():
        assert (report.parent / chart).stat().st_size > 10_000
