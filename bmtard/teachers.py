"""The two teacher stages: train a teacher, or take a published checkpoint instead."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bmtard.accuracy import monitor as run_monitor
from bmtard.checkpoint import import_state_dict
from bmtard.config import CleanTeacherConfig, RobustTeacherConfig, RunConfig, to_dict
from bmtard.io import sha256_file
from bmtard.methods.adversarial import PGDAT, TRADES
from bmtard.methods.standard import Standard
from bmtard.models import build_model
from bmtard.recipe import ModelSpec, StageData, train_and_save
from bmtard.tracking import Tracker

log = logging.getLogger(__name__)

TeacherConfig = CleanTeacherConfig | RobustTeacherConfig


def _use_checkpoint(
    cfg: TeacherConfig,
    spec: ModelSpec,
    data: StageData,
    device: torch.device,
    out_model: Path,
    tracker: Tracker,
    section: str,
) -> None:
    """Import ``cfg.checkpoint`` (weights_only, strict keys), check it once on the monitor
    images, and save it in our format."""
    assert cfg.checkpoint is not None
    model = import_state_dict(cfg.checkpoint, spec.arch, spec.num_classes, spec.width).to(device)
    metrics = run_monitor(model, data.test, cfg.monitor, device)
    log.info("%s: imported %s: %s", section, cfg.checkpoint, metrics)
    tracker.log(0, metrics)
    tracker.summary({"source": "checkpoint", **metrics})
    spec.save(
        out_model,
        model,
        {
            "stage": section,
            "source": str(cfg.checkpoint),
            "source_sha256": sha256_file(cfg.checkpoint),
            "params": to_dict(cfg),
            "selected_metrics": metrics,
        },
    )


def _teacher(
    section: str,
    method: object,
    run: RunConfig,
    cfg: TeacherConfig,
    data: StageData,
    device: torch.device,
    out_model: Path,
    tracker: Tracker,
) -> None:
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    if cfg.checkpoint is not None:
        _use_checkpoint(cfg, spec, data, device, out_model, tracker, section)
        return
    model: nn.Module = build_model(spec.arch, spec.num_classes, spec.width).to(device)
    train_and_save(
        model,
        method,
        spec,
        data,
        optim=cfg.optim,
        monitor=cfg.monitor,
        selection="last",
        seed=run.seed,
        device=device,
        out_model=out_model,
        tracker=tracker,
        meta={
            "stage": section,
            "source": "trained",
            "params": to_dict(cfg),
            "data_manifest": data.manifest.get("splits", {}),
        },
        desc=section,
    )


def train_clean_teacher(
    run: RunConfig,
    cfg: CleanTeacherConfig,
    data: StageData,
    device: torch.device,
    out_model: Path,
    tracker: Tracker,
) -> None:
    """Standard training of the clean teacher (or import of ``cfg.checkpoint``)."""
    _teacher("clean_teacher", Standard(), run, cfg, data, device, out_model, tracker)


def train_robust_teacher(
    run: RunConfig,
    cfg: RobustTeacherConfig,
    data: StageData,
    device: torch.device,
    out_model: Path,
    tracker: Tracker,
) -> None:
    """TRADES or PGD-AT training of the robust teacher (or import of ``cfg.checkpoint``)."""
    method = TRADES(cfg.attack, cfg.trades_beta) if cfg.method == "trades" else PGDAT(cfg.attack)
    _teacher("robust_teacher", method, run, cfg, data, device, out_model, tracker)
