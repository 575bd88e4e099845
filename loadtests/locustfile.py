"""Locust users that call `/predict` with real MNIST test digits and check every answer.

    locust --headless --host http://127.0.0.1:3000 --framework pytorch --scenario closed -u 8 -t 20s

Defaults come from `[tool.locust]` in pyproject.toml (the options' own defaults below match it). One
framework per run (`--framework`), one scenario per run (`--scenario closed|open|batch`, or name
the User class). Payloads: `--payloads`, else MNIST from `--mnist-dir`, $MNIST_DATA_DIR or the
cache. Raw timings go to `--raw-dir` (one CSV per process) because Locust keeps only rounded
response times.
"""

# Locust first: it patches sockets and threads with gevent, and torch, TensorFlow or requests
# imported before it break that patching (a RecursionError).
from locust import FastHttpUser, constant, events, tag, task  # noqa: I001
from locust.runners import WorkerRunner

import csv
import logging
import os
import random
import time
from pathlib import Path

import gevent
import numpy as np

from loadtests.arrivals import PoissonSchedule, latency_from_schedule_ms
from loadtests.protocol import PREDICT_PATH, UNANSWERED, check_answer, load_payloads
from models.contract import FRAMEWORKS

log = logging.getLogger(__name__)

RAW_COLUMNS = ("start", "end", "latency_ms", "service_ms", "name", "images", "correct", "error")
SCENARIO_USERS = {"closed": "PredictUser", "open": "OpenLoopUser", "batch": "BatchUser"}


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("mnist-serving")
    group.add_argument("--framework", choices=FRAMEWORKS, default="pytorch",
                       help="Model every request asks for")
    group.add_argument("--scenario", choices=tuple(SCENARIO_USERS), default="closed",
                       help="User class to run when none is named")
    group.add_argument("--payloads", default="",
                       help="An .npz of images (N, 28, 28) uint8 and labels (N,); else MNIST")
    group.add_argument("--mnist-dir", default="",
                       help="MNIST IDX folder whose test images are the payloads "
                            "(default: $MNIST_DATA_DIR, else the mnist-serving cache)")
    group.add_argument("--payload-images", type=int, default=1000,
                       help="Use the first N payload images")
    group.add_argument("--batch-size", type=int, default=64, help="Images per BatchUser request")
    group.add_argument("--arrival-rate", type=float, default=100.0,
                       help="OpenLoopUser: requests per second, all processes together")
    group.add_argument("--raw-dir", default="", help="Folder for raw per-request timings")
    group.add_argument("--fail-p99-ms", type=float, default=0.0,
                       help="Exit code 3 when Locust's p99 is over this (0: no latency gate)")
    group.add_argument("--seed", type=int, default=0, help="Seeds payload order and arrivals")


class MnistUser(FastHttpUser):
    """Shared request and check: subclasses choose how many images and when to send."""

    abstract = True
    wait_time = constant(0)  # closed loop: the next request as soon as the answer is in
    network_timeout = 30.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.framework = options.framework
        self.payloads = load_payloads(
            options.framework, options.payloads, options.mnist_dir, options.payload_images,
            options.batch_size, options.seed,
        )

    def post(self, body: bytes, labels: np.ndarray, *, name: str,
             scheduled: float | None = None, sent: float | None = None) -> None:
        with self.client.post(PREDICT_PATH, data=body, name=name, catch_response=True,
                              headers={"Content-Type": "application/json"}) as response:
            context = response.request_meta["context"]  # a copy the request event will carry
            verdict = check_answer(response.status_code, response.content, labels)
            service_ms = response.request_meta["response_time"]
            context.update(images=verdict.images, correct=verdict.correct, service_ms=service_ms)
            if scheduled is not None:
                response.request_meta["response_time"] = latency_from_schedule_ms(
                    scheduled, sent, service_ms)
                context["start"] = epoch_of(scheduled)  # an open-loop request starts when due
            if verdict.error:
                response.failure(verdict.error)
            else:
                response.success()
        # the request event has fired: the arrival is recorded (no gevent switch since, so a
        # user killed at the stop cannot leave it recorded and pending both)
        if scheduled is not None:
            arrival_schedule(self.environment).done(scheduled)


class PredictUser(MnistUser):
    """Closed loop: one image per request, no wait."""

    @tag("closed")
    @task
    def predict_one(self) -> None:
        index = random.randrange(len(self.payloads.single))
        self.post(self.payloads.single[index], self.payloads.labels[index : index + 1],
                  name=f"{self.framework} x1")


class BatchUser(MnistUser):
    """Closed loop: --batch-size images per request; the report turns it into images per second."""

    @tag("batch")
    @task
    def predict_batch(self) -> None:
        body, labels = random.choice(self.payloads.batches)
        self.post(body, labels, name=f"{self.framework} x{len(labels)}")


