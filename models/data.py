"""MNIST loader: a local IDX folder, the MNIST_DATA_DIR variable, a cache, else a verified download.

    python -c "from models.data import load_mnist; print(load_mnist('../shared/mnist'))"

A local folder is validated by its IDX headers (magic number, counts, 28x28), never by checksums,
so that a subset such as a 5,000-image training file loads. Checksums guard downloads only.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import PipelineError

log = logging.getLogger(__name__)

ENV_DATA_DIR = "MNIST_DATA_DIR"

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# The four standard file names, without ".gz"; a folder may hold either form of each.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Tried in order; each serves the four files under their standard ".gz" names.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# md5 of the published ".gz" files (the values torchvision and the MNIST page list).
CHECKSUMS_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

NO_DATA_HINT = (
    "put the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder and pass --data-dir "
    f"FOLDER, or set {ENV_DATA_DIR}"
)

# fetch(url, destination) writes the body of url to destination or raises OSError.
Fetch = Callable[[str, Path], None]


class MnistDataError(PipelineError):
    """MNIST data is missing, malformed or could not be downloaded; the message says which file."""


@dataclass(frozen=True)
class MnistData:
    train_images: np.ndarray  # (N, 28, 28) uint8
    train_labels: np.ndarray  # (N,) uint8 in 0..9
    test_images: np.ndarray  # (M, 28, 28) uint8
    test_labels: np.ndarray  # (M,) uint8 in 0..9
    source: str  # the folder the files were read from

    def __repr__(self) -> str:
        return (
            f"MnistData(train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"source={self.source!r})"
        )

    def describe_training_set(self) -> str:
        """A line for metrics and metadata saying which training set a figure comes from."""
        full = "the full MNIST training set" if len(self.train_labels) == 60_000 else "a subset"
        return f"{len(self.train_labels)} training images ({full}) from {self.source}"


def default_cache_dir() -> Path:
    """The per-user cache folder that downloads go to, e.g. ``~/.cache/mnist-serving/mnist``."""
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mnist-serving")) / "mnist"


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """The gzipped or raw IDX file named ``stem`` in ``folder``, preferring ``.gz``; else None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def has_mnist_files(folder: Path) -> bool:
    return folder.is_dir() and all(find_idx_file(folder, stem) for stem in FILES.values())


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed bytes of an IDX file, gzipped or raw; a corrupt gzip names the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise MnistDataError(f"{path}: not a readable gzip file ({error})") from error


