"""The compute floor: ONNX Runtime in process on the same images, with no HTTP in between.

    python -c "from loadtests.floor import measure_floor; print(measure_floor(...))"

Whatever a server adds on top of these times is the cost of serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.onnx_files import run_session
from loadtests.protocol import payload_images
from models.contract import INPUT_NAME, OUTPUT_NAME
from models.timing import time_calls


def session(path: Path, *, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # as the service runs it (MNIST_ORT_THREADS)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_digits(path: Path, images: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Digits for uint8 images (N, 28, 28), from the same float32 pixels the load test sends."""
    return run_session(session(path, threads=threads), payload_images(images)).argmax(axis=1)


def time_runs(model, batch: np.ndarray, *, repeats: int, warmup: int = 50) -> np.ndarray:
    """Milliseconds of ``repeats`` single calls on the same batch, after ``warmup`` calls."""
    feed = {INPUT_NAME: batch}
    return time_calls(lambda: model.run([OUTPUT_NAME], feed), repeats=repeats, warmup=warmup) * 1e3


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
