"""The distillation stage: the student by ``distill.method`` (B-MTARD, a baseline of the paper's
comparison or a newer method, ``bmtard.config.method_table``), with IGDM on it where
``distill.igdm.alpha`` > 0. Only the teachers the method learns from are loaded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bmtard.config import method_table
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.params import DistillConfig, RunConfig, to_dict
from bmtard.core import distributed
from bmtard.core.provenance import code_version
from bmtard.core.stop import StopRequest
from bmtard.data.loader import Batches
from bmtard.data.stage_data import StageData
from bmtard.methods.adaad import AdaAD
from bmtard.methods.adversarial import PGDAT, TRADES
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance, MTARDWeights
from bmtard.methods.baselines import ARD, MTARD, RSLAD
from bmtard.methods.ciard import CIARD
from bmtard.methods.dgad import DGAD
from bmtard.methods.igdm import IGDM
from bmtard.methods.peeraid import PeerAiD
from bmtard.models.checkpoint import (
    CheckpointInfo,
    ModelSpec,
    TrainingRecord,
    check_fits_data,
    check_role,
    load_model,
)
from bmtard.runtime.execution import Execution
from bmtard.training.loop import Method
from bmtard.training.schedule import lr_factor
from bmtard.training.selection import Selection
from bmtard.training.stage import Outputs, check_state_dir, train_and_save

log = logging.getLogger(__name__)

#: what the record of a teacher the method trained further says (CIARD's robust teacher)
FINE_TUNED = "by the method; its weights at the selected epoch are in the student's file"
#: teacher role -> model, only the roles the method learns from
Teachers = dict[str, nn.Module]


@dataclass(frozen=True)
class Build:
    """What a method is built from: the resolved config (no nulls), its teachers (frozen and
    prepared by ``execution``, but for those it fine-tunes, which come as loaded), the student,
    the data (PeerAiD's BatchNorm pass reads the training split) and the run's seed."""

    cfg: DistillConfig
    teachers: Teachers
    execution: Execution
    device: torch.device
    student: nn.Module
    data: StageData
    seed: int


def _sat(b: Build) -> Method:
    return PGDAT(b.cfg.attack, b.execution)


def _trades(b: Build) -> Method:
    return TRADES(b.cfg.attack, b.cfg.trades_beta, b.execution)


def _ard(b: Build) -> Method:
    c = b.cfg
    return ARD(b.teachers[ROBUST], c.attack, c.ard.temperature, c.ard.alpha, b.execution)


def _rslad(b: Build) -> Method:
    c = b.cfg
    return RSLAD(
        b.teachers[ROBUST], c.attack, kl_reduction=c.kl_reduction, execution=b.execution,
        kl_scale=c.kl_scale,
    )  # fmt: skip


def _mtard(b: Build) -> Method:
    c, t = b.cfg, b.teachers
    weights = MTARDWeights.start(c.balance.w_adv_init, c.balance.weight_lr, device=b.device)
    return MTARD(t[ROBUST], t[CLEAN], c.attack, weights, c.kl_reduction, b.execution, c.kl_scale)


def _bmtard(b: Build) -> Method:
    c, t = b.cfg, b.teachers
    balance = Balance.from_config(c.balance, b.device)
    return BMTARD(t[ROBUST], t[CLEAN], c.attack, balance, c.kl_reduction, b.execution, c.kl_scale)


def _adaad(b: Build) -> Method:
    c = b.cfg
    return AdaAD(b.teachers[ROBUST], c.attack, c.adaad.alpha, c.kl_reduction, b.execution)


def _dgad(b: Build) -> Method:
    c, d = b.cfg, b.cfg.dgad
    return DGAD(
        # its sums are divided by the batch size: each process divides by its share of it
        b.teachers[ROBUST], c.attack, batch_size=c.optim.batch_size // distributed.world(),
        beta=d.beta,
        fixed_divisor=d.fixed_divisor, bracket_bug=bool(d.bracket_bug),
        guard_all_st=d.guard_all_st, execution=b.execution,
    )  # fmt: skip


def _ciard(b: Build) -> Method:
    c, t, k = b.cfg, b.teachers, b.cfg.ciard
    return CIARD(
        t[ROBUST], t[CLEAN], c.attack, Balance.from_config(c.balance, b.device),
        teacher_lr=k.teacher_lr, teacher_momentum=k.teacher_momentum,
        teacher_weight_decay=k.teacher_weight_decay, teacher_from=k.teacher_from,
        teacher_until=c.optim.epochs, push_temperature=k.push_temperature,
        milestones=tuple(c.optim.milestones), rate_decay=c.optim.gamma, weighted=k.weighted,
        per_step_decay=k.per_step_decay, teacher_clean_pass=k.teacher_clean_pass,
        kl_reduction=c.kl_reduction, kl_scale=c.kl_scale,
        execution=b.execution,
    )  # fmt: skip


def _peeraid(b: Build) -> Method:
    """The peer (the student's architecture, initialised after the student from the run's
    seed), its lr the student's schedule, its BatchNorm pass a shuffled, augmented pass over the
    training split of its own (another seed than the training batches')."""
    c, p = b.cfg, b.cfg.peeraid
    spec = ModelSpec(c.arch, c.width, b.data.num_classes)
    peer = b.execution.student(spec.build().to(b.device))
    swa = b.execution.student(spec.build().to(b.device))
    passes = Batches(
        b.data.train, c.optim.batch_size, device=b.device, shuffle=True, augment=True,
        seed=b.seed + 1,
    )  # fmt: skip

    def bn_batches(epoch: int) -> Batches:
        passes.set_epoch(epoch)
        return passes

    return PeerAiD(
        b.student, peer, c.attack, lr_at=lambda e: c.optim.lr * lr_factor(e, c.optim),
        bn_batches=bn_batches, temperature=p.temperature, peer_temperature=p.peer_temperature,
        gamma1=p.gamma1, gamma2=p.gamma2, lambda1=p.lambda1, lambda2=p.lambda2,
        lambda3=p.lambda3, swa_from=p.swa_from, momentum=c.optim.momentum,
        weight_decay=c.optim.weight_decay, kl_reduction=c.kl_reduction,
        peer_kl_trains_student=p.peer_kl_trains_student,
        second_student_forward=p.second_student_forward, live_clean_target=p.live_clean_target,
        swa=swa, execution=b.execution, output_choice=p.output,
    )  # fmt: skip


#: distill.method -> the per-batch method (a test keeps the keys equal to method_table.NAMES)
BUILDERS: dict[str, Callable[[Build], Method]] = {
    "sat": _sat,
    "trades": _trades,
    "ard": _ard,
    "rslad": _rslad,
    "mtard": _mtard,
    "bmtard": _bmtard,
    "adaad": _adaad,
    "dgad": _dgad,
    "ciard": _ciard,
    "peeraid": _peeraid,
}


def build_method(
    cfg: DistillConfig,
    teachers: Teachers,
    ex: Execution,
    device: torch.device,
    student: nn.Module,
    data: StageData,
    seed: int,
) -> Method:
    """The per-batch method of ``cfg.method`` (``cfg`` resolved: no nulls), with its teachers
    prepared by ``ex`` (frozen, eval mode, precision and layout) but those it fine-tunes (as
    loaded), and IGDM on it where ``cfg.igdm.alpha`` > 0."""
    fine_tuned = method_table.method(cfg.method).fine_tunes
    prepared = {r: m if r in fine_tuned else ex.teacher(m) for r, m in teachers.items()}
    method = BUILDERS[cfg.method](Build(cfg, prepared, ex, device, student, data, seed))
    g = cfg.igdm
    if g.alpha > 0:
        method = IGDM(
            method, prepared[ROBUST], g.alpha, g.beta, g.gamma, g.ramp_epochs, g.clamp_minus
        )
    return method


def load_teacher(
    path: Path, role: str, data: StageData, device: torch.device
) -> tuple[nn.Module, CheckpointInfo]:
    """A frozen teacher in eval mode, checked to be the ``role`` teacher (``clean``/``robust``)
    made for the data's classes, image size and dataset."""
    model, info = load_model(path, device)
    check_role(path, info, f"{role}_teacher")
    check_fits_data(
        path, info, where="the data", num_classes=data.num_classes, image_size=data.image_size,
        dataset=data.dataset, what=f"the {role} teacher",
    )  # fmt: skip
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
    check_state_dir(run)
    cfg = cfg.resolved(data.dataset)
    ex = Execution.from_config(run, device)
    paths = {CLEAN: clean_teacher, ROBUST: robust_teacher}
    loaded = {
        role: load_teacher(paths[role], role, data, device)
        for role in method_table.method(cfg.method).teachers
    }
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    student = spec.build().to(device)
    teachers = {r: m for r, (m, _) in loaded.items()}
    method = build_method(cfg, teachers, ex, device, student, data, run.seed)
    fine_tuned = method_table.method(cfg.method).fine_tunes
    record = TrainingRecord(
        stage="distill",
        role="student",
        **data.model_fields(),
        method=cfg.method,
        params=to_dict(cfg),
        data=data.splits,
        teachers={
            role: {
                "arch": info.spec.arch,
                "sha256": info.sha256,
                # what it was made from: trained, or the file (and published teacher) imported
                "source": info.record.source,
                **({"published": info.record.published} if info.record.published else {}),
                **(
                    {"fine_tuned": "by the method; kept in the student's file"}
                    if role in fine_tuned
                    else {}
                ),
            }
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