def parse_idx(path: Path, *, expected_magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes, checking its magic number, dimensions and length."""
    payload = read_idx_bytes(path)
    if len(payload) < 4:
        raise MnistDataError(f"{path}: too short for an IDX header ({len(payload)} bytes)")
    (magic,) = struct.unpack(">i", payload[:4])
    if magic != expected_magic:
        kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise MnistDataError(
            f"{path}: wrong magic number {magic} (expected {expected_magic} for MNIST {kind}); "
            "is this an MNIST IDX file?"
        )
    ndim = magic & 0xFF
    header_bytes = 4 + 4 * ndim
    if len(payload) < header_bytes:
        raise MnistDataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}i", payload[4:header_bytes])
    if expected_magic == IMAGES_MAGIC and tuple(shape[1:]) != (28, 28):
        raise MnistDataError(f"{path}: images are {shape[1]}x{shape[2]}, expected 28x28")
    expected_bytes = int(np.prod(shape))
    actual_bytes = len(payload) - header_bytes
    if actual_bytes != expected_bytes:
        raise MnistDataError(
            f"{path}: truncated payload: header says {shape[0]} items ({expected_bytes} bytes) "
            f"but the file holds {actual_bytes} bytes"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header_bytes).reshape(shape)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of ``train`` or ``test`` from a folder."""
    paths = {}
    for part in ("images", "labels"):
        stem = FILES[f"{split}_{part}"]
        path = find_idx_file(folder, stem)
        if path is None:
            raise MnistDataError(f"{folder / (stem + '.gz')}: missing file; {NO_DATA_HINT}")
        paths[part] = path
    images = parse_idx(paths["images"], expected_magic=IMAGES_MAGIC)
    labels = parse_idx(paths["labels"], expected_magic=LABELS_MAGIC)
    if len(images) != len(labels):
        raise MnistDataError(
            f"{paths['images']} holds {len(images)} images but {paths['labels']} holds "
            f"{len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise MnistDataError(f"{paths['labels']}: label {int(labels.max())} is not a digit 0-9")
    return images, labels


def load_folder(folder: str | os.PathLike) -> MnistData:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MnistDataError(f"{folder}: no such folder; {NO_DATA_HINT}")
    train_images, train_labels = load_split(folder, "train")
    test_images, test_labels = load_split(folder, "test")
    return MnistData(train_images, train_labels, test_images, test_labels, str(folder))


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(url: str, destination: Path, *, timeout: float = 30.0) -> None:
    """Write the body of ``url`` to ``destination`` with a progress bar; raise OSError on failure."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed mirrors)
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            destination.open("wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name, leave=False) as bar,
        ):
            for block in iter(lambda: response.read(1 << 16), b""):
                out.write(block)
                bar.update(len(block))


def download_file(
    filename: str,
    folder: Path,
    *,
    mirrors: Sequence[str],
    checksums: dict[str, str],
    fetch: Fetch,
) -> Path:
    """Download ``filename`` from the first mirror that serves it with the right checksum.

    The body goes to a temporary file beside the target and is renamed into place only once its
    checksum matches, so an interrupted or corrupt download never leaves a file that is trusted.
    """
    target = folder / filename
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        handle, temporary_name = tempfile.mkstemp(prefix=f".{filename}.", dir=folder)
        os.close(handle)
        temporary = Path(temporary_name)
        try:
            fetch(url, temporary)
            actual = md5_of(temporary)
            expected = checksums[filename]
            if actual != expected:
                failures.append(f"{url}: checksum mismatch (md5 {actual}, expected {expected})")
                log.warning("%s", failures[-1])
                continue
            os.replace(temporary, target)
            return target
        except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
            failures.append(f"{url}: {error}")
            log.warning("mirror failed: %s", failures[-1])
        finally:
            temporary.unlink(missing_ok=True)
    raise MnistDataError(
        f"could not download {filename} from any mirror:\n  " + "\n  ".join(failures)
        + f"\n{NO_DATA_HINT}"
    )


def download_mnist(
    folder: Path,
    *,
    mirrors: Sequence[str] = MIRRORS,
    checksums: dict[str, str] = CHECKSUMS_MD5,
    fetch: Fetch = fetch_url,
) -> Path:
    """Download the four MNIST files into ``folder`` (skipping any already there) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        filename = f"{stem}.gz"
        if (folder / filename).is_file():
            continue
        log.info("downloading %s", filename)
        download_file(filename, folder, mirrors=mirrors, checksums=checksums, fetch=fetch)
    return folder


def resolve_data_dir(
    data_dir: str | os.PathLike | None = None, *, cache_dir: Path | None = None
) -> tuple[Path | None, str]:
    """The folder to read and where that choice came from; None means "download to the cache"."""
    if data_dir:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser(), ENV_DATA_DIR
    cache = cache_dir or default_cache_dir()
    if has_mnist_files(cache):
        return cache, "cache"
    return None, "download"


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache_dir: Path | None = None,
    fetch: Fetch = fetch_url,
    mirrors: Sequence[str] = MIRRORS,
    checksums: dict[str, str] = CHECKSUMS_MD5,
) -> MnistData:
    """Load MNIST from ``data_dir``, else ``$MNIST_DATA_DIR``, else the cache, else a download."""
    folder, origin = resolve_data_dir(data_dir, cache_dir=cache_dir)
    if folder is None:
        if not download:
            raise MnistDataError(f"no MNIST data found; {NO_DATA_HINT}")
        folder = download_mnist(
            cache_dir or default_cache_dir(), mirrors=mirrors, checksums=checksums, fetch=fetch
        )
    log.info("reading MNIST from %s (%s)", folder, origin)
    return load_folder(folder)


def scale_images(images: np.ndarray) -> np.ndarray:
    """Scale uint8 images to the contract's float32 [0, 1] range: (N, 28, 28) float32."""
    return images.astype(np.float32) / np.float32(255.0)
