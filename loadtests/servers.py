"""Start, wait for, query and stop the servers a load test runs against; loopback only.

Every server is a child process in its own process group, started on a free 127.0.0.1 port,
waited for with a deadline, and stopped by its own process id (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.protocol import PREDICT_PATH, parse_predictions, predict_body
from models.contract import FRAMEWORKS, ONNX_FILENAME, model_name
from models.errors import PipelineError
from services.runner import free_port, serve_command

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
INFERENCE_METRIC = "mnist_inference_seconds"  # model compute per ONNX Runtime run (issue 4)
REQUEST_METRIC = "mnist_request_seconds"  # front-service time per request
BATCH_METRIC = "mnist_batch_images"  # images per ONNX Runtime run (adaptive batching)


class ServerError(PipelineError):
    """A server did not start or stopped answering; the message ends with its log's tail."""


class LoadTestSettingsError(PipelineError, ValueError):
    """A load-test setting is refused before anything starts; the message says which."""


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash, or ValueError if it points anywhere but this machine."""
    host = urllib.parse.urlparse(url).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise LoadTestSettingsError(f"{url}: load tests send traffic to loopback only (127.0.0.1)")
    return url.rstrip("/")


@dataclass
class Server:
    name: str  # "service" or "baseline"
    url: str
    process: subprocess.Popen | None = None  # None: started by someone else (--host)
    log_path: Path | None = None
    info: dict = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, grace: float = 15.0) -> None:
        """Stop the server if this process started it: SIGTERM to its group, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)  # its own group: start_new_session=True
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, grace)
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=grace)
        log.info("stopped %s (pid %d)", self.name, self.process.pid)


