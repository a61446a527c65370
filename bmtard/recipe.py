"""What every training stage does around the loop: load data, monitor, log, select, save."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.accuracy import monitor as run_monitor
from bmtard.checkpoint import save_model
from bmtard.config import MonitorConfig, OptimConfig
from bmtard.datasets import Split, load_split
from bmtard.errors import DataError
from bmtard.loader import Batches
from bmtard.schedule import should_monitor
from bmtard.tracking import Tracker
from bmtard.train import Method, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageData:
    """The prepared splits and their manifest (from the download stage)."""

    train: Split
    test: Split
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @classmethod
    def load(cls, data_dir: str | Path) -> StageData:
        data_dir = Path(data_dir)
        mpath = data_dir / "manifest.json"
        if not mpath.is_file():
            raise DataError(f"{mpath}: not found; run the download stage first")
        manifest = json.loads(mpath.read_text())
        return cls(load_split(data_dir / "train.npz"), load_split(data_dir / "test.npz"), manifest)


@dataclass
class Selection:
    """Which epoch's model is kept: 'best' = highest (clean + PGD)/2 on the monitor (the official
    rule; with no PGD in the monitor, clean accuracy), or 'last'."""

    rule: str
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)

    def consider(self, epoch: int, epochs: int, metrics: dict[str, float]) -> bool:
        """True when the model of ``epoch`` becomes the selected one."""
        if self.rule == "last":
            chosen = epoch == epochs
        elif "clean_acc" not in metrics:
            return False
        else:
            score = (metrics["clean_acc"] + metrics.get("pgd_acc", metrics["clean_acc"])) / 2
            chosen = score > self.best_score
            if chosen:
                self.best_score = score
        if chosen:
            self.best_epoch = epoch
            self.best_metrics = dict(metrics)
        return chosen


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the model: architecture name, width multiplier, number of classes."""

    arch: str
    width: float
    num_classes: int

    def save(self, path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
        """Save ``model`` in our checkpoint format with this spec and ``meta`` (atomically)."""
        save_model(
            path, model, arch=self.arch, width=self.width, num_classes=self.num_classes, meta=meta
        )


def train_and_save(
    model: nn.Module,
    method: Method,
    spec: ModelSpec,
    data: StageData,
    *,
    optim: OptimConfig,
    monitor: MonitorConfig,
    selection: str,
    seed: int,
    device: torch.device,
    out_model: str | Path,
    tracker: Tracker,
    meta: dict[str, Any],
    desc: str,
) -> Selection:
    """Run ``fit``; log every epoch; save the selected epoch's model to ``out_model``.

    With 'best', the file is rewritten (atomically) each time the score improves, so it always
    holds a complete model. Returns the selection (epoch, score, metrics).
    """
    train_batches = Batches(
        data.train, optim.batch_size, device=device, shuffle=True, augment=True, seed=seed
    )
    sel = Selection(selection)

    def check(epoch: int) -> dict[str, float] | None:
        if not should_monitor(epoch, optim.epochs, monitor):
            return None
        return run_monitor(model, data.test, monitor, device, seed)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log(epoch, metrics)
        if sel.consider(epoch, optim.epochs, metrics):
            spec.save(
                out_model,
                model,
                {**meta, "epoch": epoch, "selection": selection, "selected_metrics": dict(metrics)},
            )

    log.info(
        "%s: %d train images, %d monitor images, %d epochs on %s",
        desc,
        train_batches.num_images,
        data.test.n_first(monitor.n_images),
        optim.epochs,
        device,
    )
    fit(model, method, train_batches, optim, monitor=check, on_epoch=on_epoch, desc=desc)
    tracker.summary(
        {
            "selected_epoch": sel.best_epoch,
            "selection": selection,
            **{
                f"selected_{k}": v
                for k, v in sel.best_metrics.items()
                if k in ("clean_acc", "pgd_acc")
            },
        }
    )
    return sel
