"""Progress bars for training loops: one bar per framework, one tick per epoch."""

from __future__ import annotations

import sys

from tqdm import tqdm

from models.config import TrainConfig


def epoch_bar(config: TrainConfig, framework: str) -> tqdm:
    """A tqdm over epoch numbers; call ``set_postfix(loss=...)`` on it after each epoch."""
    return tqdm(
        range(config.epochs),
        desc=f"train {framework}",
        unit="epoch",
        file=sys.stderr,
        disable=None,  # silent when stderr is not a terminal (CI logs, pytest)
    )
