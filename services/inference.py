"""One ONNX Runtime session per stored model, on the execution provider MNIST_DEVICE asks for.

Imports onnxruntime and numpy only. ONNX Runtime's CUDA package falls back to CPU silently (it
only logs), so the provider that is really active is read back from the session and checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bentoml.exceptions import BentoMLException

from models.contract import INPUT_NAME, NUM_CLASSES, ONNX_FILENAME, OUTPUT_NAME
from services.settings import BUILD_HINT

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelLoadError(BentoMLException):
    """A configured model is missing, corrupt or breaks the contract; the message names it."""


class DeviceError(BentoMLException):
    """MNIST_DEVICE=cuda, but ONNX Runtime cannot run on CUDA here."""


def requested_providers(device: str, available: list[str]) -> list[str]:
    """The providers to ask ONNX Runtime for: ``cpu`` never asks for CUDA, ``cuda`` insists."""
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            f"MNIST_DEVICE=cuda, but this ONNX Runtime offers only {', '.join(available)}: "
            "install onnxruntime-gpu (the gpu extra) on a machine with an NVIDIA GPU, "
            "or set MNIST_DEVICE=auto or cpu"
        )
    log.warning("MNIST_DEVICE=auto: ONNX Runtime offers no CUDA provider (%s); running on CPU",
                ", ".join(available))
    return [CPU]


@dataclass
class LoadedModel:
    framework: str
    tag: str  # name:version, the version resolved (never "latest")
    path: Path
    metadata: dict
    session: object  # onnxruntime.InferenceSession
    provider: str  # the execution provider that is really active

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) float32 in [0, 1] -> (N, 10) float32 logits."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def stored_model(framework: str, tag: str):
    """The ``bentoml.Model`` behind ``tag``, or ``ModelLoadError`` saying what to run."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except NotFound as error:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise ModelLoadError(
            f"{framework}: model {tag} is not in the BentoML model store {home}: {BUILD_HINT}"
        ) from error


def verified_onnx_path(framework: str, stored) -> Path:
    """The model.onnx of a stored model, checked against the sha256 that export recorded."""
    tag = str(stored.tag)
    path = Path(stored.path_of(ONNX_FILENAME))
    if not path.is_file():
        raise ModelLoadError(f"{framework}: model {tag} has no {ONNX_FILENAME} in {path.parent}: "
                             f"{BUILD_HINT}")
    expected = stored.info.metadata.get("sha256")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected and actual != expected:
        raise ModelLoadError(f"{framework}: model {tag} is corrupt: {path} has sha256 "
                             f"{actual[:12]}…, the store recorded {expected[:12]}…: {BUILD_HINT}")
    return path


def load_model(framework: str, stored, *, device: str, threads: int) -> LoadedModel:
    """Open ``stored``'s model.onnx after checking its checksum and the contract's names."""
    import onnxruntime as ort

    tag = str(stored.tag)
    path = verified_onnx_path(framework, stored)
    metadata = dict(stored.info.metadata)
    providers = requested_providers(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the provider check below replaces its warnings
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as error:  # ONNX Runtime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"{framework}: model {tag} could not be loaded by ONNX Runtime "
                             f"({error}): {BUILD_HINT}") from error
    active = session.get_providers()[0]
    if device == "cuda" and active != CUDA:
        raise DeviceError(f"MNIST_DEVICE=cuda, but {tag} runs on {active}: CUDA did not "
                          "initialise (driver, CUDA or cuDNN libraries); see ONNX Runtime's log")
    if CUDA in providers and active != CUDA:
        log.warning("%s: CUDA was requested but ONNX Runtime fell back to %s", tag, active)

    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise ModelLoadError(f"{framework}: model {tag} breaks the contract: inputs "
                             f"{[i.name for i in inputs]}, outputs {[o.name for o in outputs]}, "
                             f"expected [{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]: {BUILD_HINT}")
    model = LoadedModel(framework, tag, path, metadata, session, active)
    probe = model.logits(np.zeros((1, 28, 28), np.float32))
    if probe.shape != (1, NUM_CLASSES):
        raise ModelLoadError(f"{framework}: model {tag} returns logits of shape {probe.shape}, "
                             f"expected (1, {NUM_CLASSES}): {BUILD_HINT}")
    log.info("%s: loaded %s on %s", framework, tag, active)
    return model
