"""The distillation stage: B-MTARD from the two teacher checkpoints to a new student."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bmtard.balance import Balance
from bmtard.checkpoint import load_model
from bmtard.config import DistillConfig, RunConfig, to_dict
from bmtard.errors import CheckpointError
from bmtard.methods.b_mtard import BMTARD
from bmtard.models import build_model
from bmtard.recipe import ModelSpec, Selection, StageData, train_and_save
from bmtard.tracking import Tracker

log = logging.getLogger(__name__)


def load_teacher(
    path: Path, num_classes: int, device: torch.device
) -> tuple[torch.nn.Module, dict]:
    """A frozen teacher in eval mode, checked against the data's number of classes."""
    model, info = load_model(path, device)
    if info["num_classes"] != num_classes:
        raise CheckpointError(
            f"{path}: teacher has {info['num_classes']} classes, the data has {num_classes}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), info


def run_distill(
    run: RunConfig,
    cfg: DistillConfig,
    data: StageData,
    device: torch.device,
    clean_teacher: Path,
    robust_teacher: Path,
    out_model: Path,
    tracker: Tracker,
) -> Selection:
    """Distil a ``cfg.arch`` student with B-MTARD; save the selected epoch to ``out_model``."""
    t_nat, nat_info = load_teacher(clean_teacher, data.num_classes, device)
    t_adv, adv_info = load_teacher(robust_teacher, data.num_classes, device)
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    student = build_model(spec.arch, spec.num_classes, spec.width).to(device)
    method = BMTARD(t_adv, t_nat, cfg.attack, Balance.from_config(cfg.balance), cfg.kl_reduction)
    meta = {
        "stage": "distill",
        "method": "b_mtard",
        "params": to_dict(cfg),
        "teachers": {
            "clean": {"arch": nat_info["arch"], "sha256": nat_info["sha256"]},
            "robust": {"arch": adv_info["arch"], "sha256": adv_info["sha256"]},
        },
        "data_manifest": data.manifest.get("splits", {}),
    }
    return train_and_save(
        student,
        method,
        spec,
        data,
        optim=cfg.optim,
        monitor=cfg.monitor,
        selection=cfg.checkpoint,
        seed=run.seed,
        device=device,
        out_model=out_model,
        tracker=tracker,
        meta=meta,
        desc="distill",
    )
