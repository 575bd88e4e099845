"""The `/predict` wire format as the load tests see it: payloads, request bodies, answer checks.

Imports nothing heavy and nothing that patches sockets, so the locustfile, the baseline server, the
runner and the tests share it. If the service's answer changes shape, `parse_predictions` is the
one place to adjust.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.contract import IMAGE_SHAPE, NUM_CLASSES

log = logging.getLogger(__name__)

PREDICT_PATH = "/predict"
PIXEL_DECIMALS = 4  # pixels are k/255; 4 decimals keep every argmax and shrink bodies about 3x
WRONG_DIGIT = "wrong digit"  # the failure message prefix that the report counts as a wrong answer
UNANSWERED = "no answer by the end of the run"  # an open-loop arrival never answered (the prefix)


def payload_images(images: np.ndarray) -> np.ndarray:
    """The float32 pixels exactly as sent: uint8 (N, 28, 28) -> (N, 28, 28) rounded to [0, 1]."""
    return np.round(images.astype(np.float32) / np.float32(255.0), PIXEL_DECIMALS)


def predict_body(framework: str, images: np.ndarray) -> bytes:
    """The JSON body of a `/predict` call for uint8 images (N, 28, 28), encoded once up front."""
    pixels = payload_images(images).tolist()
    return json.dumps({"framework": framework, "images": pixels}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Payloads:
    labels: np.ndarray  # (N,) int64
    single: list[bytes]  # one /predict body per image
    batches: list[tuple[bytes, np.ndarray]]  # (body, labels) of batch_size images each


@functools.cache
def load_payloads(
    framework: str, payloads: str, mnist_dir: str, limit: int, batch_size: int, seed: int
) -> Payloads:
    """Read and encode the payloads once per process; every user of the process shares them.

    ``payloads``: an .npz of images (N, 28, 28) uint8 and labels (N,), as the runner writes; else
    the MNIST test images that `models.data.load_mnist` finds from ``mnist_dir``.
    """
    if payloads:
        with np.load(payloads) as archive:
            images, labels = archive["images"], archive["labels"]
    else:
        from models.data import MnistDataError, load_mnist

        try:  # --mnist-dir, else $MNIST_DATA_DIR, else the user cache; never a download
            data = load_mnist(mnist_dir or None, download=False)
        except MnistDataError as error:
            raise MnistDataError(f"no payloads: {error} (in Locust: --payloads FILE.npz, a load "
                                 "test's payloads.npz, or --mnist-dir FOLDER)") from error
        images, labels = data.test_images, data.test_labels
    images, labels = images[:limit], labels[:limit].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    count = max(1, len(order) // batch_size)  # fewer images than a batch: repeat them
    chunks = np.resize(order, (count, batch_size))  # (batches, batch_size) image indices
    batches = [(predict_body(framework, images[chunk]), labels[chunk]) for chunk in chunks]
    single = [predict_body(framework, images[i : i + 1]) for i in range(len(labels))]
    log.info("payloads: %d images, %d batches of about %d", len(labels), len(batches), batch_size)
    return Payloads(labels, single, batches)


def parse_predictions(answer: Any) -> list[dict]:
    """The per-image predictions of a `/predict` answer, each a dict with `digit` and
    `probabilities`. Accepts `{"predictions": [...]}` (the documented shape) or a bare list."""
    predictions = answer.get("predictions") if isinstance(answer, dict) else answer
    if not isinstance(predictions, list):
        raise ValueError("answer holds no list of predictions")
    return predictions


@dataclass(frozen=True)
class Verdict:
    """What one answer was worth: `error` is None when the answer is right in every respect."""

    error: str | None
    images: int  # images in the request
    correct: int  # images whose digit matched the label


def check_answer(status: int, content: bytes | str | None, labels: np.ndarray) -> Verdict:
    """Validate one `/predict` answer: HTTP status, JSON shape, and each digit against its label.

    A well-formed answer with a wrong digit gets an error starting with WRONG_DIGIT, so Locust
    counts it as a failure and the report can tell wrong answers from broken ones.
    """
    images = len(labels)
    if status != 200:
        return Verdict(f"HTTP {status}: {_snippet(content)}", images, 0)
    try:
        predictions = parse_predictions(json.loads(content or b""))
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        return Verdict(f"bad answer: {error}", images, 0)
    if len(predictions) != images:
        return Verdict(f"bad answer: {len(predictions)} predictions for {images} images", images, 0)
    digits = []
    for prediction in predictions:
        digit = prediction.get("digit") if isinstance(prediction, dict) else None
        probabilities = prediction.get("probabilities") if isinstance(prediction, dict) else None
        if not isinstance(digit, int) or not 0 <= digit < NUM_CLASSES:
            return Verdict(f"bad answer: digit {digit!r} is not 0-9", images, 0)
        if not isinstance(probabilities, list) or len(probabilities) != NUM_CLASSES:
            return Verdict(f"bad answer: probabilities are not {NUM_CLASSES} numbers", images, 0)
        digits.append(digit)
    wrong = np.flatnonzero(np.asarray(digits) != labels)
    if wrong.size:
        first = int(wrong[0])
        return Verdict(
            f"{WRONG_DIGIT}: {wrong.size} of {images} (got {digits[first]}, label {labels[first]})",
            images,
            images - int(wrong.size),
        )
    return Verdict(None, images, images)


def check_images(images: Any, *, max_images: int) -> np.ndarray:
    """The request's images as float32 (N, 28, 28) in [0, 1], or ValueError saying what is wrong."""
    try:
        array = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"images must be numbers: {error}") from error
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE or not 1 <= len(array) <= max_images:
        raise ValueError(
            f"images must be a list of 1 to {max_images} arrays of {IMAGE_SHAPE[0]}x"
            f"{IMAGE_SHAPE[1]}, got shape {array.shape}"
        )
    if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
        raise ValueError("pixels must be finite and in [0, 1]")
    return array


def _snippet(content: bytes | str | None, limit: int = 120) -> str:
    if content is None:
        return ""
    text = content.decode(errors="replace") if isinstance(content, bytes) else content
    return text[:limit]
