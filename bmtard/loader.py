"""Batches for training and evaluation, with the data kept on the device.

The whole split lives on the device as uint8 (50k CIFAR images are 150 MB); each batch is cast to
float in [0, 1] there, and the CIFAR augmentation (4-pixel zero-padded random crop + horizontal
flip, as ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``) runs batched on the device.
We write the batched crop ourselves because torchvision's transforms draw one crop per call, i.e.
per image on the CPU, which is the bottleneck of a GPU training loop; the distribution is the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bmtard.splits import Split


def to_tensor(images: Tensor) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], contiguous (NCHW memory order)."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255)


def random_crop_flip(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Per-image random crop after zero padding by ``pad``, then a random horizontal flip.

    x: (N, C, H, W); the random draws come from ``gen`` (a CPU generator), so a seed fixes them.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (top[:, None] + ar_h)[:, None, :, None]
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # flip = read backwards
    cols = cols[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


class Batches:
    """Iterate over (x, y) batches of a split: x float (B, C, H, W) in [0, 1], y int64 (B,).

    shuffle/augment draw from a generator seeded by (seed, epoch), so an epoch's batches depend
    only on the seed and the epoch number (call ``set_epoch`` before iterating). The last partial
    batch is kept, as the official code does. ``state_dict`` / ``load_state_dict`` save and
    restore the position inside an epoch (the epoch, the batches already taken and the
    generator), so that a resumed epoch yields exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        limit: int | None = None,
    ) -> None:
        n = len(split) if limit is None else min(limit, len(split))
        self.images = torch.from_numpy(split.images[:n]).to(device)
        self.labels = torch.from_numpy(split.labels[:n]).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.position = 0  # batches of this epoch already taken
        self._resume: tuple[int, torch.Tensor | None] | None = None  # set by load_state_dict
        self._gen: torch.Generator | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: the next iteration yields its batches from the first one."""
        self.epoch, self.position, self._resume, self._gen = epoch, 0, None, None

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def state_dict(self) -> dict[str, Any]:
        """The position inside the current epoch (plain data and a CPU tensor)."""
        if self._resume is not None:  # restored and not iterated yet
            return {"epoch": self.epoch, "position": self._resume[0], "generator": self._resume[1]}
        gen = self._gen.get_state() if self._gen is not None else None
        return {"epoch": self.epoch, "position": self.position, "generator": gen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iteration continues the epoch where ``state_dict`` was taken."""
        self.epoch, self._gen = int(state["epoch"]), None
        self._resume = (int(state["position"]), state["generator"])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order.to(self.labels.device)
        self.position = 0
        if self._resume is not None:  # continue: the draws of the batches taken are done
            self.position, saved = self._resume
            if saved is not None:
                gen.set_state(saved)
            self._resume = None
        self._gen = gen
        for start in range(self.position * self.batch_size, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = to_tensor(self.images[idx])
            if self.augment:
                x = random_crop_flip(x, 4, gen)
            self.position += 1
            yield x, self.labels[idx]