def start_process(name: str, command: list[str], *, url: str, ready_path: str, log_path: Path,
                  cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Server:
    """Start ``command`` in its own process group and wait until ``url + ready_path`` answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting %s: %s", name, " ".join(command))
    with log_path.open("wb") as log_stream:
        process = subprocess.Popen(command, cwd=cwd, stdout=log_stream, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    server = Server(name, url, process, log_path)
    try:
        wait_ready(server, ready_path, timeout=timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, ready_path: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise ServerError(f"{server.name} exited with code {server.process.returncode} before "
                              f"it was ready:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + ready_path, timeout=2) as response:
                if response.status == 200:
                    log.info("%s ready at %s", server.name, server.url)
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            pass
        time.sleep(0.25)
    raise ServerError(f"{server.name} not ready at {server.url}{ready_path} after {timeout:.0f} s:"
                      f"\n{server.log_tail()}")


def start_service(repo_root: Path, log_path: Path, *, timeout: float = 180.0) -> Server:
    """`bentoml serve` (bentofile.yaml's service) from the repository root on a free loopback port."""
    port = free_port()
    return start_process("service", serve_command(host=LOOPBACK, port=port),
                         url=f"http://{LOOPBACK}:{port}", ready_path="/readyz", log_path=log_path,
                         cwd=repo_root, timeout=timeout)


def start_baseline(model_paths: dict[str, Path], repo_root: Path, log_path: Path, *,
                   threads: int = 1, timeout: float = 60.0) -> Server:
    """The Starlette + ONNX Runtime baseline on a free loopback port."""
    port = free_port()
    command = [sys.executable, "-m", "loadtests.baseline_server", "--host", LOOPBACK,
               "--port", str(port), "--threads", str(threads)]
    for framework, path in model_paths.items():
        command += ["--model", f"{framework}={path}"]
    return start_process("baseline", command, url=f"http://{LOOPBACK}:{port}",
                         ready_path="/readyz", log_path=log_path, cwd=repo_root, timeout=timeout)


def served_tags(url: str) -> dict[str, str]:
    """framework -> model tag named by the server's `GET /models`; empty if it has none."""
    try:
        with urllib.request.urlopen(url + "/models", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    return {match[1]: match[0] for match in re.findall(r"(mnist-(\w+):\w+)", text)
            if match[1] in FRAMEWORKS}


def resolve_onnx_paths(frameworks: list[str], tags: dict[str, str],
                       artifacts: Path) -> dict[str, Path]:
    """The ONNX file of each framework: the tag the service serves (else latest) in the BentoML
    store, else ``artifacts/<framework>/model.onnx``; frameworks with neither are left out."""
    paths: dict[str, Path] = {}
    try:
        import bentoml

        for framework in frameworks:
            try:
                model = bentoml.models.get(tags.get(framework, f"{model_name(framework)}:latest"))
                paths[framework] = Path(model.path_of(ONNX_FILENAME))
            except bentoml.exceptions.NotFound:
                pass
    except ImportError:
        pass
    for framework in frameworks:
        fallback = artifacts / framework / ONNX_FILENAME
        if framework not in paths and fallback.is_file():
            paths[framework] = fallback
    return {framework: path for framework, path in paths.items() if path.is_file()}


def served_digits(url: str, framework: str, images: np.ndarray, *, batch_size: int = 64,
                  timeout: float = 60.0) -> tuple[np.ndarray, str]:
    """Digits a server answers for uint8 images (N, 28, 28), in batches on one keep-alive
    connection, and the execution provider its answer names (``""`` if none)."""
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    digits, provider = [], ""
    try:
        for first in range(0, len(images), batch_size):
            body = predict_body(framework, images[first : first + batch_size])
            connection.request("POST", PREDICT_PATH, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            content = response.read()
            if response.status != 200:
                raise ServerError(f"{url}{PREDICT_PATH} ({framework}): HTTP {response.status}: "
                                  f"{content[:200]!r}")
            answer = json.loads(content)
            provider = provider or (answer.get("provider", "") if isinstance(answer, dict) else "")
            digits += [prediction["digit"] for prediction in parse_predictions(answer)]
    finally:
        connection.close()
    return np.asarray(digits), str(provider)


def scrape_histograms(url: str) -> dict[str, dict[str, dict]]:
    """metric -> framework -> {"buckets": {le: cumulative count}, "sum": s, "count": n} from
    `/metrics`, summed over other labels (provider, endpoint); empty if it cannot be read."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            return parse_histograms(response.read().decode())
    except (urllib.error.URLError, OSError):
        return {}


def parse_histograms(text: str) -> dict[str, dict[str, dict]]:
    """The per-framework histograms of a Prometheus text exposition (see scrape_histograms)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[str, dict]] = {}
    wanted = {INFERENCE_METRIC, REQUEST_METRIC, BATCH_METRIC}
    for family in text_string_to_metric_families(text):
        if family.type != "histogram" or family.name not in wanted:
            continue
        for sample in family.samples:
            framework = sample.labels.get("framework")
            if framework is None:
                continue
            entry = found.setdefault(family.name, {}).setdefault(
                framework, {"buckets": {}, "sum": 0.0, "count": 0.0})
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                entry["buckets"][le] = entry["buckets"].get(le, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] += sample.value
            elif sample.name.endswith("_count"):
                entry["count"] += sample.value
    return found


def histogram_delta(after: dict, before: dict) -> dict:
    """``after - before`` of two scrapes (the same shape as ``scrape_histograms`` returns)."""
    delta: dict[str, dict[str, dict]] = {}
    for metric, per_framework in after.items():
        for framework, entry in per_framework.items():
            old = before.get(metric, {}).get(framework, {"buckets": {}, "sum": 0.0, "count": 0.0})
            delta.setdefault(metric, {})[framework] = {
                "buckets": {le: count - old["buckets"].get(le, 0.0)
                            for le, count in entry["buckets"].items()},
                "sum": entry["sum"] - old["sum"],
                "count": entry["count"] - old["count"],
            }
    return delta


def histogram_quantile(entry: dict, quantile: float) -> float:
    """The quantile of a Prometheus histogram, interpolated inside its bucket as PromQL's
    ``histogram_quantile`` does; NaN when it is empty. Only as fine as the buckets."""
    buckets = sorted(entry["buckets"].items())
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank = quantile * total
    lower_edge, lower_count = 0.0, 0.0
    for edge, count in buckets:
        if count >= rank:
            if edge == float("inf"):
                return lower_edge
            share = (rank - lower_count) / max(count - lower_count, 1e-12)
            return lower_edge + (edge - lower_edge) * share
        lower_edge, lower_count = edge, count
    return lower_edge
