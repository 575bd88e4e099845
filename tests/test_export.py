"""Export: the ONNX contract, proven parity, metadata, and the BentoML model store round trip."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.onnx_files import OnnxModelError, cpu_session, load_model, read_metadata, run_session
from export.parity import compare_logits, parity_failures
from export.pipeline import MissingArtifactError, export_framework
from models.contract import (
    FRAMEWORKS,
    INPUT_NAME,
    ONNX_FILENAME,
    OPSET,
    OUTPUT_NAME,
    STORE_METADATA_KEYS,
)
from models.data import scale_images
from tests.conftest import run_cli


def onnx_path(built_models, framework):
    return built_models.artifacts / framework / ONNX_FILENAME


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_exported_model_follows_the_contract(built_models, fixture_data, framework):
    session = ort.InferenceSession(
        str(onnx_path(built_models, framework)), providers=["CPUExecutionProvider"]
    )
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    assert (model_input.name, model_input.type) == (INPUT_NAME, "tensor(float)")
    assert (model_output.name, model_output.type) == (OUTPUT_NAME, "tensor(float)")
    assert model_input.shape == ["batch", 28, 28] and model_output.shape == ["batch", 10]
    for batch_size in (1, 7):  # the batch axis is dynamic, not fixed to the export example's
        images = scale_images(fixture_data.test_images[:batch_size])
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
        assert logits.shape == (batch_size, 10) and logits.dtype == np.float32


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_exported_file_is_one_checked_file_at_the_shared_opset(built_models, framework):
    path = onnx_path(built_models, framework)
    model = load_model(path)  # runs onnx.checker with full_check
    assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [
        OPSET
    ]
    assert sorted(p.name for p in path.parent.glob("*.onnx*")) == [ONNX_FILENAME]  # no sidecar
    assert all(
        init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer
    )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_parity_holds_on_the_test_digits(built_models, fixture_data, framework):
    parity = json.loads((built_models.artifacts / framework / "parity.json").read_text())
    assert parity["framework"] == framework and parity["passed"] is True
    assert parity["images"] == 250
    assert parity["argmax_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert parity["onnx_test_accuracy"] == parity["native_test_accuracy"]
    assert parity["opset"] == OPSET and parity["bentoml_tag"].startswith(f"mnist-{framework}:")
    # and the file really gives that accuracy
    logits = run_session(cpu_session(onnx_path(built_models, framework)),
                         scale_images(fixture_data.test_images))
    assert np.mean(logits.argmax(1) == fixture_data.test_labels) == parity["onnx_test_accuracy"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_metadata_says_how_the_model_was_made(built_models, framework):
    metadata = read_metadata(onnx_path(built_models, framework))
    for key in ("framework", "framework_version", "exporter", "opset", "training_set",
                "test_accuracy", "created"):
        assert metadata[key], key
    assert metadata["framework"] == framework and metadata["opset"] == str(OPSET)
    assert "500 training images" in metadata["training_set"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_store_round_trip_gives_the_same_logits(built_models, fixture_data, framework):
    import bentoml

    parity = json.loads((built_models.artifacts / framework / "parity.json").read_text())
    stored = bentoml.models.get(parity["bentoml_tag"])
    assert stored.info.labels["framework"] == framework
    assert set(STORE_METADATA_KEYS) <= set(stored.info.metadata)
    assert stored.info.metadata["sha256"] == parity["onnx_sha256"]
    images = scale_images(fixture_data.test_images[:32])
    from_store = run_session(cpu_session(stored.path_of(ONNX_FILENAME)), images)
    from_file = run_session(cpu_session(onnx_path(built_models, framework)), images)
    np.testing.assert_array_equal(from_store, from_file)
    assert str(bentoml.models.get(f"mnist-{framework}:latest").tag) == parity["bentoml_tag"]


def test_parity_check_catches_a_changed_digit_and_a_large_difference():
    labels = np.array([0, 1, 2])
    native = np.eye(3, 10, dtype=np.float32) * 5
    assert parity_failures(compare_logits(native, native.copy(), labels)) == []
    drifted = native + np.float32(1e-3)
    assert parity_failures(compare_logits(native, drifted, labels)) == ["max |logit diff| 1.00e-03 > 1e-04"]
    flipped = native.copy()
    flipped[2] = np.eye(1, 10, 7) * 5
    failures = parity_failures(compare_logits(native, flipped, labels))
    assert "1 images change digit" in failures and any("accuracy" in f for f in failures)


def test_truncated_onnx_file_gets_a_clear_error(built_models, tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(onnx_path(built_models, "keras").read_bytes()[:5000])
    with pytest.raises(OnnxModelError, match=r"model.onnx: not a valid ONNX model.*mnist-serving export"):
        cpu_session(broken)


def test_missing_onnx_file_says_to_export(tmp_path):
    with pytest.raises(OnnxModelError, match="run `mnist-serving export`"):
        cpu_session(tmp_path / "model.onnx")


def test_export_without_training_says_to_train_first(tmp_path, fixture_data):
    with pytest.raises(MissingArtifactError, match="run `mnist-serving train --frameworks keras"):
        export_framework("keras", tmp_path, fixture_data)


def test_export_cli_names_the_untrained_framework(tmp_path):
    result = run_cli("export", "--frameworks", "pytorch", "--artifacts", str(tmp_path),
                     "--data-dir", "tests/fixtures/mnist")
    assert result.returncode == 2
    assert "no trained pytorch model" in result.stderr and "mnist-serving train" in result.stderr


def test_compare_measures_every_framework_and_writes_a_report(built_models, tmp_path):
    report = tmp_path / "comparison.md"
    result = run_cli("compare", "--artifacts", str(built_models.artifacts), "--data-dir",
                     "tests/fixtures/mnist", "--rounds", "1", "--report", str(report),
                     env=built_models.env())
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    for framework in FRAMEWORKS:
        row = next(line for line in text.splitlines() if line.startswith(f"| {framework} "))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 13
        assert all(float(cells[i]) > 0 for i in (7, 8, 10, 11))  # the four latency medians


def test_build_reuses_what_stands_and_export_registers_a_new_version(built_models):
    import bentoml

    def keras_file(name: str) -> dict:
        return json.loads((built_models.artifacts / "keras" / name).read_text())

    before, old_tag = keras_file("metrics.json"), keras_file("parity.json")["bentoml_tag"]
    common = ["--frameworks", "keras", "--artifacts", str(built_models.artifacts),
              "--data-dir", "tests/fixtures/mnist"]
    result = run_cli("build", *common, env=built_models.env())
    assert result.returncode == 0, result.stderr
    assert keras_file("metrics.json")["created"] == before["created"]  # not trained again
    assert keras_file("parity.json")["bentoml_tag"] == old_tag  # not exported again
    result = run_cli("export", *common, env=built_models.env())
    assert result.returncode == 0, result.stderr
    new_tag = keras_file("parity.json")["bentoml_tag"]
    assert new_tag != old_tag and str(bentoml.models.get("mnist-keras:latest").tag) == new_tag


def test_export_names_a_missing_native_model(built_models, tmp_path, fixture_data):
    import shutil

    shutil.copytree(built_models.artifacts / "pytorch", tmp_path / "pytorch")
    (tmp_path / "pytorch" / "model.pt").unlink()
    with pytest.raises(MissingArtifactError, match="no trained pytorch model.*mnist-serving train"):
        export_framework("pytorch", tmp_path, fixture_data)
