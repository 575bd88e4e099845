"""The one contract shared by training, export, service and load tests; imports nothing heavy.

Every exported model takes the same tensor and returns the same tensor, whichever framework
trained it, so the service and the load tests never branch on the framework.
"""

from __future__ import annotations

FRAMEWORKS: tuple[str, ...] = ("tensorflow", "keras", "pytorch")  # the framework keys, in report order

INPUT_NAME = "image"  # (batch, 28, 28) float32, pixels scaled to [0, 1]
OUTPUT_NAME = "logits"  # (batch, 10) float32, raw scores before softmax
IMAGE_HEIGHT = 28
IMAGE_WIDTH = 28
IMAGE_SHAPE: tuple[int, int] = (IMAGE_HEIGHT, IMAGE_WIDTH)
NUM_CLASSES = 10
PIXEL_MIN = 0.0
PIXEL_MAX = 1.0
INPUT_DTYPE = "float32"
OUTPUT_DTYPE = "float32"

OPSET = 18  # the newest opset tf2onnx 1.17 supports, and torch.onnx's dynamo exporter's native one
ONNX_FILENAME = "model.onnx"  # the file inside each BentoML model folder

PARAMS = 34_826  # trainable parameters of the shared architecture, in every framework


def model_name(framework: str) -> str:
    """The BentoML model-store name of a framework's model, e.g. ``mnist-keras``."""
    check_framework(framework)
    return f"mnist-{framework}"


def check_framework(framework: str) -> str:
    """Return ``framework`` if it is a known key, else raise ``ValueError`` listing the keys."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    return framework


MODEL_FRAMEWORKS: dict[str, str] = {model_name(framework): framework for framework in FRAMEWORKS}


def parse_frameworks(text: str) -> list[str]:
    """Parse ``all`` or a comma-separated list such as ``keras,pytorch`` into framework keys."""
    if text.strip() == "all":
        return list(FRAMEWORKS)
    frameworks = [part.strip() for part in text.split(",") if part.strip()]
    if not frameworks:
        raise ValueError(f"no framework given: expected 'all' or a list of {', '.join(FRAMEWORKS)}")
    for framework in frameworks:
        check_framework(framework)
    return list(dict.fromkeys(frameworks))


# Metadata that export writes on every model in the BentoML store (labels carry "framework").
STORE_METADATA_KEYS: tuple[str, ...] = (
    "framework",  # tensorflow | keras | pytorch
    "framework_version",  # of the framework that trained it
    "exporter",  # e.g. "tf2onnx 1.17.0" or "torch.onnx (dynamo) 2.13.0"
    "opset",  # int
    "sha256",  # of model.onnx
    "onnx_bytes",  # int
    "native_test_accuracy",  # float, the framework's own predict on the test set
    "test_accuracy",  # float, ONNX Runtime on the same test set
    "test_images",  # int
    "argmax_agreement",  # float in [0, 1], native vs ONNX Runtime
    "max_abs_logit_diff",  # float
    "training_set",  # which images it was trained on
    "created",  # ISO time of the export
)
