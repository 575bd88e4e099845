"""Run every load test headless and write the report: the function `mnist-serving loadtest` calls.

    python -c "from loadtests.runner import run_loadtest; print(run_loadtest(quick=True))"

Starts `bentoml serve` (or uses --host) and the baseline server on free loopback ports, checks
served accuracy, measures the in-process compute floor, then runs one Locust process per
(round, scenario, level, server, framework), frameworks in a rotated order each round, each run
bounded by a deadline. Every run's raw files stay under ``out/runs/``; the report reads them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from loadtests import servers
from loadtests.samples import DRAIN_S, read_raw, summarize, within_bound
from models.contract import FRAMEWORKS
from services.runner import free_port, service_import_path
from services.settings import load_settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
SCENARIOS: tuple[str, ...] = ("closed", "open", "batch")
TARGETS: tuple[str, ...] = ("service", "baseline")
RUN_SLACK_S = 30.0  # a Locust run is killed this long after its --run-time: start-up, stop, write


@dataclass(frozen=True)
class LoadTestConfig:
    frameworks: tuple[str, ...] = FRAMEWORKS
    scenarios: tuple[str, ...] = SCENARIOS
    duration: int = 10  # seconds per run, warm-up included (Locust takes whole seconds)
    warmup: float = 2.0  # seconds at the start of each run left out of every figure
    drain: float = DRAIN_S  # seconds at the end left out: requests due then, cut off by the stop
    rounds: int = 2  # each setting repeated, frameworks in a rotated order each round
    users: tuple[int, ...] = (1, 8, 32, 64)  # closed-loop concurrency sweep
    rates: tuple[float, ...] = (50, 100, 200, 400, 800, 1600)  # open loop, requests/s, climbed
    open_users: int = 64  # open loop: most requests in flight; late sends still count as late
    p99_bound_ms: float = 25.0  # open loop: the highest rate whose p99 stays under this
    batch_size: int = 64  # images per request in the batch scenario
    batch_users: int = 4  # closed-loop users in the batch scenario
    payload_images: int = 1000  # distinct test images the users send
    accuracy_images: int = 10_000  # test images sent once through each server for accuracy
    workers: int = 0  # Locust worker processes (0: one local process)
    baseline: bool = True  # run the Starlette baseline beside the service
    seed: int = 0


QUICK = {  # `--quick`: the whole path in under a minute, for CI
    "duration": 2, "warmup": 0.5, "drain": 0.5, "rounds": 1, "users": (8,), "rates": (100.0,),
    "open_users": 16, "batch_users": 2, "payload_images": 200, "accuracy_images": 250,
}


@dataclass
class RunSpec:
    round: int
    scenario: str
    target: str
    framework: str
    users: int
    rate: float | None = None  # open loop only
    exit_code: int | None = None
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)  # /metrics histogram deltas (service only)

    @property
    def level(self) -> str:
        return f"{self.rate:g}rps" if self.rate is not None else f"{self.users}u"

    @property
    def run_id(self) -> str:
        return f"r{self.round}-{self.scenario}-{self.level}-{self.target}-{self.framework}"


def rotated(items: Sequence, by: int) -> list:
    """``items`` rotated left by ``by``: round r starts with the r-th framework."""
    shift = by % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def locust_command(spec: RunSpec, config: LoadTestConfig, host: str, run_dir: Path,
                   payloads: Path) -> list[str]:
    users = config.batch_users if spec.scenario == "batch" else spec.users
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", host, "--users", str(users), "--spawn-rate", str(min(users, 100)),
        "--run-time", f"{int(config.duration)}s", "--stop-timeout", "2",
        "--csv", str(run_dir / "locust"), "--json-file", str(run_dir / "locust"),
        "--loglevel", "WARNING",
        "--framework", spec.framework, "--scenario", spec.scenario, "--payloads", str(payloads),
        "--payload-images", str(config.payload_images), "--batch-size", str(config.batch_size),
        "--arrival-rate", str(spec.rate or 0.0), "--raw-dir", str(run_dir),
        "--seed", str(config.seed + spec.round),
    ]
    if config.workers:
        port = free_port()
        command += ["--processes", str(config.workers), "--master-bind-host", servers.LOOPBACK,
                    "--master-bind-port", str(port), "--master-host", servers.LOOPBACK,
                    "--master-port", str(port), "--expect-workers-max-wait", "30"]
    return command


def run_locust(spec: RunSpec, config: LoadTestConfig, server: servers.Server, runs_dir: Path,
               payloads: Path) -> RunSpec:
    """One Locust run, killed if it outlives its deadline; /metrics read before and after."""
    run_dir = runs_dir / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    command = locust_command(spec, config, server.url, run_dir, payloads)
    before = servers.scrape_histograms(server.url) if spec.target == "service" else {}
    started = time.monotonic()
    with (run_dir / "locust.log").open("wb") as log_stream:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log_stream,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            spec.exit_code = process.wait(timeout=config.duration + RUN_SLACK_S)
        except subprocess.TimeoutExpired:
            log.error("%s outlived its deadline; killing it", spec.run_id)
            os.killpg(os.getpgid(process.pid), 9)
            spec.exit_code = process.wait()
    spec.seconds = time.monotonic() - started
    if spec.target == "service":
        spec.metrics = servers.histogram_delta(servers.scrape_histograms(server.url), before)
    record = {**asdict(spec), "run_id": spec.run_id, "command": command,
              "warmup": config.warmup, "duration": config.duration, "drain": config.drain}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2))
    if spec.exit_code not in (0, 1):  # 1: Locust saw failures, which the report counts
        log.warning("%s: Locust exited with %s (see %s)", spec.run_id, spec.exit_code,
                    run_dir / "locust.log")
    return spec


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("bentoml", "onnxruntime", "onnxruntime-gpu", "locust", "numpy", "starlette",
                    "uvicorn"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def check_accuracy(targets: dict[str, servers.Server], frameworks: Sequence[str],
                   images: np.ndarray, labels: np.ndarray,
                   onnx_paths: dict[str, Path]) -> tuple[dict, np.ndarray]:
    """Served and in-process accuracy per framework, and the mask of images every server and
    every framework got right: the load-test payloads, so that a wrong digit means a fault."""
    from loadtests.floor import predict_digits

    accuracy: dict = {"images": len(labels), "in_process": {}, "providers": {}}
    all_right = np.ones(len(labels), dtype=bool)
    for framework in frameworks:
        if framework in onnx_paths:
            digits = predict_digits(onnx_paths[framework], images)
            accuracy["in_process"][framework] = float((digits == labels).mean())
        for target, server in targets.items():
            if target == "baseline" and framework not in server.info.get("frameworks", ()):
                continue
            digits, provider = servers.served_digits(server.url, framework, images)
            accuracy.setdefault(target, {})[framework] = float((digits == labels).mean())
            accuracy["providers"].setdefault(target, {})[framework] = provider
            all_right &= digits == labels
    return accuracy, all_right


def run_loadtest(
    *,
    host: str | None = None,
    baseline_host: str | None = None,
    frameworks: Sequence[str] | None = None,
    scenarios: Sequence[str] | None = None,
    duration: int | None = None,
    warmup: float | None = None,
    rounds: int | None = None,
    users: Sequence[int] | None = None,
    rates: Sequence[float] | None = None,
    p99_bound_ms: float | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    baseline: bool = True,
    quick: bool = False,
    data_dir: str | os.PathLike | None = None,
    artifacts: str | os.PathLike = "artifacts",
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """Run the load tests and write ``out/report.md`` (returned), charts and raw files.

    ``host``: URL of a running service on loopback; None starts `bentoml serve` from the repo
    root (service path from bentofile.yaml). ``baseline_host``: a running baseline; None starts
    one beside the service from the same ONNX files (``baseline=False`` skips it). Options left
    None take the full profile's values, or the quick profile's with ``quick=True``.
    """
    config = LoadTestConfig(**QUICK) if quick else LoadTestConfig()
    given = {"frameworks": frameworks, "scenarios": scenarios, "duration": duration,
             "warmup": warmup, "rounds": rounds, "users": users, "rates": rates,
             "p99_bound_ms": p99_bound_ms, "batch_size": batch_size, "workers": workers}
    config = replace(config, baseline=baseline, **{
        key: tuple(value) if isinstance(value, (list, tuple)) else value
        for key, value in given.items() if value is not None})
    check_config(config)
    started = datetime.now(timezone.utc)
    out_dir = Path(out) if out else REPO_ROOT / "reports" / started.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)

    from models.data import load_mnist

    data = load_mnist(data_dir, download=False)
    images = data.test_images[: config.accuracy_images]  # (N, 28, 28) uint8
    labels = data.test_labels[: config.accuracy_images].astype(np.int64)

    running: dict[str, servers.Server] = {}
    try:
        running["service"] = (servers.Server("service", servers.check_loopback(host)) if host
                              else servers.start_service(REPO_ROOT, out_dir / "service.log"))
        tags = servers.served_tags(running["service"].url)
        onnx_paths = servers.resolve_onnx_paths(list(config.frameworks), tags, Path(artifacts))
        threads = load_settings().ort_threads  # the baseline runs ORT as the service does
        if config.baseline and baseline_host:
            running["baseline"] = servers.Server("baseline",
                                                 servers.check_loopback(baseline_host))
            running["baseline"].info["frameworks"] = list(config.frameworks)
        elif config.baseline and onnx_paths:
            running["baseline"] = servers.start_baseline(onnx_paths, REPO_ROOT,
                                                         out_dir / "baseline.log", threads=threads)
            running["baseline"].info["frameworks"] = list(onnx_paths)
        elif config.baseline:
            log.warning("no ONNX files found (BentoML store or %s): no baseline", artifacts)

        log.info("checking served accuracy on %d test images", len(labels))
        accuracy, all_right = check_accuracy(running, config.frameworks, images, labels,
                                             onnx_paths)
        pool = np.flatnonzero(all_right)[: config.payload_images]
        if not len(pool):
            raise servers.ServerError("no test image was answered right by every server")
        payloads = out_dir / "payloads.npz"
        np.savez(payloads, images=images[pool], labels=labels[pool])

        from loadtests.floor import measure_floor

        floor = measure_floor(onnx_paths, images[pool], batch_size=config.batch_size,
                              repeats=300 if quick else 2000, threads=threads)
        meta = {
            "started": started.isoformat(timespec="seconds"), "config": asdict(config),
            "quick": quick, "machine": machine(), "versions": versions(),
            "service": {"url": running["service"].url, "started_here": host is None,
                        "module": None if host else service_import_path(REPO_ROOT),
                        "tags": tags},
            "baseline": {"frameworks": running["baseline"].info["frameworks"],
                         "onnx": {k: str(v) for k, v in onnx_paths.items()},
                         "ort_threads": threads} if "baseline" in running else None,
            "data": data.source, "payload_images": len(pool), "accuracy": accuracy,
            "floor": floor,
        }
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
        execute_plan(config, running, out_dir, payloads, progress=progress)
    finally:
        for server in running.values():
            server.stop()

    from loadtests.report import build_report

    return build_report(out_dir)


def check_config(config: LoadTestConfig) -> None:
    """Refuse bad settings before any server starts (LoadTestSettingsError says which)."""
    refuse = servers.LoadTestSettingsError
    for framework in config.frameworks:
        if framework not in FRAMEWORKS:
            raise refuse(f"unknown framework {framework!r}: expected {', '.join(FRAMEWORKS)}")
    for scenario in config.scenarios:
        if scenario not in SCENARIOS:
            raise refuse(f"unknown scenario {scenario!r}: expected {', '.join(SCENARIOS)}")
    if int(config.duration) != config.duration or config.duration < 1:
        raise refuse(f"duration must be whole seconds (Locust's --run-time), got {config.duration}")
    if min(config.warmup, config.drain) < 0 or config.warmup + config.drain >= config.duration:
        raise refuse(f"warm-up {config.warmup} s and drain {config.drain} s must leave some of "
                     f"the run, {config.duration} s, to measure")
    if config.rounds < 1 or not config.users or not config.rates:
        raise refuse("need at least one round, one user count and one rate")
    if config.workers < 0:
        raise refuse(f"workers must be 0 (one local process) or more, got {config.workers}")


def plan(config: LoadTestConfig, served: dict[str, Sequence[str]]) -> list[RunSpec]:
    """Every run, in order, interleaved: per round, scenario and level, each framework in turn
    (the order rotated per round) on each server (their order swapped per round). ``served``:
    the frameworks each server has. The open loop lists its whole rate ladder, low to high."""
    specs = []
    for round_index in range(config.rounds):
        framework_order = rotated(config.frameworks, round_index)
        target_order = list(served) if round_index % 2 == 0 else list(served)[::-1]
        for scenario in config.scenarios:
            levels: list[tuple[int, float | None]] = (
                [(u, None) for u in config.users] if scenario == "closed"
                else [(config.batch_users, None)] if scenario == "batch"
                else [(config.open_users, rate) for rate in config.rates])
            specs += [RunSpec(round_index, scenario, target, framework, users, rate)
                      for users, rate in levels for framework in framework_order
                      for target in target_order if framework in served[target]]
    return specs


def execute_plan(config: LoadTestConfig, running: dict[str, servers.Server], out_dir: Path,
                 payloads: Path, *, progress: bool = True) -> list[RunSpec]:
    """Run the `plan`. The open loop climbs its rate ladder until p99 passes the bound,
    separately for each round, server and framework: the higher rates are skipped."""
    from tqdm import tqdm

    served = {t: running[t].info.get("frameworks", FRAMEWORKS) for t in TARGETS if t in running}
    specs = plan(config, served)
    log.info("at most %d Locust runs, about %.0f min", len(specs),
             len(specs) * (config.duration + 1.0) / 60)
    done: list[RunSpec] = []
    over_bound: set[tuple[int, str, str]] = set()  # (round, target, framework)
    runs_dir = out_dir / "runs"
    bar = tqdm(specs, desc="loadtest", unit="run", disable=not progress or None, file=sys.stderr)
    for spec in bar:
        if (spec.round, spec.target, spec.framework) in over_bound and spec.rate is not None:
            continue
        bar.set_postfix_str(spec.run_id)
        run_locust(spec, config, running[spec.target], runs_dir, payloads)
        done.append(spec)
        if spec.rate is not None:
            stats = summarize(read_raw(runs_dir / spec.run_id), warmup=config.warmup,
                              duration=config.duration, drain=config.drain)
            if not within_bound(stats, config.p99_bound_ms):
                over_bound.add((spec.round, spec.target, spec.framework))
    return done
