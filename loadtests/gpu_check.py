"""The GPU check: which providers ONNX Runtime offers, and what each model does on them.

    python -m loadtests.gpu_check --artifacts artifacts --out reports/gpu

For each framework's model.onnx: batch-1 and batch-1024 latency (p50/p99) and throughput on
CUDA where ONNX Runtime can start it, on the CPU otherwise (the provider really used is read back
from the session and reported, since the CUDA package falls back silently). Beside them, the
PyTorch model on CUDA, where torch sees a GPU, as the floor a framework's own runtime reaches.
Prints a markdown table and writes gpu_check.json and gpu_check.md to --out.

Needs numpy and onnxruntime (torch for the floor) and nothing else of the project's install, so it
runs on a machine that only has a copy of the repository and its artifacts; hence argparse.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from models.contract import FRAMEWORKS, INPUT_NAME, ONNX_FILENAME, OUTPUT_NAME
from models.tables import markdown_table
from models.timing import time_calls

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
BATCH_SIZES = (1, 1024)
WARMUP_CALLS = 10  # untimed calls before each timing


def percentiles_ms(seconds: np.ndarray) -> dict[str, float]:
    values = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


def figures(seconds: np.ndarray, batch_size: int) -> dict:
    return {
        "batch_size": batch_size,
        **percentiles_ms(seconds),
        "images_per_s": batch_size / float(np.median(seconds)),
        "calls": len(seconds),
    }


def onnx_session(path: Path, device: str):
    import onnxruntime as ort

    wanted = [CUDA, CPU] if device != "cpu" and CUDA in ort.get_available_providers() else [CPU]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=wanted)


def onnx_rows(artifacts: Path, *, device: str, repeats: int, images: dict[int, np.ndarray]) -> list:
    rows = []
    for framework in FRAMEWORKS:
        path = artifacts / framework / ONNX_FILENAME
        if not path.is_file():
            rows.append({"framework": framework, "runtime": "onnxruntime", "error": f"no {path}"})
            continue
        session = onnx_session(path, device)
        provider = session.get_providers()[0]
        for batch_size, batch in images.items():
            feed = {INPUT_NAME: batch}
            seconds = time_calls(
                lambda session=session, feed=feed: session.run([OUTPUT_NAME], feed), repeats=repeats,
                warmup=WARMUP_CALLS,
            )
            rows.append({"framework": framework, "runtime": "onnxruntime", "provider": provider,
                         **figures(seconds, batch_size)})
    return rows


def torch_rows(artifacts: Path, *, repeats: int, images: dict[int, np.ndarray]) -> list:
    """The PyTorch model on CUDA (eager, inference mode): the floor of a framework's own runtime."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available() or not (artifacts / "pytorch" / "model.pt").is_file():
        return []
    from models.pytorch_cnn import load

    model = load(artifacts / "pytorch").cuda()
    rows = []
    with torch.inference_mode():
        for batch_size, batch in images.items():
            on_gpu = torch.from_numpy(batch).cuda()
            seconds = time_calls(lambda on_gpu=on_gpu: model(on_gpu), repeats=repeats,
                                 warmup=WARMUP_CALLS, synchronize=torch.cuda.synchronize)
            rows.append({"framework": "pytorch", "runtime": f"torch {torch.__version__} eager",
                         "provider": torch.cuda.get_device_name(), **figures(seconds, batch_size)})
    return rows


def run_gpu_check(artifacts: Path, *, device: str = "auto", repeats: int = 200) -> dict:
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    images = {n: rng.random((n, 28, 28), dtype=np.float32) for n in BATCH_SIZES}  # (N, 28, 28)
    return {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "machine": f"{platform.machine()} {platform.node()}",
        "repeats": repeats,
        "rows": onnx_rows(artifacts, device=device, repeats=repeats, images=images)
        + torch_rows(artifacts, repeats=repeats, images=images),
    }


def gpu_check_table(result: dict) -> str:
    headers = ["framework", "runtime", "provider", "batch", "p50 ms", "p99 ms", "images/s"]
    rows = [
        [row["framework"], row["runtime"], row.get("provider", "-"), row.get("batch_size", "-"),
         f"{row['p50_ms']:.3f}" if "p50_ms" in row else row.get("error", "-"),
         f"{row['p99_ms']:.3f}" if "p99_ms" in row else "-",
         f"{row['images_per_s']:,.0f}" if "images_per_s" in row else "-"]
        for row in result["rows"]
    ]
    return (f"ONNX Runtime {result['onnxruntime']}, providers offered: "
            f"{', '.join(result['available_providers'])}; {result['repeats']} calls each after "
            f"{WARMUP_CALLS} warm-up calls.\n\n" + markdown_table(headers, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run_gpu_check(args.artifacts, device=args.device, repeats=args.repeats)
    table = gpu_check_table(result)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
