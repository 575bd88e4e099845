"""One exporter per framework: a trained model in, one self-contained contract .onnx file out.

Each makes the batch axis dynamic, names the input ``image`` and output ``logits``, and runs the
full ONNX checker; layout changes (NHWC, NCHW) are inside the models already.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx

from export.onnx_files import apply_contract, save_model
from models.contract import IMAGE_SHAPE, INPUT_NAME, OPSET, OUTPUT_NAME


def tf_function_to_onnx(call: Callable, path: Path, *, opset: int) -> Path:
    """Convert ``call`` (images -> logits) through a fresh ``tf.function`` with a fixed signature.

    A fresh wrapper matters twice: tf2onnx's ``from_keras`` fails on Keras 3 models
    (onnx/tensorflow-onnx#2448), and a function that has run under a GradientTape would export
    the intermediate tensors it kept for the backward pass as extra outputs.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=signature)
    def serve(image):
        return call(image)

    model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    return save_model(apply_contract(model), path)


def export_tensorflow(model, path: Path, *, opset: int = OPSET) -> Path:
    """A low-level ``tf.Module`` (trained or restored from its SavedModel) to ONNX."""
    return tf_function_to_onnx(model.logits, path, opset=opset)


def export_keras(model, path: Path, *, opset: int = OPSET) -> Path:
    """A Keras 3 model to ONNX, with dropout off."""
    return tf_function_to_onnx(lambda image: model(image, training=False), path, opset=opset)


def export_pytorch(model, path: Path, *, opset: int = OPSET) -> Path:
    """An ``nn.Module`` to ONNX with the dynamo exporter, weights inside the one file."""
    import torch

    model.eval()
    example = torch.zeros((2, *IMAGE_SHAPE), dtype=torch.float32)  # (B, 28, 28)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        external_data=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: torch.export.Dim("batch")}},  # else fixed to 2
        opset_version=opset,
        verbose=False,
    )
    return save_model(apply_contract(program.model_proto), path)


EXPORTERS: dict[str, Callable] = {
    "tensorflow": export_tensorflow,
    "keras": export_keras,
    "pytorch": export_pytorch,
}


def exporter_description(framework: str) -> str:
    """Which converter made a framework's file, with its version, for the metadata."""
    from importlib.metadata import version

    if framework == "pytorch":
        return f"torch.onnx (dynamo) {version('torch')}"
    return f"tf2onnx {version('tf2onnx')}"


def onnx_version() -> str:
    return onnx.__version__
