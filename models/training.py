"""Train the shared CNN in each framework and write the native artifact and metrics.json.

    mnist-serving train --frameworks all --data-dir ../shared/mnist --out artifacts
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from models.config import TrainConfig
from models.contract import check_framework
from models.data import MnistData, scale_images
from models.errors import PipelineError
from models.tables import human_bytes, markdown_table

log = logging.getLogger(__name__)

# Imported only when that framework is used, so the others' start-up cost is never paid.
FRAMEWORK_MODULES: dict[str, str] = {
    "tensorflow": "models.tensorflow_cnn",
    "keras": "models.keras_cnn",
    "pytorch": "models.pytorch_cnn",
}

METRICS_FILE = "metrics.json"


class MissingDependencyError(PipelineError):
    """A framework's package is not installed; the message says what to install."""


def framework_module(framework: str) -> ModuleType:
    check_framework(framework)
    try:
        return importlib.import_module(FRAMEWORK_MODULES[framework])
    except ModuleNotFoundError as error:
        raise MissingDependencyError(
            f"{framework} needs the package {error.name!r}, which is not installed: "
            "run `pip install -e '.[train]'` (and `pip install torch==2.13.0` first for a CPU torch)"
        ) from error


def path_bytes(path: Path) -> int:
    """Size of a file, or of every file below a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(child.stat().st_size for child in path.rglob("*") if child.is_file())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def train_framework(framework: str, config: TrainConfig, data: MnistData, out: Path) -> dict:
    """Train one framework's model, save it under ``out/<framework>/`` and return its metrics."""
    module = framework_module(framework)
    folder = out / framework
    started = time.perf_counter()
    model = module.train(config, data)
    train_seconds = time.perf_counter() - started
    test_logits = module.predict(model, scale_images(data.test_images))
    artifact = module.save(model, folder)
    metrics = {
        "framework": framework,
        "framework_version": module.framework_version(),
        "test_accuracy": accuracy(test_logits, data.test_labels),
        "test_images": int(len(data.test_labels)),
        "train_images": int(len(data.train_labels)),
        "training_set": data.describe_training_set(),
        "train_seconds": round(train_seconds, 3),
        "epochs": config.epochs,
        "params": module.count_params(model),
        "seed": config.seed,
        "artifact": artifact.name,
        "artifact_bytes": path_bytes(artifact),
        "config": config.as_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("%s: test accuracy %.4f in %.1f s", framework, metrics["test_accuracy"], train_seconds)
    return metrics


def read_metrics(out: Path, framework: str) -> dict | None:
    """metrics.json of a trained model whose native artifact is still there, else None."""
    path = out / framework / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if (out / framework / metrics["artifact"]).exists() else None


def training_table(rows: list[dict]) -> str:
    headers = ["framework", "test accuracy", "params", "train s", "epochs", "artifact"]
    return markdown_table(
        headers,
        [
            [
                row["framework"],
                f"{row['test_accuracy']:.4f}",
                f"{row['params']:,}",
                f"{row['train_seconds']:.1f}",
                row["epochs"],
                human_bytes(row["artifact_bytes"]),
            ]
            for row in rows
        ],
    )
