"""The training loop, shared by every method: epochs, SGD with step decay, monitoring, saving.

The loop knows nothing about how a batch becomes a loss (that is the method's job, see
``bmtard.methods``), where batches come from (``bmtard.loader``) or where the state goes
(``bmtard.train_state``): after each step it calls ``save(progress, force)`` (the caller saves
when its clock says so, or always when ``force``), after each epoch ``on_epoch(epoch, metrics)``.
It can start in the middle of a run (``start``), and it stops with one clear line on a
non-finite loss, on running out of memory, or when a stop was requested (SIGTERM).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bmtard import faults
from bmtard.config import OptimConfig
from bmtard.errors import Interrupted, TrainingError
from bmtard.schedule import decay_factor
from bmtard.train_state import Progress

log = logging.getLogger(__name__)


class Method(Protocol):
    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, rate_factor: float
    ) -> tuple[Tensor, dict[str, float]]: ...

    def status(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class EpochBatches(Protocol):
    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


class Stopped(Exception):
    """Raised inside the monitor when a stop was requested; the loop saves and stops."""


@dataclass
class Parts:
    """The live objects one training run changes: their state is what a saved state holds."""

    model: nn.Module
    method: Method
    batches: EpochBatches
    optimizer: torch.optim.Optimizer


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD as the official code: momentum, weight decay on every parameter, no Nesterov."""
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def fit(
    parts: Parts,
    cfg: OptimConfig,
    *,
    section: str,
    monitor: Callable[[int], dict[str, float] | None],
    on_epoch: Callable[[int, dict[str, float]], None],
    start: Progress | None = None,
    save: Callable[[Progress, bool], str] = lambda progress, force: "",
    stop: Any = False,
) -> None:
    """Train ``parts.model`` from ``start`` (default: the beginning) to ``cfg.epochs``.

    Each epoch: lr = cfg.lr * decay_factor(epoch); one ``method.batch_loss`` + SGD step per
    batch; then the epoch's metrics (batch-size-weighted means of the method's logs, the
    method's status, the lr, and whatever ``monitor(epoch)`` returns) go to ``on_epoch``.
    ``save(progress, force)`` returns a short description of the last saved state (for
    messages). ``stop`` is truthy once a stop was requested. ``section`` names the parameter
    section in messages (e.g. ``distill``).
    """
    model, method, batches, opt = parts.model, parts.method, parts.batches, parts.optimizer
    progress = start or Progress()
    saved = ""
    epochs = tqdm(
        range(progress.epoch + 1, cfg.epochs + 1),
        desc=section, unit="epoch", initial=progress.epoch, total=cfg.epochs, disable=None,
    )  # fmt: skip
    for epoch in epochs:
        factor = decay_factor(epoch, cfg.milestones, cfg.gamma)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        if progress.batch == 0:  # a fresh epoch (else the loader was restored mid-epoch)
            batches.set_epoch(epoch)
            progress = Progress(epoch - 1)
        bar = tqdm(
            batches, desc=f"epoch {epoch}", initial=progress.batch, total=len(batches),
            leave=False, unit="batch", disable=None,
        )  # fmt: skip
        for x, y in bar:
            where = f"{section}: epoch {epoch}, batch {progress.batch + 1}"
            with _out_of_memory(where, f"{section}.optim.batch_size", cfg.batch_size):
                loss, logs = method.batch_loss(model, x, y, factor)
                _check_finite(loss, logs, where, section, cfg.lr * factor, saved)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            n = len(y)
            progress.batch += 1
            progress.count += n
            for k, v in logs.items():
                progress.sums[k] = progress.sums.get(k, 0.0) + v * n
            faults.hit("batch")
            saved = save(progress, bool(stop)) or saved
            if stop:
                raise _interrupted(stop, where, saved)
        metrics = {k: v / progress.count for k, v in progress.sums.items()}
        metrics.update(method.status())
        metrics["lr"] = cfg.lr * factor
        try:
            with _out_of_memory(
                f"{section}: epoch {epoch}, monitor", f"{section}.monitor.batch_size", None
            ):
                checked = monitor(epoch)
        except Stopped:
            saved = save(progress, True) or saved
            raise _interrupted(stop, f"{section}: epoch {epoch}, monitor", saved) from None
        if checked:
            metrics.update(checked)
        epochs.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in _SHOWN})
        log.info("%s epoch %d/%d: %s", section, epoch, cfg.epochs, _fmt(metrics))
        on_epoch(epoch, metrics)
        progress = Progress(epoch)
        saved = save(progress, True) or saved
        if stop:
            raise _interrupted(stop, f"{section}: end of epoch {epoch}", saved)


_SHOWN = ("loss", "clean_acc", "pgd_acc", "tau_nat", "w_adv")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _check_finite(
    loss: Tensor, logs: dict[str, float], where: str, section: str, lr: float, saved: str
) -> None:
    """One line naming the non-finite value and the parameter to lower; the step is not taken."""
    if bool(torch.isfinite(loss)):
        return
    bad = [k for k, v in logs.items() if not math.isfinite(v)] or ["loss"]
    value = logs.get(bad[0], float(loss.detach()))
    kept = f"; {saved} is kept" if saved else ""
    raise TrainingError(
        f"{where}: non-finite {bad[0]} ({value}){kept}; lower {section}.optim.lr (now {lr:g})"
    )


@contextmanager
def _out_of_memory(where: str, key: str, value: int | None) -> Iterator[None]:
    """Turn running out of device (or host) memory into one line naming the batch size."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        now = f" (now {value})" if value is not None else ""
        raise TrainingError(f"{where}: out of memory; lower {key}{now}") from None


def _interrupted(stop: Any, where: str, saved: str) -> Interrupted:
    kept = f"{saved} is saved" if saved else "no state is saved (run.state_dir is null)"
    name = getattr(stop, "name", "a stop request")
    return Interrupted(
        f"{where}: stopped by {name}; {kept}; run the same command again to continue",
        getattr(stop, "signum", 15) or 15,
    )
