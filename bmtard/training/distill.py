"""The distillation stage: the student from its teachers, by ``distill.method`` (B-MTARD or a
baseline of the paper's comparison, ``bmtard.config.method_table``). Only the teachers the method
learns from are loaded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from bmtard.config import method_table
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.params import DistillConfig, RunConfig, to_dict
from bmtard.core.errors import CheckpointError
from bmtard.core.provenance import code_version
from bmtard.core.stop import StopRequest
from bmtard.data.stage_data import StageData
from bmtard.methods.adversarial import PGDAT, TRADES
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance, MTARDWeights
from bmtard.methods.baselines import ARD, MTARD, RSLAD
from bmtard.models.checkpoint import CheckpointInfo, ModelSpec, TrainingRecord, load_model
from bmtard.runtime.execution import Execution
from bmtard.training.loop import Method
from bmtard.training.selection import Selection
from bmtard.training.stage import Outputs, train_and_save

log = logging.getLogger(__name__)

#: teacher role -> model, only the roles the method learns from
Teachers = dict[str, nn.Module]


def _sat(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    return PGDAT(cfg.attack, ex)


def _trades(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    return TRADES(cfg.attack, cfg.trades_beta, ex)


def _ard(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    return ARD(t[ROBUST], cfg.attack, cfg.ard.temperature, cfg.ard.alpha, ex)


def _rslad(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    return RSLAD(
        t[ROBUST], cfg.attack, kl_reduction=cfg.kl_reduction, execution=ex, kl_scale=cfg.kl_scale
    )


def _mtard(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    b = cfg.balance
    weights = MTARDWeights.start(b.w_adv_init, b.weight_lr, device=device)
    return MTARD(t[ROBUST], t[CLEAN], cfg.attack, weights, cfg.kl_reduction, ex, cfg.kl_scale)


def _bmtard(cfg: DistillConfig, t: Teachers, ex: Execution, device: torch.device) -> Method:
    balance = Balance.from_config(cfg.balance, device)
    return BMTARD(t[ROBUST], t[CLEAN], cfg.attack, balance, cfg.kl_reduction, ex, cfg.kl_scale)


#: distill.method -> the per-batch method (a test keeps the keys equal to method_table.NAMES)
BUILDERS: dict[str, Callable[[DistillConfig, Teachers, Execution, torch.device], Method]] = {
    "sat": _sat,
    "trades": _trades,
    "ard": _ard,
    "rslad": _rslad,
    "mtard": _mtard,
    "bmtard": _bmtard,
}


def build_method(
    cfg: DistillConfig, teachers: Teachers, ex: Execution, device: torch.device
) -> Method:
    """The per-batch method of ``cfg.method`` (``cfg`` resolved: no nulls), with its teachers
    prepared by ``ex`` (frozen, eval mode, precision and layout)."""
    return BUILDERS[cfg.method](cfg, {r: ex.teacher(m) for r, m in teachers.items()}, ex, device)


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
    """Train a ``cfg.arch`` student with ``cfg.method``; save the selected epoch to
    ``outputs.model``. A teacher path is read only if the method learns from that teacher. Nulls
    in ``cfg`` take the method's and the data's dataset's values (``DistillConfig.resolved``)."""
    cfg = cfg.resolved(data.dataset)
    ex = Execution.from_config(run, device)
    paths = {CLEAN: clean_teacher, ROBUST: robust_teacher}
    loaded = {
        role: load_teacher(paths[role], data.num_classes, device)
        for role in method_table.method(cfg.method).teachers
    }
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    student = spec.build().to(device)
    method = build_method(cfg, {r: m for r, (m, _) in loaded.items()}, ex, device)
    record = TrainingRecord(
        stage="distill",
        method=cfg.method,
        params=to_dict(cfg),
        data=data.splits,
        teachers={
            role: {"arch": info.spec.arch, "sha256": info.sha256}
            for role, (_, info) in loaded.items()
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
