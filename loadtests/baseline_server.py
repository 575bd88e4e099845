"""The serving-tax baseline: the smallest honest hand-written server for the same ONNX models.

    python -m loadtests.baseline_server --port 8001 --model pytorch=artifacts/pytorch/model.onnx

Plain Starlette on one uvicorn worker, ONNX Runtime called straight from the handler: no
batching, no metrics, no thread hop. It speaks `/predict` exactly as the BentoML service does, so
the same Locust run can hit either, and the difference between the two is what serving costs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from loadtests.protocol import PREDICT_PATH, check_images
from models.contract import FRAMEWORKS, INPUT_NAME, OUTPUT_NAME, model_name

log = logging.getLogger(__name__)

MAX_IMAGES = 1024  # per request
MAX_BODY_BYTES = 16 * 1024 * 1024  # a 1024-image JSON body is about 6 MiB


def load_sessions(paths: dict[str, Path], *, threads: int = 0) -> dict[str, ort.InferenceSession]:
    """One CPU session per framework; ``threads`` 0 keeps ONNX Runtime's default thread pool."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {}
    for framework, path in paths.items():
        sessions[framework] = ort.InferenceSession(str(path), options,
                                                   providers=["CPUExecutionProvider"])
        sessions[framework].tag = model_tag(framework, path)  # named in every answer
    return sessions


def model_tag(framework: str, path: Path) -> str:
    """``mnist-pytorch:<version>`` for a file in the BentoML store, else the model name."""
    name = model_name(framework)
    return f"{name}:{path.parent.name}" if path.parent.parent.name == name else name


def answer(framework: str, session: ort.InferenceSession, images: np.ndarray) -> dict:
    logits = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]  # (N, 10)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return {
        "framework": framework,
        "tag": session.tag,
        "provider": session.get_providers()[0],
        "predictions": [
            {"digit": int(digit), "probabilities": row}
            for digit, row in zip(logits.argmax(axis=1), probabilities.tolist(), strict=True)
        ],
    }


def create_app(sessions: dict[str, ort.InferenceSession]) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            request_json = json.loads(body)
            framework = request_json["framework"]
            images = check_images(request_json["images"], max_images=MAX_IMAGES)
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": f"bad request: {error}"}, status_code=400)
        if framework == "all":
            answers = {name: answer(name, session, images) for name, session in sessions.items()}
            return JSONResponse({"framework": "all", "results": answers})
        if framework not in sessions:
            known = ", ".join([*sessions, "all"])
            return JSONResponse(
                {"error": f"unknown framework {framework!r}: expected one of {known}"},
                status_code=400,
            )
        return JSONResponse(answer(framework, sessions[framework], images))

    async def ready(_request: Request) -> JSONResponse:
        return JSONResponse({"models": {name: session.tag for name, session in sessions.items()}})

    return Starlette(routes=[
        Route(PREDICT_PATH, predict, methods=["POST"]),
        Route("/livez", ready),
        Route("/readyz", ready),
    ])


def parse_model(text: str) -> tuple[str, Path]:
    framework, _, path = text.partition("=")
    if framework not in FRAMEWORKS or not path:
        raise argparse.ArgumentTypeError(f"expected FRAMEWORK=PATH.onnx with FRAMEWORK one of "
                                         f"{', '.join(FRAMEWORKS)}, got {text!r}")
    return framework, Path(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--model", type=parse_model, action="append", required=True,
                        help="FRAMEWORK=PATH of an ONNX model; repeat per framework")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads (0: its default)")
    args = parser.parse_args(argv)

    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sessions = load_sessions(dict(args.model), threads=args.threads)
    log.info("serving %s on %s:%d", ", ".join(sessions), args.host, args.port)
    uvicorn.run(create_app(sessions), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
