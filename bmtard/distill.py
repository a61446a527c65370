"""The distillation stage: B-MTARD from the two teacher checkpoints to a new student."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bmtard.balance import Balance
from bmtard.checkpoint import CheckpointInfo, ModelSpec, TrainingRecord, load_model
from bmtard.config import DistillConfig, RunConfig, to_dict
from bmtard.errors import CheckpointError
from bmtard.execution import Execution
from bmtard.methods.b_mtard import BMTARD
from bmtard.provenance import code_version
from bmtard.selection import Selection
from bmtard.stage_data import StageData
from bmtard.stop import StopRequest
from bmtard.training_stage import Outputs, train_and_save

log = logging.getLogger(__name__)


def load_teacher(
    path: Path, num_classes: int, device: torch.device
) -> tuple[nn.Module, CheckpointInfo]:
    """A frozen teacher in eval mode, checked against the data's number of classes."""
    model, info = load_model(path, device)
    if info.spec.num_classes != num_classes:
        raise CheckpointError(
            f"{path}: teacher has {info.spec.num_classes} classes, the data has {num_classes}"
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
    outputs: Outputs,
    stop: StopRequest | None = None,
) -> Selection:
    """Distil a ``cfg.arch`` student with B-MTARD; save the selected epoch to ``outputs.model``."""
    ex = Execution.from_config(run, device)
    t_nat, nat_info = load_teacher(clean_teacher, data.num_classes, device)
    t_adv, adv_info = load_teacher(robust_teacher, data.num_classes, device)
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    student = spec.build().to(device)
    balance = Balance.from_config(cfg.balance, device)
    method = BMTARD(ex.teacher(t_adv), ex.teacher(t_nat), cfg.attack, balance, cfg.kl_reduction, ex)
    record = TrainingRecord(
        stage="distill",
        method="b_mtard",
        params=to_dict(cfg),
        data=data.splits,
        teachers={
            "clean": {"arch": nat_info.spec.arch, "sha256": nat_info.sha256},
            "robust": {"arch": adv_info.spec.arch, "sha256": adv_info.sha256},
        },
        code=code_version(),
    )
    return train_and_save(
        student,
        method,
        spec,
        data,
        section="distill",
        optim=cfg.optim,
        monitor=cfg.monitor,
        selection=cfg.checkpoint,
        run=run,
        device=device,
        outputs=outputs,
        record=record,
        execution=ex,
        stop=stop,
    )
