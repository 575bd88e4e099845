"""The MNIST loader: local folders validated by IDX headers, bad data named, verified downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from models import data as mnist
from models.data import FILES, MnistDataError, download_mnist, load_folder, load_mnist

FIXTURE = Path(__file__).parent / "fixtures" / "mnist"


def copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(FIXTURE, folder)
    return folder


def rewrite(path: Path, payload: bytes) -> None:
    with gzip.open(path, "wb") as stream:
        stream.write(payload)


def raw_bytes(path: Path) -> bytes:
    with gzip.open(path, "rb") as stream:
        return stream.read()


def test_fixture_loads_as_uint8_images_and_labels():
    loaded = load_folder(FIXTURE)
    assert loaded.train_images.shape == (500, 28, 28)
    assert loaded.test_images.shape == (250, 28, 28)
    assert loaded.train_images.dtype == np.uint8 and loaded.train_labels.dtype == np.uint8
    assert np.bincount(loaded.test_labels).tolist() == [25] * 10
    assert loaded.train_images.max() == 255  # real digits, not zeros


def test_raw_idx_files_load_like_gzipped_ones(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for stem in FILES.values():
        (folder / stem).write_bytes(raw_bytes(FIXTURE / f"{stem}.gz"))
    raw, gzipped = load_folder(folder), load_folder(FIXTURE)
    np.testing.assert_array_equal(raw.test_images, gzipped.test_images)
    np.testing.assert_array_equal(raw.train_labels, gzipped.train_labels)


def test_missing_file_is_named_with_what_to_do(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistDataError, match=r"t10k-labels-idx1-ubyte.gz: missing file.*--data-dir"):
        load_folder(folder)


def test_missing_folder_says_to_pass_data_dir(tmp_path):
    with pytest.raises(MnistDataError, match="no such folder.*--data-dir"):
        load_folder(tmp_path / "nowhere")


def test_wrong_magic_number_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    payload = raw_bytes(path)
    rewrite(path, struct.pack(">i", 2049) + payload[4:])
    with pytest.raises(MnistDataError, match=r"train-images-idx3-ubyte.gz: wrong magic number 2049"):
        load_folder(folder)


def test_truncated_payload_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    rewrite(path, raw_bytes(path)[:-100])
    with pytest.raises(MnistDataError, match=r"t10k-images-idx3-ubyte.gz: truncated payload"):
        load_folder(folder)


def test_corrupt_gzip_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])  # cut mid-stream
    with pytest.raises(MnistDataError, match=r"train-labels-idx1-ubyte.gz: not a readable gzip"):
        load_folder(folder)


def test_image_label_count_mismatch_is_named(tmp_path):
    folder = copy_fixture(tmp_path)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    labels = raw_bytes(path)[8:]
    rewrite(path, struct.pack(">ii", 2049, len(labels) - 1) + labels[:-1])
    with pytest.raises(MnistDataError, match="250 images but .* 249 labels"):
        load_folder(folder)


def test_images_that_are_not_28x28_are_rejected(tmp_path):
    folder = copy_fixture(tmp_path)
    path = folder / "t10k-images-idx3-ubyte.gz"
    rewrite(path, struct.pack(">iiii", 2051, 1, 28, 27) + bytes(28 * 27))
    with pytest.raises(MnistDataError, match="28x27, expected 28x28"):
        load_folder(folder)


def test_data_dir_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "elsewhere"))
    assert load_mnist(FIXTURE, download=False).source == str(FIXTURE)


def test_environment_variable_is_used_without_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DATA_DIR", str(FIXTURE))
    assert load_mnist(cache_dir=tmp_path / "cache", download=False).source == str(FIXTURE)


def test_cache_is_used_before_download(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    cache = copy_fixture(tmp_path)

    def refuse(url, destination):
        raise AssertionError("must not download when the cache is full")

    assert load_mnist(cache_dir=cache, fetch=refuse).source == str(cache)


def test_no_data_and_no_download_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    with pytest.raises(MnistDataError, match="pass --data-dir"):
        load_mnist(cache_dir=tmp_path / "empty", download=False)


# --- downloads, against a file server on 127.0.0.1 -------------------------------------------


def md5_checksums(folder: Path) -> dict[str, str]:
    return {
        f"{stem}.gz": hashlib.md5((folder / f"{stem}.gz").read_bytes()).hexdigest()
        for stem in FILES.values()
    }


@pytest.fixture
def file_server(tmp_path):
    """Serve ``good/`` (the fixture) and ``corrupt/`` (each file cut short) over loopback HTTP."""
    root = tmp_path / "www"
    shutil.copytree(FIXTURE, root / "good")
    (root / "corrupt").mkdir()
    for path in (root / "good").iterdir():
        (root / "corrupt" / path.name).write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    handler = partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def dead_mirror() -> str:
    """A loopback address where nothing listens: connection refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_skips_a_dead_mirror_and_verifies_checksums(file_server, tmp_path):
    cache = tmp_path / "cache"
    download_mnist(
        cache, mirrors=[dead_mirror(), f"{file_server}/good/"], checksums=md5_checksums(FIXTURE)
    )
    np.testing.assert_array_equal(load_folder(cache).test_labels, load_folder(FIXTURE).test_labels)


def test_download_rejects_a_corrupt_file_and_takes_the_next_mirror(file_server, tmp_path):
    cache = tmp_path / "cache"
    download_mnist(
        cache,
        mirrors=[f"{file_server}/corrupt/", f"{file_server}/good/"],
        checksums=md5_checksums(FIXTURE),
    )
    assert load_folder(cache).train_images.shape == (500, 28, 28)


def test_failed_download_leaves_no_file_to_trust(file_server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(MnistDataError) as raised:
        download_mnist(
            cache,
            mirrors=[dead_mirror(), f"{file_server}/corrupt/"],
            checksums=md5_checksums(FIXTURE),
        )
    message = str(raised.value)
    assert "checksum mismatch" in message and "Connection refused" in message
    assert "--data-dir" in message
    assert list(cache.iterdir()) == []  # no partial or temporary file is left behind


def test_load_mnist_downloads_into_the_cache_when_nothing_is_local(
    file_server, tmp_path, monkeypatch
):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    loaded = load_mnist(
        cache_dir=cache, mirrors=[f"{file_server}/good/"], checksums=md5_checksums(FIXTURE)
    )
    assert loaded.source == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in FILES.values())


def test_published_checksums_guard_the_real_download(file_server, tmp_path):
    """The fixture is not the published file, so the real md5 list must reject it."""
    with pytest.raises(MnistDataError, match="checksum mismatch"):
        mnist.download_file(
            "t10k-labels-idx1-ubyte.gz",
            tmp_path,
            mirrors=[f"{file_server}/good/"],
            checksums=mnist.CHECKSUMS_MD5,
            fetch=mnist.fetch_url,
        )
