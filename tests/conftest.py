"""Shared fixtures: the repository root, the offline CIFAR-10 sample, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "cifar10-sample"
LOSSLESS = SAMPLE / "lossless-subset"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


class TinyNet(nn.Module):
    """A small conv net on (N, 3, 8..32, 8..32) images in [0, 1] -> logits (N, classes)."""

    def __init__(self, classes: int = 10, bn: bool = False) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1)]
        if bn:
            layers.append(nn.BatchNorm2d(8))
        layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def require_sample() -> Path:
    if not (LOSSLESS / "cifar-10-batches-py").is_dir():
        pytest.skip(f"offline CIFAR-10 sample not found at {SAMPLE}")
    return LOSSLESS
