"""GET /models and the Open Inference Protocol v2 (KServe/Triton REST), as a Starlette app.

    curl -s localhost:3000/v2/models/mnist-keras

MnistApi mounts this app; its handlers reach the service instance with
``bentoml.get_current_service()``. JSON tensors and the binary tensor data extension
(``Inference-Header-Content-Length``) are both accepted and answered; errors are a status and
``{"error": "..."}``, as the protocol says.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from models.contract import IMAGE_SHAPE, INPUT_NAME, MODEL_FRAMEWORKS, NUM_CLASSES, OUTPUT_NAME
from services.preprocess import InputError, check_pixels

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
SERVER = {"name": "mnist-serving", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


class ProtocolError(InputError):
    """An OIP request the protocol or the contract rejects."""


def service():
    import bentoml

    return bentoml.get_current_service()


def framework_of(name: str) -> str:
    if name not in MODEL_FRAMEWORKS:
        raise ProtocolError(f"unknown model {name!r}: expected one of {', '.join(MODEL_FRAMEWORKS)}",
                            status=404)
    return MODEL_FRAMEWORKS[name]


async def checked_model(request: Request) -> tuple[str, dict]:
    """The framework and description of the path's model, checking the version if one is given."""
    framework = framework_of(request.path_params["name"])
    description = await service().describe(framework)
    version = request.path_params.get("version")
    loaded = description["tag"].split(":", 1)[1]
    if version is not None and version != loaded:
        raise ProtocolError(f"model {request.path_params['name']} has no version {version!r}: "
                            f"the loaded version is {loaded}", status=404)
    return framework, description


def parameters_of(item: dict, where: str) -> dict:
    """An OIP object's optional ``parameters``, which the protocol says is a JSON object."""
    parameters = item.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"{where} parameters must be a JSON object, not {parameters!r:.40}")
    return parameters


def unavailable(error: Exception) -> bool:
    """Whether an error means a model service cannot be reached (503), not that it failed (500)."""
    import aiohttp
    from bentoml.exceptions import ServiceUnavailable

    return isinstance(error, (aiohttp.ClientConnectionError, ServiceUnavailable))


def protocol_errors(handler):
    """Answer every failure as the protocol says: a status and ``{"error": ...}``, never a page."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except InputError as error:
            if handler.__name__ == "infer":  # a rejected inference counts like an answered one
                framework = MODEL_FRAMEWORKS.get(request.path_params.get("name", ""), "unknown")
                service().record(framework, "oip", 0.0, status=error.status)
            return JSONResponse({"error": str(error)}, status_code=error.status)
        except Exception as error:  # a model service down or failing: still JSON, still named
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse({"error": f"{type(error).__name__}: {error}"},
                                status_code=503 if unavailable(error) else 500)

    wrapped.__name__ = handler.__name__
    return wrapped


async def list_models(request: Request) -> Response:
    return JSONResponse({"models": await service().report()})


async def server_metadata(request: Request) -> Response:
    return JSONResponse(SERVER)


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    try:
        await service().report()  # answers only once every model service has loaded its model
    except Exception as error:  # a model service not up (yet): not ready, which is no error
        return JSONResponse({"ready": False, "error": f"{type(error).__name__}: {error}"},
                            status_code=503)
    return JSONResponse({"ready": True})


@protocol_errors
async def model_metadata(request: Request) -> Response:
    _, description = await checked_model(request)
    return JSONResponse({
        "name": request.path_params["name"],
        "versions": [description["tag"].split(":", 1)[1]],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *IMAGE_SHAPE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, NUM_CLASSES]}],
    })


@protocol_errors
async def model_ready(request: Request) -> Response:
    await checked_model(request)
    return JSONResponse({"name": request.path_params["name"], "ready": True})


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference header and the binary tail that follows it (empty without one)."""
    if header_length is None:
        json_bytes, tail = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} is not a "
                                f"length within the {len(body)}-byte body")
        json_bytes, tail = body[: int(header_length)], body[int(header_length):]
    try:
        header = json.loads(json_bytes)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the inference request is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise ProtocolError("the inference request must be a JSON object")
    return header, tail


