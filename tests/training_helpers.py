"""Tiny data, teachers and configurations shared by the training and resume tests."""

from __future__ import annotations

import numpy as np
import torch

from bmtard.config.schema import MonitorConfig
from bmtard.data.splits import Split
from bmtard.data.stage_data import StageData
from bmtard.models import build_model
from bmtard.models.checkpoint import ModelSpec, TrainingRecord, save_model

WIDTH = 0.0625


def random_split(n: int, seed: int) -> Split:
    """n random 32x32 images with balanced labels (in a random order)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(10, dtype=np.int64), -(-n // 10))[:n]
    rng.shuffle(labels)
    return Split(images, labels)


def tiny_data() -> StageData:
    """64 train and 32 test images, with a manifest as the download stage writes one."""
    manifest = {
        "dataset": "cifar10",
        "num_classes": 10,
        "splits": {
            "train": {"count": 64, "sha256": "a" * 64},
            "test": {"count": 32, "sha256": "b" * 64},
        },
    }
    return StageData(random_split(64, 1), random_split(32, 2), manifest)


def monitor_cfg(pgd_steps: int = 0) -> MonitorConfig:
    """Monitor at the first and last epoch only, on all 32 test images."""
    return MonitorConfig(
        every=1000, dense_from=10**6, n_images=32, batch_size=32, pgd_steps=pgd_steps
    )


def teachers(folder, clean_classes: int = 10, robust_classes: int = 10):
    """A clean teacher with uniform outputs (the highest entropy) and a confident robust one, so
    that Entropy-Based Balance moves the temperatures in a known direction."""
    clean, robust = folder / "clean.pt", folder / "robust.pt"
    torch.manual_seed(11)
    m = build_model("resnet18", clean_classes, WIDTH)
    with torch.no_grad():
        m.linear.weight.zero_()
        m.linear.bias.zero_()
    save_model(clean, ModelSpec("resnet18", WIDTH, clean_classes), m.state_dict(), TrainingRecord())
    m = build_model("preact_resnet18", robust_classes, WIDTH)
    with torch.no_grad():
        m.linear.weight.mul_(50.0)
    save_model(
        robust,
        ModelSpec("preact_resnet18", WIDTH, robust_classes),
        m.state_dict(),
        TrainingRecord(),
    )
    return clean, robust
