"""Shared fixtures: the repository root, the CIFAR-10 sample it ships, tiny models.

The suite runs in two processes (pytest-xdist, ``-n 2`` in pyproject.toml), each test and each
stage it starts with one CPU thread: on the tiny models of the tests a second thread gains
little (a pipeline run measured 53 s with two threads, 55 s with one), while two one-thread
processes use both cores (two pipeline runs at once took 55 s).
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.data.loader import to_tensor
from bmtard.data.splits import Split

os.environ["OMP_NUM_THREADS"] = (
    "1"  # the stages the tests start (bmtard.runtime.device.threads_given)
)

ROOT = Path(__file__).resolve().parents[1]
#: the CIFAR-10 sample the repository ships (exact pixels, the original layout: data/cifar10-sample)
SAMPLE = ROOT / "data" / "cifar10-sample"


def committed(rel: str) -> str:
    """A file as the last commit holds it: what the repository ships."""
    return subprocess.run(
        ["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


@functools.cache
def shipped_params() -> Path:
    """params.yaml as the repository ships it: the working copy, unless it is a preset copied
    over it (README's main job does ``cp presets/quick.yaml params.yaml``), which must change no
    test about the shipped settings: then the last commit's, in a file of its own."""
    working = ROOT / "params.yaml"
    text = working.read_text()
    if not any(text == p.read_text() for p in (ROOT / "presets").glob("*.yaml")):
        return working
    folder = Path(tempfile.mkdtemp(prefix="bmtard-shipped-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "params.yaml"
    path.write_text(committed("params.yaml"))
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)


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


def synthetic(n: int, seed: int) -> Split:
    """10 classes: fixed random templates plus noise, as uint8 images (N, 8, 8, 3). A linear model
    reaches ~90 % clean accuracy; at eps 4/255 about half the images stay robust."""
    noise = np.random.default_rng(seed).normal(size=(n, 8, 8, 3))
    templates = np.random.default_rng(123).normal(size=(10, 8, 8, 3))
    y = np.arange(n) % 10
    x = 0.5 + 0.03 * templates[y] + 0.1 * noise
    return Split(np.clip(np.round(x * 255), 0, 255).astype(np.uint8), y.astype(np.int64))


def train_linear(split: Split, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x, y = to_tensor(torch.from_numpy(split.images)), torch.from_numpy(split.labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


#: the order in which the two processes take the test files (pyproject.toml: --dist loadfile,
#: --no-loadscope-reorder): the SLURM run first, as it mostly waits while the other process
#: works, then the longest files, the rest after them in their usual order. A process is handed
#: its next file while it still runs one, so a short file comes third: it waits behind SLURM.
FIRST = (
    "test_slurm.py",
    "test_pipeline_e2e.py",
    "test_attack_table.py",
    "test_crash_e2e.py",
    "test_grid_e2e.py",
    "test_stages.py",
    "test_evaluate.py",
    "test_distributed.py",
    "test_crosscheck.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable within a rank
