"""A real `bentoml serve` of the service set on a free loopback port, models built from the fixture."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import bentoml
import httpx
import numpy as np
import pytest
from PIL import Image

from models.contract import FRAMEWORKS
from models.data import scale_images
from services.runner import (
    REPO_ROOT,
    PreflightError,
    free_port,
    preflight,
    running_server,
    serve_command,
    serve_env,
    stop,
)

pytestmark = pytest.mark.slow

MAX_BODY_BYTES = 3 * 1024 * 1024  # small limits, so the over-limit requests stay small
MAX_IMAGE_PIXELS = 4_000_000
MAX_IMAGES = 128


@pytest.fixture(scope="module")
def server(built_models, tmp_path_factory):
    env = serve_env(device="cpu", base=built_models.env(), max_body_bytes=MAX_BODY_BYTES,
                    max_image_pixels=MAX_IMAGE_PIXELS, max_images=MAX_IMAGES)
    log_path = tmp_path_factory.mktemp("serve") / "bentoml-serve.log"
    with running_server(env, log_path=log_path, timeout_s=180) as url:
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def test_images(fixture_data) -> np.ndarray:
    return scale_images(fixture_data.test_images)  # (250, 28, 28) float32 in [0, 1]


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def assert_still_answers(http: httpx.Client) -> None:
    response = http.post("/predict", json={"framework": "keras",
                                           "images": [np.zeros((28, 28)).tolist()]})
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["predictions"][0]["digit"] <= 9


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_predict_with_bentoml_client(client, test_images, fixture_data, framework):
    answer = client.predict(framework=framework, images=test_images[:8].tolist())
    assert answer["framework"] == framework
    assert answer["tag"].startswith(f"mnist-{framework}:") and not answer["tag"].endswith("latest")
    assert answer["provider"] == "CPUExecutionProvider"
    predictions = answer["predictions"]
    assert len(predictions) == 8
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-3 for p in predictions)
    digits = [p["digit"] for p in predictions]
    assert sum(d == label for d, label in zip(digits, fixture_data.test_labels[:8], strict=True)) >= 6


def test_predict_all_answers_side_by_side(client, test_images):
    answer = client.predict(framework="all", images=test_images[:3].tolist())
    assert answer["framework"] == "all"
    assert list(answer["results"]) == list(FRAMEWORKS)
    for framework, result in answer["results"].items():
        assert result["framework"] == framework and len(result["predictions"]) == 3


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_served_accuracy_equals_parity_figure(http, test_images, fixture_data, framework):
    digits = []
    for start in range(0, len(test_images), MAX_IMAGES):
        response = http.post("/predict", json={
            "framework": framework, "images": test_images[start:start + MAX_IMAGES].tolist()})
        assert response.status_code == 200, response.text
        digits += [p["digit"] for p in response.json()["predictions"]]
    accuracy = float(np.mean(np.array(digits) == fixture_data.test_labels))
    models = {m["framework"]: m for m in http.get("/models").json()["models"]}
    assert models[framework]["test_images"] == len(test_images)
    assert accuracy == models[framework]["test_accuracy"]


def test_models_lists_each_model_with_its_figures(http):
    response = http.get("/models")
    assert response.status_code == 200
    models = response.json()["models"]
    assert [m["framework"] for m in models] == list(FRAMEWORKS)
    for model in models:
        assert model["tag"].startswith(model["name"] + ":")
        assert model["provider"] == "CPUExecutionProvider"
        assert model["batching"]["max_batch_size"] >= 1
        assert model["opset"] == 18 and len(model["sha256"]) == 64
        assert 0.5 < model["test_accuracy"] <= 1 and model["argmax_agreement"] >= 0.99


def upload_variants(digit: np.ndarray) -> dict[str, bytes]:
    """PNG/JPEG uploads of one fixture digit (uint8 (28, 28), light ink on black)."""
    on_white = Image.new("RGB", (160, 120), "white")
    on_white.paste(Image.fromarray(255 - digit).resize((84, 84)).convert("RGB"), (40, 20))
    return {
        "mnist_png": png(Image.fromarray(digit)),
        "white_rgb_160x120": png(on_white),
        "white_jpeg_45x45": png(Image.fromarray(255 - digit).resize((45, 45)), "JPEG"),
    }


@pytest.mark.parametrize("variant", ["mnist_png", "white_rgb_160x120", "white_jpeg_45x45"])
def test_predict_image_agrees_with_predict_on_the_raw_digit(http, fixture_data, variant):
    digits = fixture_data.test_images[:12]
    raw = http.post("/predict", json={"framework": "keras",
                                      "images": scale_images(digits).tolist()}).json()
    agree = 0
    for digit, expected in zip(digits, raw["predictions"], strict=True):
        response = http.post("/predict_image", data={"framework": "keras"},
                             files={"image": ("digit", upload_variants(digit)[variant])})
        assert response.status_code == 200, response.text
        agree += response.json()["predictions"][0]["digit"] == expected["digit"]
    # Models trained on 500 fixture digits: most, not all, uploads agree with the 28x28 original.
    assert agree >= 9, f"{variant}: {agree}/12 agree with /predict on the 28x28 original"


def test_predict_image_with_bentoml_client(client, fixture_data, tmp_path):
    path = tmp_path / "digit.png"
    path.write_bytes(upload_variants(fixture_data.test_images[0])["white_rgb_160x120"])
    answer = client.predict_image(image=path, framework="all")
    assert list(answer["results"]) == list(FRAMEWORKS)


ZEROS = np.zeros((28, 28)).tolist()
PREDICT_BAD = [
    ("wrong-shape", {"framework": "keras", "images": [[[0.0] * 27] * 28]}, 400, "shape"),
    ("flat-list", {"framework": "keras", "images": [0.0] * 784}, 400, "shape"),
    ("non-numeric", {"framework": "keras", "images": [[["x"] * 28] * 28]}, 400, "numbers"),
    ("out-of-range", {"framework": "keras", "images": [[[255] * 28] * 28]}, 400, "[0, 1]"),
    ("negative", {"framework": "keras", "images": [[[-1] * 28] * 28]}, 400, "[0, 1]"),
    ("empty", {"framework": "keras", "images": []}, 400, "empty"),
    ("too-many", {"framework": "keras", "images": [ZEROS] * (MAX_IMAGES + 1)}, 413, "maximum"),
    ("unknown-framework", {"framework": "jax", "images": [ZEROS]}, 400, "unknown framework"),
    ("missing-images", {"framework": "keras"}, 400, "validation"),
]


@pytest.mark.parametrize(("body", "status", "words"), [case[1:] for case in PREDICT_BAD],
                         ids=[case[0] for case in PREDICT_BAD])
def test_predict_bad_json_then_good(http, body, status, words):
    response = http.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert_still_answers(http)


@pytest.mark.parametrize(
    ("content", "content_type", "status", "words"),
    [
        (b'{"framework": "keras", "images": [', "application/json", 400, "validation"),
        (b'{"framework": "keras"}', "text/plain", 415, "application/json"),
        (b"x" * (MAX_BODY_BYTES + 1), "application/json", 413, "limit"),
    ],
    ids=["malformed-json", "wrong-content-type", "body-over-limit"],
)
def test_predict_bad_bodies_then_good(http, content, content_type, status, words):
    response = http.post("/predict", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert_still_answers(http)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_predict_non_finite_then_good(http, token):
    row = b"[" + b", ".join([token] + [b"0.0"] * 27) + b"]"
    image = b"[" + b", ".join([row] * 28) + b"]"
    body = b'{"framework": "pytorch", "images": [' + image + b"]}"
    response = http.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "finite" in response.json()["error"] or "NaN" in response.json()["error"]
    assert_still_answers(http)


IMAGE_BAD = [
    ("not-an-image", b"hello, this is text", {"framework": "keras"}, 415, "not an image"),
    ("truncated-png", png(Image.new("L", (64, 64), 255))[:70], {"framework": "keras"}, 400,
     "truncated"),
    ("pixel-bomb", png(Image.new("L", (2100, 2000))), {"framework": "keras"}, 413, "limit"),
    ("gif", png(Image.new("L", (40, 40)), "GIF"), {"framework": "keras"}, 415, "PNG"),
    ("blank", png(Image.new("L", (40, 40), 255)), {"framework": "keras"}, 422, "no digit"),
    ("unknown-framework", png(Image.new("L", (40, 40))), {"framework": "jax"}, 400, "unknown"),
]


@pytest.mark.parametrize(("data", "form", "status", "words"), [case[1:] for case in IMAGE_BAD],
                         ids=[case[0] for case in IMAGE_BAD])
def test_predict_image_bad_uploads_then_good(http, data, form, status, words):
    response = http.post("/predict_image", data=form, files={"image": ("upload", data)})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert_still_answers(http)


def test_predict_image_wrong_content_type_then_good(http):
    response = http.post("/predict_image", json={"framework": "keras", "image": "x"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]
    assert_still_answers(http)


def oip_body(images: np.ndarray, *, binary: bool) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "image", "shape": list(images.shape), "datatype": "FP32"}
    outputs = [{"name": "logits", "parameters": {"binary_data": binary}}]
    if not binary:
        tensor["data"] = images.ravel().tolist()
        return json.dumps({"id": "t1", "inputs": [tensor], "outputs": outputs}).encode(), {
            "content-type": "application/json"}
    data = images.astype("<f4").tobytes()
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps({"id": "t1", "inputs": [tensor], "outputs": outputs}).encode()
    return header + data, {"content-type": "application/octet-stream",
                           "inference-header-content-length": str(len(header))}


def oip_logits(response: httpx.Response) -> np.ndarray:
    length = response.headers.get("inference-header-content-length")
    if length is None:
        output = response.json()["outputs"][0]
        return np.asarray(output["data"], np.float32).reshape(output["shape"])
    header = json.loads(response.content[: int(length)])
    output = header["outputs"][0]
    assert output["parameters"]["binary_data_size"] == len(response.content) - int(length)
    return np.frombuffer(response.content[int(length):], "<f4").reshape(output["shape"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_oip_json_and_binary_infer_agree(http, test_images, framework):
    images = test_images[:5]
    answers = []
    for binary in (False, True):
        content, headers = oip_body(images, binary=binary)
        response = http.post(f"/v2/models/mnist-{framework}/infer", content=content,
                             headers=headers)
        assert response.status_code == 200, response.text
        answers.append(oip_logits(response))
    assert answers[0].shape == (5, 10)
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-5)
    served = http.post("/predict", json={"framework": framework, "images": images.tolist()})
    assert [p["digit"] for p in served.json()["predictions"]] == list(answers[0].argmax(1))


def test_oip_metadata_and_health(http):
    assert http.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200
    metadata = http.get("/v2/models/mnist-pytorch").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    version = metadata["versions"][0]
    assert http.get(f"/v2/models/mnist-pytorch/versions/{version}/ready").status_code == 200
    assert http.get("/v2/models/mnist-pytorch/versions/nope/ready").status_code == 404


OIP_BAD = [
    ("unknown-model", "mnist-jax", {"inputs": []}, 404, "unknown model"),
    ("shape-vs-data", "mnist-keras",
     {"inputs": [{"name": "image", "shape": [2, 28, 28], "datatype": "FP32",
                  "data": [0.0] * 784}]}, 400, "needs 1568"),
    ("fp64", "mnist-keras",
     {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP64",
                  "data": [0.0] * 784}]}, 400, "FP32"),
    ("out-of-range", "mnist-keras",
     {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP32",
                  "data": [2.0] * 784}]}, 400, "[0, 1]"),
    ("parameters-not-object", "mnist-keras",
     {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP32",
                  "data": [0.0] * 784, "parameters": "binary"}]}, 400, "JSON object"),
    ("string-pixels", "mnist-keras",
     {"inputs": [{"name": "image", "shape": [1, 28, 28], "datatype": "FP32",
                  "data": ["0.5"] * 784}]}, 400, "numbers"),
]


@pytest.mark.parametrize(("model", "body", "status", "words"), [case[1:] for case in OIP_BAD],
                         ids=[case[0] for case in OIP_BAD])
def test_oip_bad_requests_then_good(http, model, body, status, words):
    response = http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert_still_answers(http)


def test_oip_bad_binary_then_good(http):
    content, headers = oip_body(np.zeros((1, 28, 28), np.float32), binary=True)
    response = http.post("/v2/models/mnist-keras/infer", content=content[:-4], headers=headers)
    assert response.status_code == 400 and "binary_data_size" in response.json()["error"]
    headers["inference-header-content-length"] = "999999"
    response = http.post("/v2/models/mnist-keras/infer", content=content, headers=headers)
    assert response.status_code == 400 and "Inference-Header" in response.json()["error"]
    assert_still_answers(http)


def test_bentoml_health_and_metrics(http, test_images):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    for framework in FRAMEWORKS:
        http.post("/predict", json={"framework": framework, "images": test_images[:1].tolist()})
    http.post("/predict", json={"framework": "keras", "images": []})  # a 400, counted as one
    http.post("/v2/models/mnist-pytorch/infer", json={"inputs": []})  # so is an OIP one
    metrics = http.get("/metrics").text
    assert 'mnist_requests_total{endpoint="predict",framework="keras",status="400"}' in metrics
    assert 'mnist_requests_total{endpoint="oip",framework="pytorch",status="400"}' in metrics
    for framework in FRAMEWORKS:
        assert (f'mnist_requests_total{{endpoint="predict",framework="{framework}",status="200"}}'
                in metrics)
        assert (f'mnist_request_seconds_bucket{{endpoint="predict",framework="{framework}",'
                f'le="0.00025"}}') in metrics
        assert (f'mnist_inference_seconds_bucket{{framework="{framework}",'
                f'le="0.0001",provider="CPUExecutionProvider"}}') in metrics
    assert "bentoml_service_request_duration_seconds_bucket" in metrics


def serve_and_fail(env: dict[str, str]) -> tuple[int | None, str]:
    """Start bentoml serve expecting it to exit; return its exit code (None: it kept running)."""
    process = subprocess.Popen(serve_command(port=free_port()), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=90)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        stop(process)
        return None, process.stdout.read() if process.stdout else ""


def test_startup_fails_clearly_when_a_model_is_missing(tmp_path, built_models):
    code, output = serve_and_fail(
        serve_env(base={**built_models.env(), "BENTOML_HOME": str(tmp_path)}))
    assert code not in (0, None), output[-2000:]
    assert "mnist-" in output and "is not in the BentoML model store" in output
    assert "mnist-serving build" in output


def test_startup_fails_clearly_when_a_model_is_corrupt(tmp_path, built_models):
    home = tmp_path / "bentoml"
    shutil.copytree(built_models.bentoml_home / "models", home / "models")
    onnx_file = next((home / "models" / "mnist-pytorch").glob("*/model.onnx"))
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    code, output = serve_and_fail(serve_env(base={**built_models.env(), "BENTOML_HOME": str(home)}))
    assert code not in (0, None), output[-2000:]
    assert "mnist-pytorch" in output and "corrupt" in output and "mnist-serving build" in output


def test_preflight_lists_each_model_and_its_provider(built_models):
    lines = preflight(serve_env(device="cpu", base=built_models.env()))
    assert [line.split(":")[0] for line in lines] == list(FRAMEWORKS)
    assert all(line.endswith("on CPUExecutionProvider") for line in lines)


def test_preflight_names_a_missing_model(tmp_path, built_models):
    with pytest.raises(PreflightError, match="mnist-serving build"):
        preflight(serve_env(base={**built_models.env(), "BENTOML_HOME": str(tmp_path)}))


def test_serve_stops_every_worker_on_sigterm(built_models):
    """`mnist-serving serve` becomes bentoml serve, so a SIGTERM to it leaves no orphan worker."""
    import psutil

    port = free_port()
    env = {**built_models.env(), "MNIST_DEVICE": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "models", "serve", "--port", str(port)],
                               cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while httpx_ready(f"http://127.0.0.1:{port}") is False:
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.5)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len(workers) >= 4  # the front service and three model services
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert alive == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def httpx_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