def input_tensor(header: dict, tail: bytes, max_images: int) -> np.ndarray:
    """The one ``image`` input as (N, 28, 28) float32, from JSON data or the binary tail."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"inputs must be a list holding one tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ProtocolError(f"unknown input {tensor.get('name')!r}: the model takes "
                            f"{INPUT_NAME!r}")
    if tensor.get("datatype") != "FP32":
        raise ProtocolError(f"input {INPUT_NAME!r} has datatype {tensor.get('datatype')!r}: "
                            "the model takes FP32")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            or tuple(shape[1:]) != IMAGE_SHAPE or shape[0] < 1):
        raise ProtocolError(f"input {INPUT_NAME!r} has shape {shape!r}: expected [N, 28, 28]")
    if shape[0] > max_images:
        raise ProtocolError(f"{shape[0]} images in one request: the maximum is {max_images}",
                            status=413)
    count = int(np.prod(shape))
    binary_size = parameters_of(tensor, f"input {INPUT_NAME!r}").get("binary_data_size")
    if binary_size is not None:
        if binary_size != count * 4 or len(tail) != binary_size:
            raise ProtocolError(f"input {INPUT_NAME!r} declares binary_data_size {binary_size!r} "
                                f"with {len(tail)} bytes after the header: shape {shape} "
                                f"needs {count * 4}")
        array = np.frombuffer(tail, dtype="<f4")
    else:
        if "data" not in tensor:
            raise ProtocolError(f"input {INPUT_NAME!r} has neither data nor binary_data_size")
        try:
            array = np.asarray(tensor["data"])
        except (ValueError, TypeError) as error:
            raise ProtocolError(f"input {INPUT_NAME!r} data must be numbers ({error})") from error
        if array.dtype.kind not in "iuf":  # no strings such as "0.5", no booleans
            raise ProtocolError(f"input {INPUT_NAME!r} data must be numbers, not "
                                f"{array.dtype.name} values")
        if array.size != count:
            raise ProtocolError(f"input {INPUT_NAME!r} has {array.size} values but shape "
                                f"{shape} needs {count}")
    return check_pixels(array.reshape(shape).astype(np.float32, copy=False), INPUT_NAME)


def wants_binary(header: dict) -> bool:
    outputs = header.get("outputs") or []
    for output in outputs if isinstance(outputs, list) else []:
        if isinstance(output, dict) and output.get("name") == OUTPUT_NAME:
            binary = parameters_of(output, f"output {OUTPUT_NAME!r}").get("binary_data")
            if binary is not None:
                return bool(binary)
    return bool(parameters_of(header, "request").get("binary_data_output", False))


@protocol_errors
async def infer(request: Request) -> Response:
    started = time.perf_counter()
    framework, description = await checked_model(request)
    api = service()
    header, tail = split_body(await request.body(), request.headers.get(HEADER_LENGTH))
    outputs = header.get("outputs")
    if outputs is not None and (not isinstance(outputs, list) or any(
            not isinstance(o, dict) or o.get("name") != OUTPUT_NAME for o in outputs)):
        raise ProtocolError(f"outputs may only name {OUTPUT_NAME!r}")
    images = input_tensor(header, tail, api.settings.max_images)  # (N, 28, 28)
    logits, description = await api.logits(framework, images)  # (N, 10)
    output = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": list(logits.shape)}
    reply = {"model_name": request.path_params["name"],
             "model_version": description["tag"].split(":", 1)[1], "outputs": [output]}
    if "id" in header:
        reply["id"] = header["id"]
    api.record(framework, "oip", started, status=200)
    if not wants_binary(header):
        output["data"] = logits.ravel().tolist()
        return JSONResponse(reply)
    data = logits.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    json_bytes = json.dumps(reply).encode()
    return Response(json_bytes + data, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(json_bytes))})


oip_app = Starlette(routes=[
    Route("/models", list_models, methods=["GET"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{name}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
])
