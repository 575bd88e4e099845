"""The shared CNN in PyTorch: an ``nn.Module`` trained by a plain loop over a ``DataLoader``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.config import TrainConfig
from models.data import MnistData, scale_images
from models.progress import epoch_bar

FRAMEWORK = "pytorch"
NATIVE_ARTIFACT = "model.pt"  # a state_dict, loaded back with weights_only=True


class ConvNet(nn.Module):
    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(5 * 5 * 64, 10)
        for layer in (self.conv1, self.conv2, self.dense):
            # Glorot-uniform and zero bias, as TensorFlow and Keras start
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1)  # (N, 1, 28, 28): the channel axis lives inside the model
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)  # (N, 32, 13, 13)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # (N, 64, 5, 5)
        x = self.dropout(torch.flatten(x, 1))  # (N, 1600)
        return self.dense(x)  # (N, 10) logits


def framework_version() -> str:
    return torch.__version__


def build(*, seed: int = 0, dropout: float = 0.5) -> ConvNet:
    torch.manual_seed(seed)
    return ConvNet(dropout)


def count_params(model: ConvNet) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(config: TrainConfig, data: MnistData) -> ConvNet:
    model = build(seed=config.seed, dropout=config.dropout)
    images = torch.from_numpy(scale_images(data.train_images))  # (N, 28, 28) float32
    labels = torch.from_numpy(data.train_labels.astype(np.int64))
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_function = nn.CrossEntropyLoss()
    model.train()
    bar = epoch_bar(config, FRAMEWORK)
    for _ in bar:
        losses = []
        for batch_images, batch_labels in loader:
            optimizer.zero_grad()
            loss = loss_function(model(batch_images), batch_labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if config.dry_run:
                break
        bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    model.eval()
    return model


@torch.inference_mode()
def predict(model: ConvNet, images: np.ndarray, *, batch_size: int = 1024) -> np.ndarray:
    """Logits (N, 10) float32 for images (N, 28, 28) float32 in [0, 1], in eval mode."""
    model.eval()
    batches = [
        model(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, 10), np.float32)


def save(model: ConvNet, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NATIVE_ARTIFACT
    torch.save(model.state_dict(), path)
    return path


def load(folder: Path, *, dropout: float = 0.5) -> ConvNet:
    model = ConvNet(dropout)
    model.load_state_dict(torch.load(folder / NATIVE_ARTIFACT, weights_only=True))
    return model.eval()
