"""The prepared GPU check runs anywhere: on a machine without CUDA it reports the CPU it used."""

from __future__ import annotations

import json
import subprocess
import sys

from models.contract import FRAMEWORKS
from tests.conftest import REPO_ROOT


def test_gpu_check_reports_every_model_and_the_provider_it_really_used(built_models, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.gpu_check", "--artifacts", str(built_models.artifacts),
         "--device", "cpu", "--repeats", "3", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    onnx_rows = [row for row in report["rows"] if row["runtime"] == "onnxruntime"]
    assert sorted((row["framework"], row["batch_size"]) for row in onnx_rows) == sorted(
        (framework, batch) for framework in FRAMEWORKS for batch in (1, 1024)
    )
    assert {row["provider"] for row in onnx_rows} == {"CPUExecutionProvider"}
    assert all(row["images_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in onnx_rows)
    assert "| keras " in (tmp_path / "gpu_check.md").read_text()
