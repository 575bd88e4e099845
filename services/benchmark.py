"""Figures for the closing note, printed, never asserted: served accuracy, latency, batching under load.

    python -m services.benchmark --data-dir ../shared/mnist                # all three parts
    python -m services.benchmark --data-dir ../shared/mnist --parts load --users 64 \\
        --max-latency-ms 50 1000                                           # 503s per setting

Starts its own `bentoml serve` on a free loopback port (models from BENTOML_HOME) and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from models.contract import FRAMEWORKS
from services.runner import running_server, serve_env

log = logging.getLogger(__name__)


def percentiles_ms(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"


def served_accuracy(url: str, images: np.ndarray, labels: np.ndarray, batch: int) -> None:
    """Accuracy of each framework through POST /predict, next to the parity figure."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        models = {m["framework"]: m for m in client.get("/models").json()["models"]}
        for framework in FRAMEWORKS:
            digits = []
            for start in range(0, len(images), batch):
                response = client.post("/predict", json={
                    "framework": framework, "images": images[start:start + batch].tolist()})
                response.raise_for_status()
                digits += [p["digit"] for p in response.json()["predictions"]]
            accuracy = float(np.mean(np.asarray(digits) == labels))
            parity = models[framework]["test_accuracy"]
            print(f"{framework:10s} served accuracy {accuracy:.4f} on {len(labels)} images; "
                  f"parity figure {parity:.4f} on {models[framework]['test_images']}: "
                  f"{'equal' if accuracy == parity else 'DIFFERENT'}")


def sequential_latency(url: str, image: np.ndarray, requests: int, home_models: dict) -> None:
    """p50/p99 of single-image requests on one keep-alive connection vs in-process ORT."""
    import httpx
    import onnxruntime as ort

    body = {"images": [image.tolist()]}
    with httpx.Client(base_url=url, timeout=30) as client:
        for framework in FRAMEWORKS:
            payload = {**body, "framework": framework}
            for _ in range(20):  # warm-up: connection, batching optimiser, caches
                client.post("/predict", json=payload).raise_for_status()
            served = []
            for _ in range(requests):
                started = time.perf_counter()
                client.post("/predict", json=payload).raise_for_status()
                served.append(time.perf_counter() - started)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(home_models[framework], options,
                                           providers=["CPUExecutionProvider"])
            tensor = image[np.newaxis].astype(np.float32)
            for _ in range(20):
                session.run(None, {"image": tensor})
            local = []
            for _ in range(requests):
                started = time.perf_counter()
                session.run(None, {"image": tensor})
                local.append(time.perf_counter() - started)
            print(f"{framework:10s} served {percentiles_ms(served)} | in-process ORT "
                  f"{percentiles_ms(local)} | {requests} sequential requests")


async def load(url: str, images: np.ndarray, users: int, seconds: float) -> None:
    """``users`` concurrent clients, each sending single-image requests back to back."""
    import httpx

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=users, max_keepalive_connections=users)

    async def user(index: int, client: httpx.AsyncClient) -> None:
        framework = FRAMEWORKS[index % len(FRAMEWORKS)]
        payload = {"framework": framework, "images": [images[index % len(images)].tolist()]}
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = await client.post("/predict", json=payload)
                statuses[response.status_code] += 1
            except httpx.HTTPError:
                statuses[0] += 1
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(user(i, client) for i in range(users)))
    total = sum(statuses.values())
    print(f"  {users} users, {seconds:.0f} s: {total} requests, {total / seconds:.0f} req/s, "
          f"{percentiles_ms(latencies)}, statuses {dict(sorted(statuses.items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST IDX folder")
    parser.add_argument("--parts", nargs="+", default=["accuracy", "latency", "load"],
                        choices=["accuracy", "latency", "load"])
    parser.add_argument("--requests", type=int, default=500, help="per framework, sequential")
    parser.add_argument("--users", type=int, nargs="+", default=[64])
    parser.add_argument("--seconds", type=float, default=15.0, help="per load run")
    parser.add_argument("--max-latency-ms", type=int, nargs="+", default=[None])
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--log", type=Path, default=Path("/tmp/mnist-serving-benchmark.log"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    import bentoml

    from models.contract import ONNX_FILENAME
    from models.data import load_mnist, scale_images

    data = load_mnist(args.data_dir)
    images = scale_images(data.test_images)  # (10000, 28, 28) float32 in [0, 1]
    home_models = {fw: bentoml.models.get(f"mnist-{fw}:latest").path_of(ONNX_FILENAME)
                   for fw in FRAMEWORKS}
    for max_latency_ms in args.max_latency_ms:
        env = serve_env(max_latency_ms=max_latency_ms, max_batch_size=args.max_batch_size)
        with running_server(env, log_path=args.log) as url:
            import httpx

            batching = httpx.get(f"{url}/models").json()["models"][0]["batching"]
            print(f"\n== bentoml serve, batching {batching}")
            if "accuracy" in args.parts:
                served_accuracy(url, images, data.test_labels, batch=128)
            if "latency" in args.parts:
                sequential_latency(url, images[0], args.requests, home_models)
            if "load" in args.parts:
                for users in args.users:
                    asyncio.run(load(url, images, users, args.seconds))


if __name__ == "__main__":
    main()
