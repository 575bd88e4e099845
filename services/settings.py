"""Service settings, read once from the environment and validated at start-up.

    MNIST_DEVICE=cpu MNIST_MAX_LATENCY_MS=1000 bentoml serve services.service:MnistApi
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from models.contract import FRAMEWORKS, model_name

Device = Literal["auto", "cuda", "cpu"]
DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
BUILD_HINT = "run `mnist-serving build` (train, export and register the models)"


class SettingsError(ValueError):
    """An MNIST_* variable holds a value the service cannot use; the message names it."""


def _env_int(name: str, default: int, *, minimum: int = 1) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as error:
        raise SettingsError(f"{name}={text!r} is not an integer") from error
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _model_versions() -> dict[str, str]:
    # MNIST_KERAS_VERSION=6mi7k4xl56encax4 pins one model; the default serves the newest export.
    return {fw: os.environ.get(f"MNIST_{fw.upper()}_VERSION", "").strip() or "latest"
            for fw in FRAMEWORKS}


@dataclass(frozen=True)
class Settings:
    device: Device = "auto"  # auto: CUDA when ONNX Runtime offers it, else CPU with a warning
    versions: dict[str, str] = field(default_factory=_model_versions)  # framework -> version
    max_images: int = 128  # per /predict request; one full adaptive batch
    max_body_bytes: int = 8 * 1024 * 1024  # 128 images of JSON floats is ~2.2 MB; photos up to ~8 MB
    max_image_pixels: int = 25_000_000  # decoded size limit of an upload (a 24 MP photo fits)
    max_batch_size: int = 128  # images per adaptive batch in a model service
    max_latency_ms: int = 1000  # a queued request older than this is shed with a 503
    ort_threads: int = 1  # intra-op threads per session: three model services share the cores
    model_workers: int = 1  # processes per model service
    api_workers: int = 1  # processes of the front service

    def tag(self, framework: str) -> str:
        return f"{model_name(framework)}:{self.versions[framework]}"

    def batching(self) -> dict[str, int]:
        return {"max_batch_size": self.max_batch_size, "max_latency_ms": self.max_latency_ms}


def load_settings() -> Settings:
    """Read every MNIST_* variable; raise ``SettingsError`` naming the first bad one."""
    device = os.environ.get("MNIST_DEVICE", "auto").strip().lower() or "auto"
    if device not in DEVICES:
        raise SettingsError(f"MNIST_DEVICE={device!r}: expected one of {', '.join(DEVICES)}")
    return Settings(
        device=device,  # type: ignore[arg-type]
        max_images=_env_int("MNIST_MAX_IMAGES", Settings.max_images),
        max_body_bytes=_env_int("MNIST_MAX_BODY_BYTES", Settings.max_body_bytes, minimum=1024),
        max_image_pixels=_env_int("MNIST_MAX_IMAGE_PIXELS", Settings.max_image_pixels,
                                  minimum=28 * 28),
        max_batch_size=_env_int("MNIST_MAX_BATCH_SIZE", Settings.max_batch_size),
        max_latency_ms=_env_int("MNIST_MAX_LATENCY_MS", Settings.max_latency_ms),
        ort_threads=_env_int("MNIST_ORT_THREADS", Settings.ort_threads),
        model_workers=_env_int("MNIST_MODEL_WORKERS", Settings.model_workers),
        api_workers=_env_int("MNIST_API_WORKERS", Settings.api_workers),
    )
