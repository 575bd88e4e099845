"""Shared fixtures: the fixture digits, and models trained and exported from them once a session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports bentoml: a private model store, and no usage tracking (no network).
PRIVATE_BENTOML_HOME = tempfile.mkdtemp(prefix="mnist-serving-bentoml-")
os.environ["BENTOML_HOME"] = PRIVATE_BENTOML_HOME
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_MNIST = Path(__file__).parent / "fixtures" / "mnist"  # 500 train + 250 test real digits
FIXTURE_EPOCHS = 8  # enough for ~90% on the fixture digits, so served answers can be checked


@dataclass(frozen=True)
class BuiltModels:
    artifacts: Path  # <framework>/{native model, model.onnx, metrics.json, parity.json}
    bentoml_home: Path  # a model store holding mnist-tensorflow, mnist-keras, mnist-pytorch

    def env(self) -> dict[str, str]:
        """The environment for a subprocess (bentoml serve, the CLI) that uses this store."""
        return {**os.environ, "BENTOML_HOME": str(self.bentoml_home)}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``mnist-serving ARGS`` in a subprocess, as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "models", *args],
        cwd=REPO_ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=900,
    )


def pytest_collection_modifyitems(items):
    """A test that needs models trained and exported is slow, whether or not it says so."""
    for item in items:
        if "built_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_model_store():
    """The session's model store, removed at the end (each export adds a version to it)."""
    yield Path(PRIVATE_BENTOML_HOME)
    shutil.rmtree(PRIVATE_BENTOML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def fixture_data():
    from models.data import load_folder

    return load_folder(FIXTURE_MNIST)


@pytest.fixture(scope="session")
def built_models(tmp_path_factory) -> BuiltModels:
    """Train (8 epochs on the fixture digits) and export all three, into a fresh model store."""
    root = tmp_path_factory.mktemp("built")
    # The session's private store (set above), so in-process bentoml calls see these models too
    built = BuiltModels(artifacts=root / "artifacts", bentoml_home=Path(os.environ["BENTOML_HOME"]))
    for command in (
        ["train", "--data-dir", str(FIXTURE_MNIST), "--epochs", str(FIXTURE_EPOCHS),
         "--out", str(built.artifacts)],
        ["export", "--data-dir", str(FIXTURE_MNIST), "--artifacts", str(built.artifacts)],
    ):
        result = run_cli(*command, env=built.env())
        assert result.returncode == 0, f"mnist-serving {command[0]} failed:\n{result.stderr[-3000:]}"
    return built
