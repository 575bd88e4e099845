"""Export each trained model, prove parity on the test set, stamp metadata, register it.

    mnist-serving export --frameworks all --artifacts artifacts --data-dir ../shared/mnist
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from export.exporters import EXPORTERS, exporter_description
from export.onnx_files import (
    cpu_session,
    load_model,
    run_session,
    save_model,
    set_metadata,
    sha256_of,
)
from export.parity import ParityError, compare_logits, parity_failures
from models.contract import ONNX_FILENAME, OPSET
from models.data import MnistData, scale_images
from models.errors import PipelineError
from models.tables import human_bytes, markdown_table
from models.training import MissingDependencyError, framework_module, read_metrics

log = logging.getLogger(__name__)

PARITY_FILE = "parity.json"


class MissingArtifactError(PipelineError):
    """A trained model that export needs is not there; the message says what to run."""


def export_framework(
    framework: str, artifacts: Path, data: MnistData, *, register: bool = True
) -> dict:
    """Export ``artifacts/<framework>`` to ONNX, check parity, register; return parity.json."""
    folder = artifacts / framework
    metrics = read_metrics(artifacts, framework)
    if metrics is None:
        raise MissingArtifactError(
            f"no trained {framework} model (metrics.json and its native model) in {folder}: run "
            f"`mnist-serving train --frameworks {framework} --out {artifacts}` first"
        )
    module = framework_module(framework)
    model = module.load(folder)
    images = scale_images(data.test_images)  # (N, 28, 28) float32 in [0, 1]
    native_logits = module.predict(model, images)

    started = time.perf_counter()
    try:
        onnx_path = EXPORTERS[framework](model, folder / ONNX_FILENAME, opset=OPSET)
    except ModuleNotFoundError as error:
        raise MissingDependencyError(
            f"exporting {framework} needs the package {error.name!r}: run `pip install -e '.[train]'`"
        ) from error
    export_seconds = time.perf_counter() - started
    onnx_logits = run_session(cpu_session(onnx_path), images)
    figures = compare_logits(native_logits, onnx_logits, data.test_labels)

    metadata = {
        "framework": framework,
        "framework_version": metrics["framework_version"],
        "exporter": exporter_description(framework),
        "opset": OPSET,
        "native_test_accuracy": figures["native_test_accuracy"],
        "test_accuracy": figures["onnx_test_accuracy"],
        "test_images": figures["images"],
        "argmax_agreement": figures["argmax_agreement"],
        "max_abs_logit_diff": figures["max_abs_logit_diff"],
        "training_set": metrics.get("training_set", f"{metrics['train_images']} images"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_model(set_metadata(load_model(onnx_path), metadata), onnx_path)
    metadata["sha256"] = sha256_of(onnx_path)
    metadata["onnx_bytes"] = onnx_path.stat().st_size

    failures = parity_failures(figures)
    parity = {
        **figures,
        "framework": framework,
        "params": metrics["params"],
        "opset": OPSET,
        "onnx_sha256": metadata["sha256"],
        "onnx_bytes": metadata["onnx_bytes"],
        "export_seconds": round(export_seconds, 3),
        "passed": not failures,
        "failures": failures,
        "bentoml_tag": None,
    }
    if not failures and register:
        from export.store import register as register_model

        parity["bentoml_tag"] = register_model(framework, onnx_path, metadata)
    (folder / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
    if failures:
        raise ParityError(f"{framework}: parity failed: {'; '.join(failures)}; see {onnx_path}")
    log.info("%s: parity holds on %d images, tag %s", framework, figures["images"],
             parity["bentoml_tag"])
    return parity


def current_export(framework: str, artifacts: Path) -> dict | None:
    """parity.json of an export that still stands: the same file, registered, newer than the
    model it came from; None when the model must be exported again."""
    folder = artifacts / framework
    parity_path, onnx_path = folder / PARITY_FILE, folder / ONNX_FILENAME
    metrics = read_metrics(artifacts, framework)
    if metrics is None or not parity_path.is_file() or not onnx_path.is_file():
        return None
    parity = json.loads(parity_path.read_text())
    if not parity.get("passed") or not parity.get("bentoml_tag"):
        return None
    if (folder / "metrics.json").stat().st_mtime > parity_path.stat().st_mtime:
        return None  # trained again since
    if sha256_of(onnx_path) != parity["onnx_sha256"]:
        return None
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(parity["bentoml_tag"])
    except NotFound:
        return None  # another model store, or the version was deleted
    return parity if stored.info.metadata.get("sha256") == parity["onnx_sha256"] else None


def export_table(rows: list[dict]) -> str:
    headers = ["framework", "params", "native acc", "ONNX acc", "agreement", "max abs diff",
               "ONNX size", "export s", "tag"]
    return markdown_table(
        headers,
        [
            [
                row["framework"],
                f"{row['params']:,}",
                f"{row['native_test_accuracy']:.4f}",
                f"{row['onnx_test_accuracy']:.4f}",
                f"{row['images'] - row['argmax_disagreements']}/{row['images']}",
                f"{row['max_abs_logit_diff']:.1e}",
                human_bytes(row["onnx_bytes"]),
                f"{row['export_seconds']:.1f}",
                row["bentoml_tag"] or "-",
            ]
            for row in rows
        ],
    )
