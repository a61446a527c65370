"""The distillation stage: the student by ``distill.method`` (B-MTARD, a baseline of the paper's
comparison or a newer method, ``bmtard.config.method_table``; each built by its own module through
``bmtard.methods.registry``), with IGDM on it where ``distill.igdm.alpha`` > 0. Only the teachers
the method learns from are loaded."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bmtard.config import method_table
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.schema import DistillConfig, RunConfig, to_dict
from bmtard.core.distributed import on_main
from bmtard.core.provenance import code_version
from bmtard.core.stop import StopRequest
from bmtard.data.stage_data import StageData
from bmtard.methods import registry
from bmtard.methods.contract import Build, Method, Teachers
from bmtard.methods.igdm import IGDM
from bmtard.models.checkpoint import (
    CheckpointInfo,
    ModelSpec,
    TrainingRecord,
    check_fits_data,
    check_role,
    load_model,
)
from bmtard.runtime.execution import Execution
from bmtard.training.selection import Selection
from bmtard.training.stage import Outputs, check_state_dir, finished_before, train_and_save

log = logging.getLogger(__name__)


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
    method = registry.builder(cfg.method)(Build(cfg, prepared, ex, device, student, data, seed))
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
) -> Selection | None:
    """Train a ``cfg.arch`` student with ``cfg.method``; save the selected epoch to
    ``outputs.model``. A teacher path is read only if the method learns from that teacher. Nulls
    in ``cfg`` take the method's and the data's dataset's values (``DistillConfig.resolved``).
    None where this very run (the same key) already finished: its outputs are kept as they are
    (DVC reruns the stage after an edit of code it does not import, e.g. another method's)."""
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
    # here, with the method's module imported: the key hashes the code loaded so far
    if on_main(lambda: finished_before("distill", outputs, record, run)):
        return None
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
