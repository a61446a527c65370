"""The training loop, shared by every method: epochs, SGD with step decay, monitoring, saving.

The loop knows nothing about how a batch becomes a loss (that is the method's job, see
``bmtard.methods``), where batches come from (``bmtard.data.loader``) or where the state goes
(``bmtard.training.state``): it asks its ``Saver`` after each step whether a save is due, and saves
at every epoch's end; after each epoch it calls ``on_epoch(epoch, metrics)``. It can start in the
middle of a run (``start``), and it stops with one clear line on a non-finite loss, on a loss
above its ``LossLimit`` (a divergence), on running out of memory, or when a stop was requested
(SIGTERM).

A step never waits for the device: the methods' logs are device tensors, summed on the device
(float64, the same arithmetic as Python floats) and read once per epoch; non-finite values are
remembered on the device (``FiniteGuard``), as is a loss above the limit, and read every
``CHECK_EVERY`` steps and before every save, so no saved state is ever past such a step.
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

from bmtard.config.schema import OptimConfig
from bmtard.core import distributed, faults
from bmtard.core.errors import Interrupted, TrainingError
from bmtard.methods.contract import Method
from bmtard.methods.decays import lr_factor
from bmtard.training.state import Progress

log = logging.getLogger(__name__)


#: steps between two reads of the finiteness guard (each read waits for the device once)
CHECK_EVERY = 50


class EpochBatches(Protocol):
    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


class Stopped(Exception):
    """Raised inside the monitor when a stop was requested; the loop saves and stops."""


class Saver(Protocol):
    def due(self) -> bool: ...  # a save inside the epoch is due (e.g. its clock ran out)

    def save(self, progress: Progress) -> str: ...  # save; describe what was saved ("" = none)


class NoSaver:
    """Saves nothing (for callers without a training state)."""

    def due(self) -> bool:
        return False

    def save(self, progress: Progress) -> str:
        return ""


@dataclass(frozen=True)
class LossLimit:
    """The largest loss a sane run reaches: above it the run has diverged (``value``), and the
    rule that set it, for the message (e.g. "1000 x ln(10 classes), run.divergence_factor")."""

    value: float
    rule: str


class FiniteGuard:
    """The first step whose loss or logged value is not finite, or whose loss is above the
    ``limit`` (a divergence that has not yet reached inf), remembered on the device: recording
    costs no host-device synchronisation; ``check`` reads it (one sync) and stops with one line
    naming the step, the value and the parameter to lower."""

    def __init__(self, section: str, limit: LossLimit | None = None) -> None:
        self.section = section
        self.limit = limit
        self.steps: list[tuple[int, int, float]] = []  # (epoch, batch, lr) since the last check
        self.names: list[str] = []
        self.first: Tensor | None = None  # index into steps of the first bad one, or -1
        self.count: Tensor | None = None
        self.flags: Tensor | None = None
        self.values: Tensor | None = None

    def record(self, epoch: int, batch: int, lr: float, loss: Tensor, logs: dict[str, Tensor]):
        values = torch.stack([loss.detach().float(), *(v.detach().float() for v in logs.values())])
        bad = ~torch.isfinite(values)
        if self.limit is not None:  # the loss (values[0]) diverged, still finite
            bad[0] |= values[0].abs() > self.limit.value
        if self.first is None:
            self.names = ["loss", *logs]
            self.first = torch.full((), -1, dtype=torch.int64, device=values.device)
            self.count = torch.zeros((), dtype=torch.int64, device=values.device)
            self.flags, self.values = bad, values
        new = bad.any() & (self.first < 0)
        self.first = torch.where(new, self.count, self.first)
        self.flags = torch.where(new, bad, self.flags)
        self.values = torch.where(new, values, self.values)
        self.count += 1
        self.steps.append((epoch, batch, lr))

    def check(self, saved: str) -> None:
        """Raise a TrainingError if a recorded step was not finite or diverged; else forget the
        steps."""
        if self.first is None or not self.steps:
            return
        first = int(self.first)
        if first >= 0:
            epoch, batch, lr = self.steps[first]
            flags, values = self.flags.tolist(), self.values.tolist()
            kept = f"; {saved} is kept" if saved else ""
            where, lower = f"{self.section}: epoch {epoch}, batch {batch}", self._lower(lr)
            if self.limit is not None and all(math.isfinite(v) for v in values):
                raise TrainingError(
                    f"{where}: the loss diverged ({values[0]:.3g}, above {self.limit.value:.4g} = "
                    f"{self.limit.rule}){kept}; {lower}"
                )
            i = next((j for j in range(1, len(flags)) if flags[j]), 0)  # a named log first
            raise TrainingError(f"{where}: non-finite {self.names[i]} ({values[i]}){kept}; {lower}")
        self.steps.clear()
        self.count.zero_()

    def _lower(self, lr: float) -> str:
        return f"lower {self.section}.optim.lr (now {lr:g})"


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
    saver: Saver | None = None,
    stop: Any = False,
    limit: LossLimit | None = None,
) -> None:
    """Train ``parts.model`` from ``start`` (default: the beginning) to ``cfg.epochs``.

    Each epoch: lr = cfg.lr * lr_factor(epoch) (``cfg.schedule``); ``method.start_epoch``; one
    ``method.batch_loss`` + SGD step + ``method.after_step`` per batch (the contract:
    ``bmtard.methods.contract``); ``method.end_epoch``; then the epoch's metrics
    (batch-size-weighted means of the method's logs, the method's status, the lr, and whatever
    ``monitor(epoch)`` returns) go to ``on_epoch``. ``stop`` is truthy once a stop was requested.
    ``section`` names the parameter section in messages (e.g. ``distill``). A non-finite loss or
    logged value, or a loss above ``limit`` (a divergence), stops the run with one line, and no
    state past that step is saved.

    With several processes (``bmtard.core.distributed``) each rank trains on its share of every
    batch through the DDP-wrapped model, every rank stops at the batch where any one was asked
    to, the epoch's metrics are over the whole batch, and only rank 0's ``saver`` should save.
    """
    model, method, batches, opt = parts.model, parts.method, parts.batches, parts.optimizer
    net = distributed.wrap(model, next(model.parameters()).device)
    saver = saver or NoSaver()
    guard = FiniteGuard(section, limit)
    progress = start or Progress()
    saved = ""

    def save(progress: Progress) -> None:
        nonlocal saved
        guard.check(saved)  # never save past a non-finite step
        saved = saver.save(progress) or saved

    quiet = None if distributed.is_main() else True  # tqdm: None = only on a terminal
    epochs = tqdm(
        range(progress.epoch + 1, cfg.epochs + 1),
        desc=section, unit="epoch", initial=progress.epoch, total=cfg.epochs, disable=quiet,
    )  # fmt: skip
    for epoch in epochs:
        lr = cfg.lr * lr_factor(epoch, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        if progress.batch == 0:  # a fresh epoch (else the loader was restored mid-epoch)
            batches.set_epoch(epoch)
            progress = Progress(epoch - 1)
        method.start_epoch(epoch)
        bar = tqdm(
            batches, desc=f"epoch {epoch}", initial=progress.batch, total=len(batches),
            leave=False, unit="batch", disable=quiet,
        )  # fmt: skip
        for x, y in bar:
            where = f"{section}: epoch {epoch}, batch {progress.batch + 1}"
            total = len(y)
            if net is not model:  # this rank's share of the batch
                rows = distributed.shard(total)
                x, y = x[rows], y[rows]
            with _out_of_memory(where, f"{section}.optim.batch_size", cfg.batch_size):
                loss, logs = method.batch_loss(net, x, y)
                guard.record(epoch, progress.batch + 1, lr, loss, logs)
                opt.zero_grad(set_to_none=True)
                if net is model:
                    loss.backward()
                else:
                    (loss * distributed.loss_scale(len(y), total)).backward()
                opt.step()
                method.after_step()
            n = len(y)
            progress.batch += 1
            progress.count += n
            for k, v in logs.items():  # on the device, in float64 as Python floats would be
                progress.sums[k] = progress.sums.get(k, 0.0) + v.double() * n
            faults.hit("batch")
            stopping, due = distributed.any_rank(bool(stop), saver.due())
            if stopping or due:
                save(_global(progress))
            elif progress.batch % CHECK_EVERY == 0:
                guard.check(saved)
            if stopping:
                raise _interrupted(stop, where, saved)
        method.end_epoch(epoch)
        guard.check(saved)  # before the monitor judges this epoch's model
        whole = _global(progress)
        metrics = {k: float(v) / whole.count for k, v in whole.sums.items()}
        metrics.update(method.status())
        metrics["lr"] = lr
        try:
            with _out_of_memory(
                f"{section}: epoch {epoch}, monitor", f"{section}.monitor.batch_size", None
            ):
                checked = monitor(epoch)
            stopped_in_monitor = False
        except Stopped:
            checked, stopped_in_monitor = None, True
        if distributed.any_rank(stopped_in_monitor)[0]:
            save(whole)
            raise _interrupted(stop, f"{section}: epoch {epoch}, monitor", saved) from None
        if checked:
            metrics.update(checked)
        epochs.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k in _SHOWN})
        log.info("%s epoch %d/%d: %s", section, epoch, cfg.epochs, _fmt(metrics))
        on_epoch(epoch, metrics)
        progress = Progress(epoch)
        save(progress)
        if distributed.any_rank(bool(stop))[0]:
            raise _interrupted(stop, f"{section}: end of epoch {epoch}", saved)


def _global(progress: Progress) -> Progress:
    """``progress`` with its sums and count over every rank (itself with one process)."""
    if distributed.world() == 1:
        return progress
    local = {k: float(v) for k, v in progress.sums.items()}
    sums, count = distributed.sums(local, progress.count)
    return Progress(progress.epoch, progress.batch, sums, count)


_SHOWN = ("loss", "clean_acc", "pgd_acc", "tau_nat", "w_adv")


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


@contextmanager
def _out_of_memory(where: str, key: str, value: int | None) -> Iterator[None]:
    """Turn running out of device (or host) memory into one line naming the batch size."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        now = f" (now {value})" if value is not None else ""
        raise TrainingError(f"{where}: out of memory; lower {key}{now}") from None


def _interrupted(stop: Any, where: str, saved: str) -> Interrupted:
    if saved:
        kept = f"{saved} is saved"
    elif not distributed.is_main():
        kept = "rank 0 saves the state"
    else:
        kept = "no state is saved (run.state_dir is null)"
    # another rank's request (several processes) when this one got none
    name = getattr(stop, "name", "a stop request") if stop else "another process's stop request"
    return Interrupted(
        f"{where}: stopped by {name}; {kept}; run the same command again to continue",
        getattr(stop, "signum", 15) or 15,
    )
