"""Small models and plain-float references shared by the tests of the methods."""

from __future__ import annotations

import math

import torch
from torch import nn


class Constant(nn.Module):
    """Logits that do not depend on the input (so every attack leaves them as they are)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.bias.expand(len(x), -1) + 0 * x.sum(dim=(1, 2, 3))[:, None]


class Record(nn.Module):
    """Runs ``inner`` and records (training mode, input) of every forward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.inner(x)


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl_sum(p: list[float], q: list[float]) -> float:
    """sum over classes of p (log p - log q): one image."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
