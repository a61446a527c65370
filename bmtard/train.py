"""The training loop, shared by every method: epochs, SGD with step decay, monitoring, logging.

The loop knows nothing about how a batch becomes a loss (that is the method's job, see
``bmtard.methods``) nor where batches come from (``bmtard.loader``); it calls ``on_epoch`` after
each epoch with that epoch's metrics so the caller can select and save checkpoints.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bmtard.config import OptimConfig
from bmtard.schedule import decay_factor

log = logging.getLogger(__name__)


class Method(Protocol):
    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float
    ) -> tuple[Tensor, dict[str, float]]: ...

    def status(self) -> dict[str, float]: ...


class EpochBatches(Protocol):
    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self): ...  # yields (x, y)

    def __len__(self) -> int: ...


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD as the official code: momentum, weight decay on every parameter, no Nesterov."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def fit(
    model: nn.Module,
    method: Method,
    batches: EpochBatches,
    cfg: OptimConfig,
    *,
    monitor: Callable[[int], dict[str, float] | None],
    on_epoch: Callable[[int, dict[str, float]], None],
    desc: str = "train",
) -> None:
    """Train ``model`` for ``cfg.epochs`` epochs.

    Each epoch: set lr = cfg.lr * decay_factor(epoch); one ``method.batch_loss`` + SGD step per
    batch; then the epoch's metrics (batch means of the method's logs, the method's status, the lr,
    and whatever ``monitor(epoch)`` returns) go to ``on_epoch(epoch, metrics)``.
    """
    opt = make_optimizer(model, cfg)
    epochs = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=None)
    for epoch in epochs:
        factor = decay_factor(epoch, cfg.milestones, cfg.gamma)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        batches.set_epoch(epoch)
        sums: dict[str, float] = defaultdict(float)
        count = 0
        for x, y in tqdm(batches, desc=f"epoch {epoch}", leave=False, unit="batch", disable=None):
            loss, logs = method.batch_loss(model, x, y, factor)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss is {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(y)
            count += n
            for k, v in logs.items():
                sums[k] += v * n
        metrics = {k: v / count for k, v in sums.items()}
        metrics.update(method.status())
        metrics["lr"] = cfg.lr * factor
        checked = monitor(epoch)
        if checked:
            metrics.update(checked)
        epochs.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in _SHOWN})
        log.info("%s epoch %d/%d: %s", desc, epoch, cfg.epochs, _fmt(metrics))
        on_epoch(epoch, metrics)


_SHOWN = ("loss", "clean_acc", "pgd_acc", "tau_nat", "w_adv")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
