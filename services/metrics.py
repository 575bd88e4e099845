"""The service's own Prometheus series, created on first use inside a BentoML worker.

BentoML 1.4 serves /metrics from prometheus_client's multiprocess mode and sets
PROMETHEUS_MULTIPROC_DIR in each worker; prometheus_client must be imported after that, so
nothing here runs at import time. Every service process writes to the same folder, so the front
service's /metrics carries the model services' inference histogram too.
"""

from __future__ import annotations

from functools import cache

# Seconds: 25 us to 10 s, fine below a millisecond where one small CNN on a CPU answers.
TIME_BUCKETS: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)


@cache
def requests_total():
    """Every prediction request, per framework asked for, endpoint and answer status."""
    from prometheus_client import Counter

    return Counter("mnist_requests", "Prediction requests, per framework, endpoint and status.",
                   ["framework", "endpoint", "status"])


@cache
def request_seconds():
    """Front-service time per request (validation, model calls, response), per framework."""
    from prometheus_client import Histogram

    return Histogram("mnist_request_seconds", "Time to answer a prediction request.",
                     ["framework", "endpoint"], buckets=TIME_BUCKETS)


@cache
def inference_seconds():
    """Model compute only: one ONNX Runtime run over an adaptive batch, per framework."""
    from prometheus_client import Histogram

    return Histogram("mnist_inference_seconds", "ONNX Runtime time per adaptive batch.",
                     ["framework", "provider"], buckets=TIME_BUCKETS)


@cache
def batch_images():
    """Images per ONNX Runtime run, per framework: how much adaptive batching merged."""
    from prometheus_client import Histogram

    return Histogram("mnist_batch_images", "Images per ONNX Runtime run.", ["framework"],
                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
