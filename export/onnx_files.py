"""Helpers for .onnx files: contract names, dynamic batch, metadata, checks and ONNX Runtime runs.

Imports onnx and onnxruntime only, never a training framework.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx

from models.contract import INPUT_NAME, OUTPUT_NAME
from models.errors import PipelineError

BATCH_DIM = "batch"


class OnnxModelError(PipelineError):
    """An .onnx file is missing, corrupt or breaks the contract; the message names the file."""


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears in a graph: producers, consumers, inputs, outputs."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def apply_contract(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name the one input ``image`` and the one output ``logits``, with a ``batch`` first axis."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxModelError(
            f"expected one input and one output, got {[v.name for v in inputs]} and "
            f"{[v.name for v in graph.output]}"
        )
    rename_value(graph, inputs[0].name, INPUT_NAME)
    rename_value(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (inputs[0], graph.output[0]):
        first_axis = value.type.tensor_type.shape.dim[0]
        first_axis.Clear()
        first_axis.dim_param = BATCH_DIM
    return model


def set_metadata(model: onnx.ModelProto, metadata: dict[str, object]) -> onnx.ModelProto:
    """Write ``metadata`` into the model's ``metadata_props`` (values as strings), replacing keys."""
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))
    return model


def read_metadata(path: Path) -> dict[str, str]:
    model = load_model(path)
    return {prop.key: prop.value for prop in model.metadata_props}


def load_model(path: Path) -> onnx.ModelProto:
    """Load and fully check an .onnx file; a missing, truncated or corrupt one gets a clear error."""
    if not Path(path).is_file():
        raise OnnxModelError(f"{path}: no such ONNX file; run `mnist-serving export` first")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx raises DecodeError, ValidationError, ... for a bad file
        raise OnnxModelError(
            f"{path}: not a valid ONNX model ({type(error).__name__}: {str(error)[:200]}); "
            "export it again with `mnist-serving export`"
        ) from error
    return model


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Check and save as one self-contained file (no external-data sidecar)."""
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cpu_session(path: Path):
    """An ONNX Runtime session on the CPU provider, or OnnxModelError for a bad file."""
    import onnxruntime as ort

    load_model(path)  # a clear error for a corrupt file before ONNX Runtime's own
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise OnnxModelError(f"{path}: ONNX Runtime cannot load it ({error})") from error


def run_session(session, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, 10) float32 for images (N, 28, 28) float32, in batches of ``batch_size``."""
    batches = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch_size]})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, 10), np.float32)
