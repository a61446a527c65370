"""The two teacher stages: train a teacher, or import one instead (a published teacher by name, or
any state_dict file: ``bmtard.training.teacher_import``); neither when no method of the run learns
from it (``bmtard.config.method_table``): the stage then writes a file in
the model's place, and curves, that say no teacher was trained."""

from __future__ import annotations

import dataclasses
import logging

import torch

from bmtard.config import method_table
from bmtard.config.schema import CleanTeacherConfig, RobustTeacherConfig, RunConfig, to_dict
from bmtard.core.cost import Cost, CostMeter, write_cost
from bmtard.core.distributed import on_main
from bmtard.core.io import sha256_file
from bmtard.core.outputs import keep_last_good, last_good_copy
from bmtard.core.provenance import code_version
from bmtard.core.stop import StopRequest
from bmtard.data.stage_data import StageData
from bmtard.evaluation.accuracy import monitor as run_monitor
from bmtard.methods.sat import PGDAT
from bmtard.methods.standard import Standard
from bmtard.methods.trades import TRADES
from bmtard.models.checkpoint import (
    ModelSpec,
    TrainingRecord,
    import_state_dict,
    save_no_model,
    saved_record,
)
from bmtard.runtime.execution import Execution
from bmtard.training.stage import (
    Outputs,
    check_state_dir,
    finish,
    finished_before,
    result_key,
    run_record,
    state_root,
    train_and_save,
    write_model,
)
from bmtard.training.teacher_import import (
    TeacherConfig,
    far_from_published,
    published_of,
    teacher_file,
)
from bmtard.training.tracking import Tracker

log = logging.getLogger(__name__)


def write_not_needed(
    section: str, outputs: Outputs, methods: tuple[str, ...], run: RunConfig | None = None
) -> None:
    """The outputs of a teacher stage whose teacher none of ``methods`` learns from: a file in
    the model's place that names them (loading it fails with that reason), and curves of one
    point, trained = 0 (no empty folders: git would not keep them for DVC). A model already
    there (a trained teacher, e.g. when the stage is run by hand with such a method) is first
    kept with its curves as the last good outputs (under ``run.state_dir``), and one line says
    so: a method that learns from it puts it back without training."""
    names = ", ".join(methods)
    reason = f"{section}: no teacher was trained: no method it was run for ({names}) learns from it"
    if saved_record(outputs.model) is not None:
        root = None if run is None else state_root(run)
        if root is None:
            kept = "it is not kept (run.state_dir is null)"
        else:
            keep_last_good([p for p in outputs.kept() if p.exists()], root / "last-good")
            kept = f"the trained one is kept in {last_good_copy(outputs.model, root / 'last-good')}"
        log.warning(
            "%s: %s held a trained model; it is replaced by a placeholder (distill.method %s "
            "learns from no %s); %s", section, outputs.model, names, section.replace("_", " "),
            kept,
        )  # fmt: skip
    with Tracker(outputs.live, outputs.tb) as tracker:
        tracker.log(0, {"trained": 0.0})
        tracker.summary({"trained": False, "reason": reason})
    save_no_model(outputs.model, reason)
    write_cost(outputs.cost, Cost(section, notes={"trained": False}))
    log.info("%s; wrote %s in the model's place", reason, outputs.model)


