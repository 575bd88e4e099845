"""Raw per-request timings of one Locust run and the statistics the report takes from them.

Locust rounds response times (to whole ms under 100 ms) before it counts them, so its own
percentiles cannot separate a 0.6 ms answer from a 1.4 ms one. The locustfile keeps every
request as measured; percentiles here come from those raw samples.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from loadtests.protocol import WRONG_DIGIT

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass
class Samples:
    start: np.ndarray  # (N,) epoch seconds: when sent, or when scheduled (open loop)
    end: np.ndarray  # (N,) epoch seconds: when the answer was in
    latency_ms: np.ndarray  # (N,) from start to end; open loop: from the scheduled time
    service_ms: np.ndarray  # (N,) from the actual send to the answer
    images: np.ndarray  # (N,) images in the request
    correct: np.ndarray  # (N,) images answered with the right digit
    errors: list[str]  # (N,) "" when the request succeeded

    def __len__(self) -> int:
        return len(self.start)

    def select(self, keep: np.ndarray) -> Samples:
        return Samples(self.start[keep], self.end[keep], self.latency_ms[keep],
                       self.service_ms[keep], self.images[keep], self.correct[keep],
                       [e for e, k in zip(self.errors, keep, strict=True) if k])


def read_raw(run_dir: Path) -> Samples:
    """All ``raw-*.csv`` files of a run (one per Locust process), merged in start order."""
    rows = []
    for path in sorted(run_dir.glob("raw-*.csv")):
        with path.open(newline="") as stream:
            rows.extend(csv.DictReader(stream))
    rows.sort(key=lambda row: float(row["start"]))

    def column(name: str, dtype: type) -> np.ndarray:
        return np.array([dtype(row[name]) for row in rows], dtype=dtype)

    return Samples(column("start", float), column("end", float), column("latency_ms", float),
                   column("service_ms", float), column("images", int), column("correct", int),
                   [row["error"] for row in rows])


@dataclass
class RunStats:
    """What one run measured, warm-up excluded."""

    requests: int  # completed in the measured window
    errors: int  # failed for any reason but a wrong digit (status, shape, connection)
    wrong_answers: int  # well-formed answers with at least one wrong digit
    images: int
    correct_images: int
    seconds: float  # length of the measured window
    throughput: float  # requests per second
    images_per_second: float
    p50: float  # ms, and so on; NaN when no request succeeded
    p90: float
    p99: float
    p99_9: float
    mean: float
    max: float
    service_p50: float  # ms from the actual send (differs from p50 only in the open loop)
    warmup_requests: int  # completed before the window, left out of every figure above

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(samples: Samples, *, warmup: float, duration: float) -> RunStats:
    """Statistics of the requests that finished in ``[t0 + warmup, t0 + duration]``, where t0 is
    the first request's start: latency percentiles over successful requests, counts over all."""
    if not len(samples):
        nan = float("nan")
        return RunStats(0, 0, 0, 0, 0, 0.0, 0.0, 0.0, *([nan] * 7), 0)
    t0 = float(samples.start.min())
    window_start = t0 + warmup
    window_end = min(t0 + duration, float(samples.end.max()))
    inside = (samples.end >= window_start) & (samples.end <= window_end)
    measured = samples.select(inside)
    ok = np.array([not error for error in measured.errors], dtype=bool)
    wrong = sum(error.startswith(WRONG_DIGIT) for error in measured.errors)
    seconds = max(window_end - window_start, 1e-9)
    latencies = measured.latency_ms[ok]
    if latencies.size:
        p50, p90, p99, p99_9 = (float(v) for v in np.percentile(latencies, PERCENTILES))
        mean, peak = float(latencies.mean()), float(latencies.max())
        service_p50 = float(np.percentile(measured.service_ms[ok], 50))
    else:
        p50 = p90 = p99 = p99_9 = mean = peak = service_p50 = float("nan")
    return RunStats(
        requests=len(measured),
        errors=int((~ok).sum()) - wrong,
        wrong_answers=wrong,
        images=int(measured.images.sum()),
        correct_images=int(measured.correct.sum()),
        seconds=seconds,
        throughput=len(measured) / seconds,
        images_per_second=float(measured.images.sum()) / seconds,
        p50=p50, p90=p90, p99=p99, p99_9=p99_9, mean=mean, max=peak, service_p50=service_p50,
        warmup_requests=int((samples.end < window_start).sum()),
    )


def pooled_latencies(sample_sets: list[Samples], *, warmup: float, duration: float) -> np.ndarray:
    """Successful latencies of several runs (the rounds of one setting), each cut to its window."""
    pooled = []
    for samples in sample_sets:
        if not len(samples):
            continue
        t0 = float(samples.start.min())
        end = min(t0 + duration, float(samples.end.max()))
        ok = np.array([not error for error in samples.errors], dtype=bool)
        inside = (samples.end >= t0 + warmup) & (samples.end <= end) & ok
        pooled.append(samples.latency_ms[inside])
    return np.concatenate(pooled) if pooled else np.empty(0)


def read_locust_totals(run_dir: Path) -> dict[str, int] | None:
    """Requests and failures from Locust's final statistics (``--json-file``), warm-up included.

    The per-second ``*_stats_history.csv`` misses whatever happened after its last tick; the
    final JSON is written at shutdown and counts every request.
    """
    path = run_dir / "locust.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text())
    return {
        "requests": sum(entry["num_requests"] for entry in entries),
        "failures": sum(entry["num_failures"] for entry in entries),
    }
