"""The BentoML services: one per model, each with adaptive batching, behind MnistApi, the public API.

    bentoml serve services.service:MnistApi        # from the repository root
    MNIST_DEVICE=cpu bentoml serve services.service:MnistApi --port 3001

MnistApi owns /predict, /predict_image and, through the mounted ASGI app in services.oip, GET
/models and the Open Inference Protocol under /v2. TensorflowModel, KerasModel and PytorchModel
each run one ONNX Runtime session in their own processes, so each can be placed and scaled alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Annotated

import aiohttp
import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import JSONResponse

from models.contract import FRAMEWORKS, MODEL_FRAMEWORKS, model_name
from services.limits import RequestLimits
from services.metrics import (
    TIME_BUCKETS,
    batch_images,
    inference_seconds,
    request_seconds,
    requests_total,
)
from services.oip import oip_app
from services.preprocess import InputError, decode_image, images_array, mnist_input
from services.settings import load_settings

log = logging.getLogger(__name__)

SETTINGS = load_settings()  # environment only: no model is touched at import
CHOICES = (*FRAMEWORKS, "all")
TRAFFIC = {"timeout": 60}
# BentoML 1.4.40 replaces its client session to a dependency every 100 requests (or 300 s) by
# closing the old one under requests still in flight: under load those fail with "Connector is
# closed" and the public API answers 500. The model services are local, so never replace it.
RUNNER_CONNECTION = {"max_requests": 2**62, "max_age": 10.0**12}


class StoreModel(bentoml.models.BentoModel):
    """A model from the local store; missing or corrupt, ``bentoml serve`` stops and says why."""

    def resolve(self, base_path=None):
        # bentoml serve resolves every model before it starts a worker: fail there, once, clearly
        # (a worker that fails is restarted forever). BentoModel would also ask BentoCloud.
        from services.inference import stored_model, verified_onnx_path

        framework = MODEL_FRAMEWORKS[self.tag.name]
        verified_onnx_path(framework, self.stored or stored_model(framework, str(self.tag)))
        return super().resolve(base_path)


def settle_heap() -> None:
    """Move everything loaded so far (BentoML, ONNX Runtime, the model) out of the garbage
    collector's reach: a full collection then scans only what requests allocate. Measured with
    Locust (3 A/B pairs, PyTorch model, 1 and 8 users): p99.9 at 1 user 110-132 ms -> 48-60 ms,
    p99 at 8 users 175-202 ms -> 114-144 ms; the stalls were full collections of that heap."""
    gc.collect()
    gc.freeze()


def model_service(framework: str) -> bentoml.Service:
    """A service holding one stored model, answering batched (N, 28, 28) -> (N, 10) logits."""

    class ModelService:
        model_ref = StoreModel(SETTINGS.tag(framework))  # class scope: bentoml build packages it

        def __init__(self) -> None:
            from services.inference import load_model

            self.model = load_model(framework, self.model_ref, device=SETTINGS.device,
                                    threads=SETTINGS.ort_threads)
            settle_heap()

        @bentoml.on_deployment
        def check_device() -> None:
            """Runs once in ``bentoml serve`` before any worker: with MNIST_DEVICE=cuda, open the
            model on CUDA here, since listing the provider does not prove CUDA starts (a worker
            that fails later would be restarted forever instead of the server stopping)."""
            if SETTINGS.device == "cuda":
                from services.inference import load_model, stored_model

                load_model(framework, stored_model(framework, SETTINGS.tag(framework)),
                           device="cuda", threads=1)

        @bentoml.api(batchable=True, **SETTINGS.batching())
        def logits(self, images: np.ndarray) -> np.ndarray:
            """(N, 28, 28) float32 in [0, 1] -> (N, 10) float32 logits; N merges many requests."""
            started = time.perf_counter()
            logits = self.model.logits(images)
            inference_seconds().labels(framework, self.model.provider).observe(
                time.perf_counter() - started)
            batch_images().labels(framework).observe(len(images))
            return logits

        @bentoml.api
        def describe(self) -> dict:
            """Tag, active provider, batching and the store metadata of the loaded model."""
            return {
                "framework": framework,
                "tag": self.model.tag,
                "provider": self.model.provider,
                "batching": SETTINGS.batching(),
                "metadata": self.model.metadata,
            }

    name = f"{framework.capitalize()}Model"
    ModelService.__name__ = ModelService.__qualname__ = name
    return bentoml.service(name=name, workers=SETTINGS.model_workers, traffic=TRAFFIC,
                           runner_connection=RUNNER_CONNECTION,
                           metrics={"duration": {"buckets": list(TIME_BUCKETS)}})(ModelService)


TensorflowModel = model_service("tensorflow")
KerasModel = model_service("keras")
PytorchModel = model_service("pytorch")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # (N, 10)
    return shifted / shifted.sum(axis=1, keepdims=True)


def error_response(error: InputError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=error.status)


def selected_frameworks(framework: str) -> list[str]:
    if framework == "all":
        return list(FRAMEWORKS)
    if framework not in FRAMEWORKS:
        raise InputError(f"unknown framework {framework!r}: expected one of {', '.join(CHOICES)}")
    return [framework]


FrameworkField = Annotated[str, Field(description=f"one of {', '.join(CHOICES)}")]


@bentoml.asgi_app(oip_app, path="/", name="oip")
@bentoml.service(
    name="MnistApi",
    workers=SETTINGS.api_workers,
    traffic=TRAFFIC,
    metrics={"duration": {"buckets": list(TIME_BUCKETS)}},
)
class MnistApi:
    tensorflow = bentoml.depends(TensorflowModel)
    keras = bentoml.depends(KerasModel)
    pytorch = bentoml.depends(PytorchModel)

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.descriptions: dict[str, dict] = {}  # framework -> describe(), fetched once
        settle_heap()

    def model(self, framework: str):
        return getattr(self, framework)  # the dependency: a remote proxy under bentoml serve

    async def describe(self, framework: str) -> dict:
        if framework not in self.descriptions:
            self.descriptions[framework] = await self.model(framework).to_async.describe()
        return self.descriptions[framework]

    async def call_model(self, framework: str, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) -> (N, 10) logits from the framework's model service.

        BentoML's proxy keeps an idle connection for 15 s (aiohttp's default) but the model
        service's uvicorn closes it after 5 s, and the dependency workers take no keep-alive
        setting: a request written on a connection the server has just closed fails before the
        model sees it ("Cannot write to closing transport"), as a 500. Inference is idempotent,
        so it is sent once more, on a fresh connection; any other error is not retried.
        """
        try:
            return await self.model(framework).to_async.logits(images)
        except aiohttp.ClientConnectionError as error:
            log.info("%s: connection to the model service was closed (%s); sending again",
                     framework, error)
            return await self.model(framework).to_async.logits(images)

    async def logits(self, framework: str, images: np.ndarray) -> tuple[np.ndarray, dict]:
        """(N, 28, 28) -> ((N, 10) logits, the answering model's description)."""
        logits, description = await asyncio.gather(
            self.call_model(framework, images), self.describe(framework))
        return np.asarray(logits, np.float32), description

    async def answer(self, framework: str, images: np.ndarray) -> dict:
        logits, description = await self.logits(framework, images)
        probabilities = softmax(logits)
        return {
            "framework": framework,
            "tag": description["tag"],
            "provider": description["provider"],
            "predictions": [
                {"digit": int(row.argmax()), "probabilities": [round(float(p), 6) for p in row]}
                for row in probabilities
            ],
        }

    async def classify(self, framework: str, images: np.ndarray, endpoint: str) -> dict:
        started = time.perf_counter()
        frameworks = selected_frameworks(framework)
        answers = await asyncio.gather(*(self.answer(fw, images) for fw in frameworks))
        self.record(framework, endpoint, started, status=200)
        if framework == "all":
            return {"framework": "all", "results": {a["framework"]: a for a in answers}}
        return answers[0]

    def record(self, framework: str, endpoint: str, started: float, *, status: int) -> None:
        """Count a request with its status; observe the time of answered ones (perf_counter)."""
        label = framework if framework in CHOICES else "unknown"  # no label per typo
        requests_total().labels(label, endpoint, str(status)).inc()
        if status == 200:
            request_seconds().labels(label, endpoint).observe(time.perf_counter() - started)

    def rejected(self, framework: str, endpoint: str, error: InputError) -> JSONResponse:
        self.record(framework, endpoint, 0.0, status=error.status)
        return error_response(error)

    async def report(self) -> list[dict]:
        """GET /models: each loaded model's tag, provider, batching and store metadata."""
        descriptions = await asyncio.gather(*(self.describe(fw) for fw in FRAMEWORKS))
        keys = ("framework", "opset", "sha256", "test_accuracy", "test_images",
                "argmax_agreement", "max_abs_logit_diff", "native_test_accuracy", "exporter",
                "training_set", "created")
        return [
            {
                "name": model_name(d["framework"]),
                "tag": d["tag"],
                "provider": d["provider"],
                "batching": d["batching"],
                **{key: d["metadata"].get(key) for key in keys},
            }
            for d in descriptions
        ]

    @bentoml.api(route="/predict")
    async def predict(
        self,
        framework: FrameworkField,
        images: Annotated[list, Field(description="1 to MNIST_MAX_IMAGES (default 128) "
                                      "28x28 lists of floats in [0, 1]")],
    ) -> dict:
        """Classify 28x28 images in [0, 1] with one framework's model, or with all three."""
        try:
            selected_frameworks(framework)
            array = images_array(images, max_images=self.settings.max_images)  # (N, 28, 28)
        except InputError as error:
            return self.rejected(framework, "predict", error)
        return await self.classify(framework, array, "predict")

    @bentoml.api(route="/predict_image")
    async def predict_image(self, image: Path, framework: FrameworkField) -> dict:
        """Classify one PNG or JPEG of a digit, any size, after MNIST-style preprocessing."""
        try:
            selected_frameworks(framework)
            picture = decode_image(image.read_bytes(), max_pixels=self.settings.max_image_pixels)
            array = mnist_input(picture)[np.newaxis]  # (1, 28, 28)
        except InputError as error:
            return self.rejected(framework, "predict_image", error)
        return await self.classify(framework, array, "predict_image")


MnistApi.add_asgi_middleware(RequestLimits, max_body_bytes=SETTINGS.max_body_bytes)
