"""The shared CNN in Keras 3: a ``keras.Sequential`` with ``keras.Input``, ``compile`` and ``fit``."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models.config import TrainConfig  # noqa: E402
from models.data import MnistData, scale_images  # noqa: E402

FRAMEWORK = "keras"
NATIVE_ARTIFACT = "model.keras"


def framework_version() -> str:
    return f"{keras.__version__} (backend {keras.backend.backend()})"


def build(*, seed: int = 0, dropout: float = 0.5) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28), name="image"),  # (N, 28, 28) float32 in [0, 1]
            keras.layers.Reshape((28, 28, 1)),  # the channel axis lives inside the model
            keras.layers.Conv2D(32, kernel_size=3, activation="relu"),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Conv2D(64, kernel_size=3, activation="relu"),
            keras.layers.MaxPooling2D(pool_size=2),
            keras.layers.Flatten(),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(10, name="logits"),  # raw logits, no softmax
        ],
        name="mnist_cnn",
    )


def count_params(model: keras.Model) -> int:
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def train(config: TrainConfig, data: MnistData) -> keras.Sequential:
    model = build(seed=config.seed, dropout=config.dropout)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        scale_images(data.train_images),
        data.train_labels.astype(np.int64),
        batch_size=config.batch_size,
        epochs=config.epochs,
        steps_per_epoch=1 if config.dry_run else None,
        shuffle=True,
        verbose=2 if os.isatty(2) else 0,  # Keras's own per-epoch line on a terminal
    )
    return model


def predict(model: keras.Model, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, 10) float32 for images (N, 28, 28) float32 in [0, 1], dropout off."""
    batches = [
        np.asarray(model(images[start : start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, 10), np.float32)


def save(model: keras.Model, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NATIVE_ARTIFACT
    model.save(path)
    return path


def load(folder: Path) -> keras.Model:
    return keras.models.load_model(folder / NATIVE_ARTIFACT)
