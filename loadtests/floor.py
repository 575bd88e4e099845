"""The compute floor: ONNX Runtime in process on the same images, with no HTTP in between.

    python -c "from loadtests.floor import measure_floor; print(measure_floor(...))"

Whatever a server adds on top of these times is the cost of serving.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from loadtests.protocol import payload_images
from models.contract import INPUT_NAME, OUTPUT_NAME


def session(path: Path, *, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as the service runs it (MNIST_ORT_THREADS)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_digits(path: Path, images: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Digits for uint8 images (N, 28, 28), from the same float32 pixels the load test sends."""
    model = session(path, threads=threads)
    pixels = payload_images(images)  # (N, 28, 28) float32 in [0, 1]
    logits = np.concatenate([
        model.run([OUTPUT_NAME], {INPUT_NAME: pixels[first : first + 1024]})[0]
        for first in range(0, len(pixels), 1024)
    ])
    return logits.argmax(axis=1)


def time_runs(model, batch: np.ndarray, *, repeats: int, warmup: int = 50) -> np.ndarray:
    """Milliseconds of ``repeats`` single calls on the same batch, after ``warmup`` calls."""
    feed = {INPUT_NAME: batch}
    for _ in range(warmup):
        model.run([OUTPUT_NAME], feed)
    times = np.empty(repeats)
    for i in range(repeats):
        started = time.perf_counter()
        model.run([OUTPUT_NAME], feed)
        times[i] = (time.perf_counter() - started) * 1000.0
    return times


def measure_floor(paths: dict[str, Path], images: np.ndarray, *, batch_size: int = 64,
                  repeats: int = 2000, threads: int = 1) -> dict[str, dict[str, float]]:
    """Per framework: p50/p99 of one image (ms) and the per-image time in a batch (ms)."""
    pixels = payload_images(images[:batch_size])
    floor = {}
    for framework, path in paths.items():
        model = session(path, threads=threads)
        single = time_runs(model, pixels[:1], repeats=repeats)
        batched = time_runs(model, pixels, repeats=max(20, repeats // batch_size))
        floor[framework] = {
            "p50_ms": float(np.percentile(single, 50)),
            "p99_ms": float(np.percentile(single, 99)),
            "batch_size": len(pixels),
            "batch_p50_ms": float(np.percentile(batched, 50)),
            "images_per_second": len(pixels) / (float(np.percentile(batched, 50)) / 1000.0),
        }
    return floor
