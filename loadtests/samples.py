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

from loadtests.protocol import UNANSWERED, WRONG_DIGIT

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
DRAIN_S = 1.0  # default seconds left out at the end of each run (see `measurement_window`)


@dataclass
class Samples:
    start: np.ndarray  # (N,) epoch seconds: when sent, or when scheduled (open loop)
    end: np.ndarray  # (N,) epoch seconds: when the answer was in (or given up on)
    latency_ms: np.ndarray  # (N,) from start to end; open loop: from the scheduled time
    service_ms: np.ndarray  # (N,) from the actual send to the answer; NaN if never answered
    images: np.ndarray  # (N,) images in the request
    correct: np.ndarray  # (N,) images answered with the right digit
    errors: list[str]  # (N,) "" when the request succeeded

    def __len__(self) -> int:
        return len(self.start)

    def select(self, keep: np.ndarray) -> Samples:
        return Samples(self.start[keep], self.end[keep], self.latency_ms[keep],
                       self.service_ms[keep], self.images[keep], self.correct[keep],
                       [e for e, k in zip(self.errors, keep, strict=True) if k])

    def between(self, first: float, last: float) -> Samples:
        return self.select((self.start >= first) & (self.start <= last))

    @property
    def ok(self) -> np.ndarray:
        return np.array([not error for error in self.errors], dtype=bool)

    @property
    def unanswered(self) -> np.ndarray:
        return np.array([error.startswith(UNANSWERED) for error in self.errors], dtype=bool)

    def timed_latencies(self) -> np.ndarray:
        """The latencies the percentiles count: every success, and every request left without
        an answer at the stop at the time it had waited (a lower bound), so that overload shows
        in p99 rather than vanishing. Fast failures (a 503, a wrong digit) count elsewhere."""
        return self.latency_ms[self.ok | self.unanswered]


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


def measurement_window(samples: Samples, *, warmup: float, duration: float,
                       drain: float) -> tuple[float, float]:
    """The run's measured window ``[t0 + warmup, t0 + duration - drain]`` (epoch seconds), where
    t0 is the first request's start; requests count by their start, which in the open loop is
    their scheduled time, so a slow answer stays in the window its request was due in. The
    drain leaves out requests due just before the stop: one left unanswered there counts at
    the time it had waited, too short to tell a slow server from the end of the run."""
    t0 = float(samples.start.min())
    return t0 + warmup, min(t0 + duration - drain, float(samples.start.max()))


@dataclass
class RunStats:
    """What one run measured, over the requests that started (open loop: were due) in its window."""

    requests: int  # all of them, whatever became of them
    errors: int  # failed for any reason but a wrong digit or no answer (status, shape, connection)
    wrong_answers: int  # well-formed answers with at least one wrong digit
    unanswered: int  # open loop: still unanswered (or never sent) when the run stopped
    images: int
    correct_images: int
    seconds: float  # length of the measured window
    goodput: float  # successful requests (every digit right) per second
    images_per_second: float  # images in successful requests per second
    p50: float  # ms, and so on, over successes and unanswered requests; NaN when none
    p90: float
    p99: float
    p99_9: float
    mean: float
    max: float
    service_p50: float  # ms from the actual send (differs from p50 only in the open loop)
    warmup_requests: int  # started before the window, left out of every figure above

    def as_dict(self) -> dict:
        return asdict(self)


def within_bound(stats: RunStats, p99_bound_ms: float) -> bool:
    """Whether an open-loop rate was served: p99 under the bound (unanswered requests count in
    it) and no request failed or answered wrong, so fast errors cannot pass for speed."""
    return stats.p99 <= p99_bound_ms and stats.errors == 0 and stats.wrong_answers == 0  # NaN fails


def summarize(samples: Samples, *, warmup: float, duration: float, drain: float) -> RunStats:
    """One run's statistics in its measurement window (see `measurement_window`)."""
    if not len(samples):
        nan = float("nan")
        return RunStats(0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0, *([nan] * 7), 0)
    first, last = measurement_window(samples, warmup=warmup, duration=duration, drain=drain)
    measured = samples.between(first, last)
    ok, unanswered = measured.ok, measured.unanswered
    wrong = sum(error.startswith(WRONG_DIGIT) for error in measured.errors)
    seconds = max(last - first, 1e-9)
    latencies = measured.timed_latencies()
    if latencies.size:
        p50, p90, p99, p99_9 = (float(v) for v in np.percentile(latencies, PERCENTILES))
        mean, peak = float(latencies.mean()), float(latencies.max())
    else:
        p50 = p90 = p99 = p99_9 = mean = peak = float("nan")
    service_p50 = float(np.percentile(measured.service_ms[ok], 50)) if ok.any() else float("nan")
    return RunStats(
        requests=len(measured),
        errors=int((~ok).sum()) - wrong - int(unanswered.sum()),
        wrong_answers=wrong,
        unanswered=int(unanswered.sum()),
        images=int(measured.images.sum()),
        correct_images=int(measured.correct.sum()),
        seconds=seconds,
        goodput=int(ok.sum()) / seconds,
        images_per_second=float(measured.images[ok].sum()) / seconds,
        p50=p50, p90=p90, p99=p99, p99_9=p99_9, mean=mean, max=peak, service_p50=service_p50,
        warmup_requests=int((samples.start < first).sum()),
    )


def pooled_latencies(sample_sets: list[Samples], *, warmup: float, duration: float,
                     drain: float) -> np.ndarray:
    """The latencies the percentiles count (`Samples.timed_latencies`) of several runs (the
    rounds of one setting), each cut to its own window."""
    pooled = [samples.between(*measurement_window(samples, warmup=warmup, duration=duration,
                                                  drain=drain)).timed_latencies()
              for samples in sample_sets if len(samples)]
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
