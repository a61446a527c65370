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

from bmtard.data.splits import Split


def to_tensor(images: Tensor) -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1], contiguous (NCHW memory order)."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255)


def crop_flip_draws(n: int, pad: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """The random draws of ``n`` crops and flips, from ``gen`` (a CPU generator): top and left
    offsets in [0, 2 pad] (int64, n) and flips (bool, n), drawn in that order."""
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    return top, left, flip


def crop_flip(x: Tensor, pad: int, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
    """Per-image crop after zero padding by ``pad``, then a horizontal flip where ``flip``.

    x: (N, C, H, W); top, left, flip: (N,) on x's device (see ``crop_flip_draws``).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (top[:, None] + ar_h)[:, None, :, None]
    cols = left[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # flip = read backwards
    cols = cols[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_crop_flip(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """``crop_flip`` with fresh draws from ``gen`` (a CPU generator), so a seed fixes them."""
    top, left, flip = crop_flip_draws(len(x), pad, gen)
    dev = x.device
    return crop_flip(x, pad, top.to(dev), left.to(dev), flip.to(dev))


class Batches:
    """Iterate over (x, y) batches of a split: x float (B, C, H, W) in [0, 1], y int64 (B,).

    shuffle/augment draw from a generator seeded by (seed, epoch), so an epoch's batches depend
    only on the seed and the epoch number (call ``set_epoch`` before iterating). An epoch's draws
    (the order, then each batch's crops and flips, in the order a batch-by-batch loop makes them)
    are made at its start and moved to the device at once: one host-to-device copy per epoch, not
    one per batch. The last partial batch is kept, as the official code does. ``state_dict`` /
    ``load_state_dict`` save and restore the position inside an epoch (the draws are made again
    from the seed), so that a resumed epoch yields exactly the batches an uninterrupted one would.
    """

    PAD = 4  # RandomCrop(32, padding=4)

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
        self._resume_at: int | None = None  # set by load_state_dict

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch``: the next iteration yields its batches from the first one."""
        self.epoch, self.position, self._resume_at = epoch, 0, None

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def state_dict(self) -> dict[str, Any]:
        """The position inside the current epoch (plain data)."""
        position = self.position if self._resume_at is None else self._resume_at
        return {"epoch": self.epoch, "position": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iteration continues the epoch where ``state_dict`` was taken."""
        self.epoch, self._resume_at = int(state["epoch"]), int(state["position"])

    def _draws(self) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """This epoch's order and (with augment) its crops and flips, on the device."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        crops = None
        if self.augment:
            per_batch = [
                crop_flip_draws(len(order[i : i + self.batch_size]), self.PAD, gen)
                for i in range(0, n, self.batch_size)
            ]
            crops = tuple(torch.cat(d).to(self.labels.device) for d in zip(*per_batch, strict=True))
        return order.to(self.labels.device), crops

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order, crops = self._draws()
        self.position, self._resume_at = self._resume_at or 0, None
        for start in range(self.position * self.batch_size, len(self.labels), self.batch_size):
            rows = slice(start, start + self.batch_size)
            idx = order[rows]
            x = to_tensor(self.images[idx])
            if crops is not None:
                x = crop_flip(x, self.PAD, *(d[rows] for d in crops))
            self.position += 1
            yield x, self.labels[idx]
