"""Register exported .onnx files in BentoML's model store (BENTOML_HOME, default ~/bentoml)."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.contract import ONNX_FILENAME, model_name


def register(framework: str, onnx_path: Path, metadata: dict) -> str:
    """Save ``onnx_path`` as a new version of ``mnist-<framework>``; return the tag as text."""
    import bentoml

    with bentoml.models.create(
        model_name(framework),
        labels={"framework": framework, "project": "mnist-serving"},
        metadata=metadata,
    ) as model:
        shutil.copyfile(onnx_path, model.path_of(ONNX_FILENAME))
    return str(model.tag)