def _import(
    section: str,
    cfg: TeacherConfig,
    spec: ModelSpec,
    run: RunConfig,
    data: StageData,
    device: torch.device,
    outputs: Outputs,
) -> None:
    """Import ``cfg.checkpoint`` or the published teacher ``cfg.published`` (weights_only,
    strict keys), measure it once on the monitor images (one line when a published teacher
    measures far from its published accuracy), and save it in our format. A finished import of
    the same file (the same bytes), parameters, data and code is kept."""
    path, named = teacher_file(section, cfg, data.dataset)
    entry = published_of(cfg, data.dataset, section)
    record = TrainingRecord(
        stage=section,
        role=section,
        **data.model_fields(),
        source=named,
        source_sha256=sha256_file(path),
        params=to_dict(cfg),
        data=data.splits,
        code=code_version(),
        published=None if entry is None else entry.name,
    )
    if finished_before(section, outputs, record, run):
        return
    meter = CostMeter(section, device)
    model = import_state_dict(path, spec).to(device)
    metrics = run_monitor(model, data.test, cfg.monitor, device)
    log.info("%s: imported %s: %s", section, named, metrics)
    if entry is not None:
        n = data.test.n_first(cfg.monitor.n_images)
        far = far_from_published(entry, metrics, n)
        if far:
            log.warning(
                "%s: %s measures far from its published accuracy on %d test images: %s; a "
                "wrong file, input normalization or data shows up so (%s)", section,
                entry.name, n, "; ".join(far), entry.reported_by,
            )  # fmt: skip
    record = dataclasses.replace(
        record, run=run_record(run, section), selected_metrics=metrics, key=None
    )
    record = dataclasses.replace(record, key=result_key(section, record))
    with Tracker(outputs.live, outputs.tb) as tracker:
        tracker.log(0, metrics)
        tracker.summary(
            {"source": "published" if entry else "checkpoint", "file": named, **metrics}
        )
        write_model(section, outputs.model, spec, model.state_dict(), record)
    n = data.test.n_first(cfg.monitor.n_images)
    write_cost(outputs.cost, meter.cost(images=n * (2 if "pgd_acc" in metrics else 1)))
    finish(outputs, run, None)


def _teacher(
    section: str,
    method_name: str,
    method: Standard | TRADES | PGDAT,
    run: RunConfig,
    cfg: TeacherConfig,
    data: StageData,
    device: torch.device,
    outputs: Outputs,
    stop: StopRequest | None,
    methods: tuple[str, ...],
) -> None:
    check_state_dir(run)
    cfg = cfg.resolved(data.dataset)  # a null arch: the dataset's teacher
    spec = ModelSpec(cfg.arch, cfg.width, data.num_classes)
    role = section.removesuffix("_teacher")
    record = TrainingRecord(
        stage=section, role=section, **data.model_fields(), method=method_name,
        params=to_dict(cfg), data=data.splits, code=code_version(),
    )  # fmt: skip
    # what writes without training runs on rank 0 alone when there are several processes
    imported = cfg.checkpoint is not None or cfg.published is not None
    if not imported and on_main(lambda: finished_before(section, outputs, record, run)):
        return  # e.g. rerun because distill.method changed to another method with this teacher
    if not method_table.needs(methods, role):
        on_main(lambda: write_not_needed(section, outputs, methods, run))
        return
    if imported:
        on_main(lambda: _import(section, cfg, spec, run, data, device, outputs))
        return
    train_and_save(
        spec.build().to(device),
        method,
        spec,
        data,
        section=section,
        optim=cfg.optim,
        monitor=cfg.monitor,
        selection="last",
        run=run,
        device=device,
        outputs=outputs,
        record=record,
        execution=method.execution,
        stop=stop,
    )


def train_clean_teacher(
    run: RunConfig,
    cfg: CleanTeacherConfig,
    data: StageData,
    device: torch.device,
    outputs: Outputs,
    stop: StopRequest | None = None,
    methods: tuple[str, ...] = ("bmtard",),
) -> None:
    """Standard training of the clean teacher (or import of ``cfg.checkpoint``), if one of
    ``methods`` (``distill.method`` values) learns from it."""
    method = Standard(Execution.from_config(run, device))
    _teacher("clean_teacher", "standard", method, run, cfg, data, device, outputs, stop, methods)


def train_robust_teacher(
    run: RunConfig,
    cfg: RobustTeacherConfig,
    data: StageData,
    device: torch.device,
    outputs: Outputs,
    stop: StopRequest | None = None,
    methods: tuple[str, ...] = ("bmtard",),
) -> None:
    """TRADES or PGD-AT training of the robust teacher (or import of ``cfg.checkpoint``), if one
    of ``methods`` (``distill.method`` values) learns from it."""
    ex = Execution.from_config(run, device)
    method = (
        TRADES(cfg.attack, cfg.trades_beta, ex) if cfg.method == "trades" else PGDAT(cfg.attack, ex)
    )
    _teacher("robust_teacher", cfg.method, method, run, cfg, data, device, outputs, stop, methods)
