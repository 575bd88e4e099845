"""The measured framework comparison: accuracy, size, parity, native vs ONNX Runtime latency.

    mnist-serving compare --artifacts artifacts --data-dir ../shared/mnist

Latency is in-process (no HTTP): the framework's own inference call (PyTorch eager, the
TensorFlow function, Keras ``model(x)``) against an ONNX Runtime CPU session on the same images.
The two are timed in alternating rounds, so machine noise falls on both alike.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.onnx_files import cpu_session
from export.pipeline import PARITY_FILE, MissingArtifactError
from models.contract import INPUT_NAME, ONNX_FILENAME, OUTPUT_NAME
from models.data import MnistData, scale_images
from models.tables import human_bytes, markdown_table
from models.timing import time_calls
from models.training import framework_module, read_metrics

BATCH_SIZES = (1, 256)
WARMUP_CALLS = 10


def median_latencies(
    calls: dict[str, Callable[[], object]], *, rounds: int, calls_per_round: int
) -> dict[str, float]:
    """Median seconds per call of each callable, timed in alternating rounds after a warm-up."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    for round_index in range(rounds):
        order = list(calls) if round_index % 2 == 0 else list(reversed(calls))
        for name in order:
            warmup = WARMUP_CALLS if round_index == 0 else 0  # each callable warms up once
            samples[name].append(time_calls(calls[name], repeats=calls_per_round, warmup=warmup))
    return {name: float(np.median(np.concatenate(values))) for name, values in samples.items()}


def compare_framework(framework: str, artifacts: Path, data: MnistData, *, rounds: int) -> dict:
    folder = artifacts / framework
    metrics = read_metrics(artifacts, framework)
    parity_path = folder / PARITY_FILE
    if metrics is None or not parity_path.is_file():
        raise MissingArtifactError(
            f"{framework}: no trained and exported model in {folder}: run `mnist-serving build` first"
        )
    parity = json.loads(parity_path.read_text())
    module = framework_module(framework)
    model = module.load(folder)
    session = cpu_session(folder / ONNX_FILENAME)
    row = {
        "framework": framework,
        "framework_version": metrics["framework_version"],
        "test_accuracy": metrics["test_accuracy"],
        "onnx_test_accuracy": parity["onnx_test_accuracy"],
        "params": metrics["params"],
        "train_seconds": metrics["train_seconds"],
        "native_bytes": metrics["artifact_bytes"],
        "onnx_bytes": parity["onnx_bytes"],
        "argmax_agreement": parity["argmax_agreement"],
        "max_abs_logit_diff": parity["max_abs_logit_diff"],
    }
    for batch_size in BATCH_SIZES:
        images = np.ascontiguousarray(scale_images(data.test_images[:batch_size]))
        medians = median_latencies(
            {
                "native": lambda images=images: module.predict(model, images),
                "onnx": lambda images=images: session.run([OUTPUT_NAME], {INPUT_NAME: images}),
            },
            rounds=rounds,
            calls_per_round=50 if batch_size == 1 else 5,
        )
        row[f"native_ms_b{batch_size}"] = medians["native"] * 1e3
        row[f"onnx_ms_b{batch_size}"] = medians["onnx"] * 1e3
    return row


def comparison_table(rows: list[dict]) -> str:
    headers = ["framework", "test acc", "params", "train s", "native size", "ONNX size",
               "parity"]
    for batch_size in BATCH_SIZES:
        headers += [f"native b{batch_size} ms", f"ONNX b{batch_size} ms", f"speed-up b{batch_size}"]
    lines = []
    for row in rows:
        line = [
            row["framework"],
            f"{row['test_accuracy']:.4f}",
            f"{row['params']:,}",
            f"{row['train_seconds']:.1f}",
            human_bytes(row["native_bytes"]),
            human_bytes(row["onnx_bytes"]),
            f"{row['argmax_agreement']:.4f} / {row['max_abs_logit_diff']:.0e}",
        ]
        for batch_size in BATCH_SIZES:
            native, onnx = row[f"native_ms_b{batch_size}"], row[f"onnx_ms_b{batch_size}"]
            line += [f"{native:.3f}", f"{onnx:.3f}", f"{native / onnx:.1f}x"]
        lines.append(line)
    return markdown_table(headers, lines)


def comparison_report(rows: list[dict], data: MnistData, *, rounds: int) -> str:
    import onnxruntime

    return "\n".join(
        [
            "# Framework comparison (in-process, no HTTP)",
            "",
            f"- Trained on {data.describe_training_set()}; accuracy on "
            f"{len(data.test_labels)} test images.",
            f"- Latency: median of {rounds} alternating rounds after {WARMUP_CALLS} warm-up calls; "
            "native = the framework's own inference call, ONNX = ONNX Runtime "
            f"{onnxruntime.__version__}, CPU provider.",
            "- Parity: argmax agreement / max |logit difference| between native and ONNX.",
            f"- Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
            f"{cpu_count()} cores, Python {platform.python_version()}.",
            "- Versions: " + ", ".join(f"{r['framework']} {r['framework_version']}" for r in rows),
            "",
            comparison_table(rows),
            "",
        ]
    )


def cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
