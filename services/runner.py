"""Start ``bentoml serve`` for the service set from the repository root, in the foreground or for a test.

    python -c "from services.runner import serve; serve(port=3000)"
    python -m services.runner        # only check that every configured model loads
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from models.errors import PipelineError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class PreflightError(PipelineError):
    """A configured model, setting or build file would stop the server; the message names it."""


def service_import_path(repo_root: Path = REPO_ROOT) -> str:
    """bentofile.yaml's ``service:`` entry, e.g. ``services.service:MnistApi``: the one place."""
    import yaml

    bentofile = repo_root / "bentofile.yaml"
    if not bentofile.is_file():
        raise PreflightError(f"{bentofile}: missing; run from a checkout of mnist-serving")
    service = (yaml.safe_load(bentofile.read_text()) or {}).get("service")
    if not service:
        raise PreflightError(f"{bentofile} has no `service:` entry")
    return str(service)


def serve_command(*, host: str = "127.0.0.1", port: int = 3000) -> list[str]:
    """The command line: ``bentoml serve <bentofile's service> --host H --port P``."""
    return [sys.executable, "-m", "bentoml", "serve", service_import_path(), "--host", host,
            "--port", str(port)]


def serve_env(*, device: str | None = None, base: dict[str, str] | None = None,
              **settings: object) -> dict[str, str]:
    """The environment: ``device`` -> MNIST_DEVICE, ``max_latency_ms=500`` -> MNIST_MAX_LATENCY_MS."""
    env = dict(os.environ if base is None else base)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if device is not None:
        env["MNIST_DEVICE"] = device
    for key, value in settings.items():
        if value is not None:
            env[f"MNIST_{key.upper()}"] = str(value)
    return env


def check_models() -> list[str]:
    """Load every configured model in this process: one line per model (tag, active provider)."""
    from models.contract import FRAMEWORKS
    from services.inference import load_model, stored_model
    from services.settings import load_settings

    settings = load_settings()
    lines = []
    for framework in FRAMEWORKS:
        model = load_model(framework, stored_model(framework, settings.tag(framework)),
                           device=settings.device, threads=1)
        lines.append(f"{framework}: {model.tag} on {model.provider}")
    return lines


def preflight(env: dict[str, str]) -> list[str]:
    """Load every configured model under ``env`` first, so a missing or corrupt one fails in
    seconds with a message naming it (raised as ``PreflightError``), not in a worker loop.

    It runs in a child process: BentoML reads BENTOML_HOME once per process.
    """
    try:
        result = subprocess.run([sys.executable, "-m", "services.runner"], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        raise PreflightError(f"loading the models took over {error.timeout:.0f} s; run "
                             "`python -m services.runner` to see where it hangs") from error
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise PreflightError(lines[-1].removeprefix("error: "))
    return result.stdout.splitlines()


def serve(*, host: str = "127.0.0.1", port: int = 3000, device: str = "auto",
          check: bool = True, **settings: object) -> NoReturn:
    """Become ``bentoml serve`` after the preflight check: this process is replaced (exec), so
    a SIGTERM or SIGINT sent to it reaches BentoML's arbiter, which stops its workers. (As a
    child process, a SIGTERM to the parent alone left the four workers running, orphaned.)"""
    env = serve_env(device=device, **settings)
    if check:
        for line in preflight(env):
            log.info("%s", line)
    command = serve_command(host=host, port=port)
    os.chdir(REPO_ROOT)
    os.execve(command[0], command, env)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, *, grace_s: float = 15.0) -> None:
    """SIGINT the server's process group (bentoml's arbiter and its workers), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def running_server(env: dict[str, str], *, timeout_s: float = 120.0,
                   log_path: Path | None = None) -> Iterator[str]:
    """Start ``bentoml serve`` on a free loopback port, wait for /readyz, yield its URL, stop it."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(serve_command(port=port), cwd=REPO_ROOT, env=env, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with code {process.returncode} before "
                                   f"it was ready; see {log_path or 'its output'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"bentoml serve was not ready within {timeout_s:.0f} s; see "
                                   f"{log_path or 'its output'}")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)
        if log_path:
            output.close()


if __name__ == "__main__":  # the preflight check: python -m services.runner
    from bentoml.exceptions import BentoMLException

    from services.settings import SettingsError

    try:
        print("\n".join(check_models()))
    except (BentoMLException, SettingsError) as error:
        sys.exit(f"error: {error}")