class OpenLoopUser(MnistUser):
    """Open loop: sends at Poisson arrival times; latency counts from the scheduled time."""

    @tag("open")
    @task
    def predict_on_schedule(self) -> None:
        scheduled = arrival_schedule(self.environment).next()
        delay = scheduled - time.perf_counter()
        if delay > 0:
            gevent.sleep(delay)
        index = random.randrange(len(self.payloads.single))
        self.post(self.payloads.single[index], self.payloads.labels[index : index + 1],
                  name=f"{self.framework} x1", scheduled=scheduled, sent=time.perf_counter())


def epoch_of(moment: float) -> float:
    """A ``time.perf_counter()`` reading as epoch seconds, the raw files' clock."""
    return time.time() - (time.perf_counter() - moment)


_schedules: dict[int, PoissonSchedule] = {}
_stopping: dict[int, float] = {}  # perf_counter() when the stop began, per environment


def arrival_schedule(environment) -> PoissonSchedule:
    """This process's share of the arrivals: the union of independent Poisson streams at
    rate / processes each is a Poisson stream at the full rate."""
    key = id(environment)
    if key not in _schedules:
        options = environment.parsed_options
        processes = options.expect_workers if isinstance(environment.runner, WorkerRunner) else 1
        seed = options.seed * 1000 + os.getpid() % 1000
        _schedules[key] = PoissonSchedule(
            options.arrival_rate / max(1, processes), start=time.perf_counter(), seed=seed)
    return _schedules[key]


# Raw timings: Locust's statistics keep response times rounded (to whole ms under 100 ms), so
# every request is also kept here, as measured, and written per process for the report.
_raw: list[tuple] = []


@events.request.add_listener
def record_request(name, response_time, exception, context, start_time=None, **_kwargs) -> None:
    end = time.time()
    context = context or {}
    start = context.get("start") or start_time or end - response_time / 1000.0
    error = "" if exception is None else str(exception).replace("\n", " ")[:200]
    _raw.append((start, end, response_time, context.get("service_ms", response_time), name,
                 context.get("images", 0), context.get("correct", 0), error))


def write_raw(environment) -> None:
    raw_dir = getattr(environment.parsed_options, "raw_dir", "")
    if not raw_dir or not _raw:
        return
    path = Path(raw_dir) / f"raw-{os.getpid()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(RAW_COLUMNS)
        writer.writerows(
            (f"{s:.6f}", f"{e:.6f}", f"{lat:.4f}", f"{svc:.4f}", n, i, c, err)
            for s, e, lat, svc, n, i, c, err in _raw
        )


@events.init.add_listener
def pick_scenario(environment, **_kwargs) -> None:
    """Run only the --scenario's User class unless User classes were named on the command line."""
    options = environment.parsed_options
    if options is None or options.user_classes or isinstance(environment.runner, WorkerRunner):
        return
    wanted = SCENARIO_USERS[options.scenario]
    environment.user_classes[:] = [u for u in environment.user_classes if u.__name__ == wanted]


@events.test_stopping.add_listener
def on_test_stopping(environment, **_kwargs) -> None:
    _stopping[id(environment)] = time.perf_counter()


@events.test_stop.add_listener
def on_test_stop(environment, **_kwargs) -> None:
    record_unanswered(environment)
    write_raw(environment)


def record_unanswered(environment) -> None:
    """Open loop: every arrival due before the stop began that got no answer by now (still in
    flight when the stop timeout ran out, or never sent because every user was busy) becomes a
    failed request whose latency is the time it waited, a lower bound of its real latency.
    Without this, an overloaded run would drop its slowest requests from p99."""
    schedule = _schedules.pop(id(environment), None)  # the next test gets a fresh schedule
    stopped = time.perf_counter()
    if schedule is None:
        return
    options = environment.parsed_options
    for scheduled in schedule.unanswered(until=_stopping.pop(id(environment), stopped)):
        environment.events.request.fire(
            request_type="POST", name=f"{options.framework} x1", response_length=0,
            response_time=(stopped - scheduled) * 1000.0, exception=RuntimeError(UNANSWERED),
            context={"start": epoch_of(scheduled), "service_ms": float("nan"), "images": 1})


@events.quitting.add_listener
def on_quitting(environment, **_kwargs) -> None:
    write_raw(environment)
    if isinstance(environment.runner, WorkerRunner):
        return
    bound = environment.parsed_options.fail_p99_ms if environment.parsed_options else 0.0
    p99 = environment.stats.total.get_response_time_percentile(0.99)
    if bound and p99 and p99 > bound:
        log.error("p99 %.1f ms is over the bound of %.1f ms", p99, bound)
        environment.process_exit_code = 3

