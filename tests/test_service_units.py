"""Fast tests of the service's pieces without a server: preprocessing, validation, OIP parsing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from models.data import scale_images
from services.inference import CPU, CUDA, DeviceError, requested_providers
from services.limits import accepted_types
from services.oip import ProtocolError, input_tensor, split_body, wants_binary
from services.preprocess import InputError, decode_image, images_array, mnist_input
from services.settings import SettingsError, load_settings

MAX_PIXELS = 4_000_000


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits(fixture_data) -> np.ndarray:
    return fixture_data.test_images[:40]  # (40, 28, 28) uint8, light ink on black


def test_images_array_accepts_the_contract():
    images = images_array(np.zeros((3, 28, 28)).tolist(), max_images=4)
    assert images.shape == (3, 28, 28) and images.dtype == np.float32


@pytest.mark.parametrize(
    ("images", "status", "words"),
    [
        ([], 400, "empty"),
        ([[[0.0] * 27] * 28], 400, "(1, 28, 27)"),
        ([[0.0] * 28] * 28, 400, "(28, 28)"),
        ([[["a"] * 28] * 28], 400, "numbers"),
        ([[[None] * 28] * 28], 400, "numbers"),
        ([[[0.0] * 28] * 27 + [[0.0] * 27]], 400, "28x28"),
        ([[[float("nan")] * 28] * 28], 400, "NaN"),
        ([[[float("inf")] * 28] * 28], 400, "infinite"),
        ([[[255.0] * 28] * 28], 400, "divide"),
        ([[[-0.5] * 28] * 28], 400, "[0, 1]"),
        ([[[0.0] * 28] * 28] * 5, 413, "maximum is 4"),
        ("images", 400, "a list"),
    ],
)
def test_images_array_names_what_is_wrong(images, status, words):
    with pytest.raises(InputError) as caught:
        images_array(images, max_images=4)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_mnist_input_reproduces_mnist_digits(digits):
    rebuilt = np.stack([mnist_input(Image.fromarray(d)) for d in digits])
    original = scale_images(digits)
    # MNIST digits are already centred by mass: rebuilding one moves it by at most a pixel.
    assert np.abs(rebuilt - original).mean() < 0.08


@pytest.mark.parametrize("variant", ["white_rgb_large", "jpeg_small", "transparent_drawing"])
def test_mnist_input_handles_real_uploads(digits, variant):
    original = scale_images(digits)
    rebuilt = []
    for digit in digits:
        if variant == "white_rgb_large":  # dark ink on white, RGB, off centre, 200x150
            image = Image.new("RGB", (200, 150), "white")
            image.paste(Image.fromarray(255 - digit).resize((90, 90)).convert("RGB"), (30, 20))
            data = png_bytes(image)
        elif variant == "jpeg_small":
            data = png_bytes(Image.fromarray(255 - digit).resize((20, 20)), "JPEG")
        else:  # black strokes on a transparent canvas
            image = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
            image.putalpha(Image.fromarray(digit).resize((56, 56)))
            data = png_bytes(image)
        rebuilt.append(mnist_input(decode_image(data, max_pixels=MAX_PIXELS)))
    difference = np.abs(np.stack(rebuilt) - original).mean()
    assert difference < 0.1, f"{variant}: mean |difference| {difference:.3f}"


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"this is not an image", 415, "not an image"),
        (png_bytes(Image.new("L", (64, 64)))[:60], 400, "truncated"),
        (png_bytes(Image.new("L", (2100, 2000))), 413, "limit"),
        (png_bytes(Image.new("L", (64, 64)), "GIF"), 415, "GIF"),
    ],
    ids=["empty", "text", "truncated", "pixel-bomb", "gif"],
)
def test_decode_image_refuses_bad_uploads(data, status, words):
    with pytest.raises(InputError) as caught:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_blank_image_has_no_digit():
    with pytest.raises(InputError, match="no digit"):
        mnist_input(Image.new("L", (50, 50), 255))


def oip_request(shape, data=None, datatype="FP32", binary: bytes | None = None):
    tensor = {"name": "image", "shape": shape, "datatype": datatype}
    if binary is None:
        tensor["data"] = data
    else:
        tensor["parameters"] = {"binary_data_size": len(binary)}
    return {"inputs": [tensor]}


def test_oip_json_and_binary_tensors_agree():
    images = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    from_json = input_tensor(oip_request([2, 28, 28], images.ravel().tolist()), b"", 8)
    binary = images.astype("<f4").tobytes()
    header = json.dumps(oip_request([2, 28, 28], binary=binary)).encode()
    parsed, tail = split_body(header + binary, str(len(header)))
    assert np.array_equal(from_json, images)
    assert np.array_equal(input_tensor(parsed, tail, 8), images)


@pytest.mark.parametrize(
    ("request_body", "tail", "words"),
    [
        (oip_request([2, 28, 28], [0.0] * 784), b"", "needs 1568"),
        (oip_request([1, 28, 28], [0.0] * 784, datatype="FP64"), b"", "FP32"),
        (oip_request([1, 28, 28], [0] * 784, datatype="INT32"), b"", "FP32"),
        (oip_request([1, 784], [0.0] * 784), b"", "[N, 28, 28]"),
        (oip_request([1, 28, 28], ["x"] * 784), b"", "numbers"),
        (oip_request([1, 28, 28], ["0.5"] * 784), b"", "numbers"),
        (oip_request([1, 28, 28], [True] * 784), b"", "numbers"),
        ({"inputs": [{**oip_request([1, 28, 28], [0.0] * 784)["inputs"][0], "parameters": "x"}]},
         b"", "parameters must be a JSON object"),
        (oip_request([1, 28, 28], binary=b"\0" * 100), b"\0" * 100, "binary_data_size"),
        ({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32"}]}, b"",
         "unknown input"),
        ({"inputs": []}, b"", "one tensor"),
    ],
)
def test_oip_tensors_that_break_the_contract(request_body, tail, words):
    with pytest.raises(ProtocolError, match=None) as caught:
        input_tensor(request_body, tail, 8)
    assert words in str(caught.value)


def test_oip_binary_output_is_requested_per_output_or_per_request():
    assert wants_binary({"outputs": [{"name": "logits", "parameters": {"binary_data": True}}]})
    assert wants_binary({"parameters": {"binary_data_output": True}})
    assert not wants_binary({"parameters": {"binary_data_output": True},
                             "outputs": [{"name": "logits", "parameters": {"binary_data": False}}]})
    assert not wants_binary({})


def test_oip_parameters_that_are_not_objects_are_a_protocol_error():
    with pytest.raises(ProtocolError, match="request parameters must be a JSON object"):
        wants_binary({"parameters": ["binary_data_output"]})
    with pytest.raises(ProtocolError, match="output 'logits' parameters must be a JSON object"):
        wants_binary({"outputs": [{"name": "logits", "parameters": "binary"}]})


def test_booleans_are_not_pixels():
    with pytest.raises(InputError, match="numbers"):
        images_array(np.zeros((1, 28, 28), bool).tolist(), max_images=4)


def test_oip_header_length_must_fit_the_body():
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        split_body(b"{}", "10")


def test_routes_take_their_content_types():
    assert accepted_types("/predict") == ("application/json", "")
    assert accepted_types("/predict_image") == ("multipart/form-data",)
    assert "application/octet-stream" in accepted_types("/v2/models/mnist-keras/infer")
    assert accepted_types("/metrics") is None


def test_device_auto_falls_back_and_cuda_refuses():
    assert requested_providers("cpu", [CUDA, CPU]) == [CPU]
    assert requested_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert requested_providers("auto", [CPU]) == [CPU]
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        requested_providers("cuda", [CPU])


def test_settings_name_the_bad_variable(monkeypatch):
    monkeypatch.setenv("MNIST_DEVICE", "tpu")
    with pytest.raises(SettingsError, match="MNIST_DEVICE"):
        load_settings()
    monkeypatch.setenv("MNIST_DEVICE", "cpu")
    monkeypatch.setenv("MNIST_MAX_IMAGES", "many")
    with pytest.raises(SettingsError, match="MNIST_MAX_IMAGES"):
        load_settings()
    monkeypatch.setenv("MNIST_MAX_IMAGES", "16")
    monkeypatch.setenv("MNIST_KERAS_VERSION", "abc123")
    settings = load_settings()
    assert settings.max_images == 16 and settings.tag("keras") == "mnist-keras:abc123"


class FlakyModelService:
    """A model-service proxy whose first call fails like a connection the server just closed."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0
        self.to_async = self

    async def logits(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return np.zeros((len(images), 10), np.float32)


def call_model_with(proxy: FlakyModelService):
    import asyncio
    from types import SimpleNamespace

    from services.service import MnistApi

    front = SimpleNamespace(model=lambda framework: proxy)
    return asyncio.run(MnistApi.inner.call_model(front, "keras", np.zeros((2, 28, 28), np.float32)))


def test_a_connection_closed_by_the_model_service_is_sent_once_more():
    import aiohttp

    proxy = FlakyModelService([aiohttp.ClientOSError(32, "Cannot write to closing transport")])
    assert call_model_with(proxy).shape == (2, 10)
    assert proxy.calls == 2


def test_other_model_service_errors_are_not_retried():
    import aiohttp

    proxy = FlakyModelService([ValueError("bad"), aiohttp.ServerDisconnectedError()])
    with pytest.raises(ValueError, match="bad"):
        call_model_with(proxy)
    assert proxy.calls == 1
    twice = FlakyModelService([aiohttp.ServerDisconnectedError(), aiohttp.ServerDisconnectedError()])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        call_model_with(twice)
    assert twice.calls == 2
