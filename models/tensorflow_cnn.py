"""The shared CNN in low-level TensorFlow: a ``tf.Module`` of ``tf.Variable``s, no Keras.

The forward pass is a ``tf.function``, training a ``tf.GradientTape`` loop over ``tf.data``, and
Adam is written out (TensorFlow 2 has no Adam outside Keras) so that no Keras code runs here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.config import TrainConfig  # noqa: E402
from models.data import MnistData, scale_images  # noqa: E402
from models.progress import epoch_bar  # noqa: E402

FRAMEWORK = "tensorflow"
NATIVE_ARTIFACT = "saved_model"  # a folder
IMAGE_SPEC = tf.TensorSpec([None, 28, 28], tf.float32, name="image")


def glorot_uniform(generator: tf.random.Generator, shape: list[int], fan_in: int, fan_out: int):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return generator.uniform(shape, -limit, limit, dtype=tf.float32)


class ConvNet(tf.Module):
    def __init__(self, *, seed: int = 0, dropout: float = 0.5) -> None:
        super().__init__(name="mnist_cnn")
        generator = tf.random.Generator.from_seed(seed)
        self.dropout = dropout
        self.conv1_kernel = tf.Variable(glorot_uniform(generator, [3, 3, 1, 32], 9, 9 * 32))
        self.conv1_bias = tf.Variable(tf.zeros([32]))
        self.conv2_kernel = tf.Variable(glorot_uniform(generator, [3, 3, 32, 64], 9 * 32, 9 * 64))
        self.conv2_bias = tf.Variable(tf.zeros([64]))
        self.dense_kernel = tf.Variable(glorot_uniform(generator, [1600, 10], 1600, 10))
        self.dense_bias = tf.Variable(tf.zeros([10]))

    def forward(self, images: tf.Tensor, *, training: bool) -> tf.Tensor:
        x = images[..., tf.newaxis]  # (N, 28, 28, 1): the channel axis lives inside the model
        x = tf.nn.relu(tf.nn.conv2d(x, self.conv1_kernel, 1, "VALID") + self.conv1_bias)
        x = tf.nn.max_pool2d(x, 2, 2, "VALID")  # (N, 13, 13, 32)
        x = tf.nn.relu(tf.nn.conv2d(x, self.conv2_kernel, 1, "VALID") + self.conv2_bias)
        x = tf.nn.max_pool2d(x, 2, 2, "VALID")  # (N, 5, 5, 64)
        x = tf.reshape(x, [-1, 5 * 5 * 64])  # (N, 1600)
        if training:
            x = tf.nn.dropout(x, rate=self.dropout)
        return tf.matmul(x, self.dense_kernel) + self.dense_bias  # (N, 10) logits

    @tf.function(input_signature=[IMAGE_SPEC])
    def logits(self, images: tf.Tensor) -> tf.Tensor:
        """Inference: (N, 28, 28) float32 in [0, 1] -> (N, 10) logits, dropout off."""
        return self.forward(images, training=False)


class Adam(tf.Module):
    """Adam (Kingma and Ba, 2015) over a list of variables, with bias correction."""

    def __init__(self, variables, *, learning_rate: float, beta1=0.9, beta2=0.999, epsilon=1e-7):
        super().__init__()
        self.learning_rate, self.beta1, self.beta2, self.epsilon = (
            learning_rate, beta1, beta2, epsilon,
        )
        self.step = tf.Variable(0.0)
        self.first_moments = [tf.Variable(tf.zeros_like(v)) for v in variables]
        self.second_moments = [tf.Variable(tf.zeros_like(v)) for v in variables]

    def apply(self, gradients, variables) -> None:
        self.step.assign_add(1.0)
        correction1 = 1.0 - tf.pow(self.beta1, self.step)
        correction2 = 1.0 - tf.pow(self.beta2, self.step)
        for grad, var, m, v in zip(
            gradients, variables, self.first_moments, self.second_moments, strict=True
        ):
            m.assign(self.beta1 * m + (1.0 - self.beta1) * grad)
            v.assign(self.beta2 * v + (1.0 - self.beta2) * tf.square(grad))
            step = self.learning_rate * (m / correction1) / (tf.sqrt(v / correction2) + self.epsilon)
            var.assign_sub(step)


def framework_version() -> str:
    return tf.__version__


def build(*, seed: int = 0, dropout: float = 0.5) -> ConvNet:
    tf.random.set_seed(seed)
    return ConvNet(seed=seed, dropout=dropout)


def count_params(model: tf.Module) -> int:
    return int(sum(np.prod(variable.shape) for variable in model.trainable_variables))


def train(config: TrainConfig, data: MnistData) -> ConvNet:
    model = build(seed=config.seed, dropout=config.dropout)
    variables = model.trainable_variables
    optimizer = Adam(variables, learning_rate=config.learning_rate)
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            (scale_images(data.train_images), data.train_labels.astype(np.int64))
        )
        .shuffle(len(data.train_labels), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    if config.dry_run:
        dataset = dataset.take(1)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model.forward(images, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    bar = epoch_bar(config, FRAMEWORK)
    for _ in bar:
        losses = [float(train_step(images, labels)) for images, labels in dataset]
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    return model


def predict(model: tf.Module, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, 10) float32 for images (N, 28, 28) float32 in [0, 1], dropout off."""
    batches = [
        model.logits(tf.constant(images[start : start + batch_size])).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, 10), np.float32)


def save(model: ConvNet, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NATIVE_ARTIFACT
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.logits})
    return path


def load(folder: Path) -> tf.Module:
    """The restored module; its ``logits`` function and variables come back from the SavedModel."""
    return tf.saved_model.load(str(folder / NATIVE_ARTIFACT))
