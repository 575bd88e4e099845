"""The one parity check: ONNX Runtime's logits against the framework's own, on the same images."""

from __future__ import annotations

import numpy as np

from models.errors import PipelineError

MAX_ABS_LOGIT_DIFF = 1e-4  # float32 reorderings stay near 1e-5; a wrong layout or op is >> 1e-2


class ParityError(PipelineError):
    """The exported model does not compute what the framework's model computes."""


def compare_logits(native: np.ndarray, exported: np.ndarray, labels: np.ndarray) -> dict:
    """Agreement figures of two (N, 10) logit arrays on the same images, reported in full."""
    native_digits = native.argmax(axis=1)
    exported_digits = exported.argmax(axis=1)
    return {
        "images": int(len(labels)),
        "argmax_agreement": float(np.mean(native_digits == exported_digits)),
        "argmax_disagreements": int(np.sum(native_digits != exported_digits)),
        "max_abs_logit_diff": float(np.max(np.abs(native - exported))) if len(labels) else 0.0,
        "native_test_accuracy": float(np.mean(native_digits == labels)),
        "onnx_test_accuracy": float(np.mean(exported_digits == labels)),
    }


def parity_failures(figures: dict, *, tolerance: float = MAX_ABS_LOGIT_DIFF) -> list[str]:
    """What breaks parity, in words; empty when the exported model matches."""
    failures = []
    if figures["argmax_disagreements"]:
        failures.append(f"{figures['argmax_disagreements']} images change digit")
    if figures["max_abs_logit_diff"] > tolerance:
        failures.append(f"max |logit diff| {figures['max_abs_logit_diff']:.2e} > {tolerance:.0e}")
    if figures["native_test_accuracy"] != figures["onnx_test_accuracy"]:
        failures.append(
            f"accuracy {figures['onnx_test_accuracy']:.4f} != native "
            f"{figures['native_test_accuracy']:.4f}"
        )
    return failures
