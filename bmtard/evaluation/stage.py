"""The evaluate stage: the protocol of ``bmtard.evaluation.protocol`` on the student, a check of
each teacher it learnt from, then every output file (``bmtard.evaluation.writers``). Also what
the any-checkpoint command (``bmtard.evaluation.command``) shares with it: a test split file
evaluated with resume, the checks that a model fits the test images, and the sanity verdict's
rule."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.config import attack_table, dataset_table, teacher_table
from bmtard.config.schema import EvaluateConfig
from bmtard.core.cost import Cost, CostMeter, cost_path, read_cost, write_cost
from bmtard.core.errors import BmtardError, CheckpointError
from bmtard.core.paths import writable_folder
from bmtard.data.splits import Split, load_manifest, load_split
from bmtard.evaluation.accuracy import percent
from bmtard.evaluation.card import ModelCard
from bmtard.evaluation.protocol import Evaluation, evaluate_model, evaluation_key, protocol_attack
from bmtard.evaluation.runner import ResumeState, Runner, Task, resumable
from bmtard.evaluation.writers import write_outputs
from bmtard.models.checkpoint import CheckpointInfo, check_fits_data, check_role, load_model

log = logging.getLogger(__name__)

#: the dataset of a checkpoint evaluated without a manifest, by its number of classes
DATASET_BY_CLASSES = {d.num_classes: d.name for d in dataset_table.DATASETS}


def fail_if_asked(ev: Evaluation, cfg: EvaluateConfig) -> None:
    """A failed sanity check fails the stage where ``evaluate.sanity.fail_stage`` asks for it
    (after every output is written)."""
    failed = [c.name for c in ev.checks if c.passed is False]
    if failed and cfg.sanity.fail_stage:
        raise BmtardError(
            f"sanity checks failed: {', '.join(failed)} (evaluate.sanity.fail_stage is true; "
            "the results are written)"
        )


def check_resume_dir(cfg: EvaluateConfig) -> None:
    """Fail before any work if ``evaluate.resume_dir`` cannot be created or written."""
    writable_folder(cfg.resume_dir, "evaluate.resume_dir", ", or null to evaluate without resuming")


def evaluate_teacher(
    model: nn.Module, test: Split, cfg: EvaluateConfig, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """A teacher's clean accuracy and its accuracy under the table's teacher check (PGD_TRADES:
    PGD-20, step 0.003), in %, on ``evaluate.teacher_n_images``."""
    n = test.n_first(cfg.teacher_n_images or cfg.n_images)
    name = attack_table.the("teacher_check")
    run = Runner(model.float(), test, batch_size=cfg.batch_size, device=device, seed=seed)
    clean = run.mask(Task("clean", None, n))
    robust = run.mask(Task(name, protocol_attack(name, cfg.eps), n))
    return {"clean": percent(clean), name: percent(robust), "n_images": n}


def check_fits_test(
    path: str | Path,
    info: CheckpointInfo,
    test_path: str | Path,
    test: Split,
    manifest: dict[str, Any],
    what: str = "a model",
) -> None:
    """Refuse a model made for other images than the test split: another number of classes (the
    manifest's, or without one a label beyond the model's classes), or another image size or
    dataset than its record names. One line naming the file."""
    n = info.spec.num_classes
    top = int(test.labels.max()) if len(test) else -1
    if not manifest and top >= n:
        raise CheckpointError(f"{path}: {what} of {n} classes, and {test_path} has label {top}")
    check_fits_data(
        path, info, where=str(test_path), num_classes=int(manifest.get("num_classes", n)),
        image_size=int(test.images.shape[1]), dataset=manifest.get("dataset"), what=what,
    )  # fmt: skip


def evaluate_file(
    model: nn.Module,
    info: CheckpointInfo,
    test_path: str | Path,
    cfg: EvaluateConfig,
    device: torch.device,
    seed: int,
    transfer: tuple[nn.Module, CheckpointInfo] | None,
    open_state: Callable[[str], ResumeState],
    *,
    checked: Sequence[tuple[str | Path, CheckpointInfo, str]] = (),
) -> tuple[Evaluation, Split, str]:
    """The protocol on a test split file, resumable through the caller's ``open_state``
    (``bmtard.evaluation.runner.resumable``); ``transfer`` = (model, info) to craft the transfer
    attack on. Class names and dataset come from the manifest beside the file when there is one
    (else from the model's number of classes). Before any attack, every model of ``checked``
    ((path, info, what) of the model, the transfer source, the teachers) must fit the test
    images (``check_fits_test``)."""
    manifest = {}
    if Path(test_path).with_name("manifest.json").is_file():
        manifest = load_manifest(Path(test_path).parent)
    expected = manifest.get("splits", {}).get(Path(test_path).stem, {}).get("sha256")
    test = load_split(test_path, expected)
    for path, model_info, what in checked:
        check_fits_test(path, model_info, test_path, test, manifest, what)
    source, source_id = (transfer[0], transfer[1].sha256) if transfer is not None else (None, None)
    state = open_state(evaluation_key(cfg, test, seed, info.sha256, source_id))
    ev = evaluate_model(
        model,
        test,
        cfg,
        device,
        seed=seed,
        state=state,
        transfer_source=source,
        class_names=manifest.get("classes"),
    )
    n = info.spec.num_classes
    return ev, test, manifest.get("dataset") or DATASET_BY_CLASSES.get(n, f"{n} classes")


def costs(student: str, teachers: dict[str, str], evaluation: Cost) -> dict[str, Any]:
    """What made and measured the student cost, for its card: its training, each of its
    teachers' (training or import), this evaluation (None where a file has no cost beside it)."""

    def of(model: str) -> dict[str, Any] | None:
        found = read_cost(cost_path(model))
        return None if found is None else found.as_dict()

    return {
        "training": of(student),
        "teachers": {role: of(path) for role, path in teachers.items()},
        "evaluation": evaluation.as_dict(),
    }


def published_numbers(name: str | None, dataset: str | None) -> dict[str, Any]:
    """A published teacher's name and published accuracies (%), for its model card entry ({}
    for a teacher trained here or imported from a file by path alone)."""
    if name is None or dataset is None or (dataset, name) not in teacher_table.BY_KEY:
        return {}
    t = teacher_table.teacher(name, dataset)
    return {
        "published": name,
        "published_clean": t.clean,
        "published_autoattack": t.autoattack,
        "published_by": t.reported_by,
    }


def evaluate_pipeline(
    cfg: EvaluateConfig,
    seed: int,
    device: torch.device,
    *,
    data_dir: str,
    student: str,
    clean_teacher: str,
    robust_teacher: str,
    metrics: str,
    details: str,
    card: str,
    plots: str,
    cost: str,
    param_grads: bool = True,
) -> None:
    """The evaluate stage: the protocol and sanity checks on the student (the robust teacher is
    the transfer source), a check of each teacher the student learnt from (its training record
    names them; a method without teachers gets no transfer check), then every output file (the
    card with what every stage cost: the ``.cost.json`` beside each model, and the evaluation's
    own, written to ``cost``); the resume state is dropped once they are written.
    ``param_grads`` False (``run.attack_no_param_grads``): every model's parameters are frozen,
    which changes no input gradient, so no number (tests/test_attack_fast_path.py)."""
    check_resume_dir(cfg)
    meter = CostMeter("evaluate", device)
    model, info = load_model(student, device)
    check_role(student, info, "student")
    paths = {"clean": clean_teacher, "robust": robust_teacher}
    teachers = {
        role: load_model(paths[role], device) for role in paths if role in info.record.teachers
    }
    if not param_grads:
        for net in (model, *(t for t, _ in teachers.values())):
            net.requires_grad_(False)
    checked = [(student, info, "the student")]
    for role, (_, tinfo) in teachers.items():
        check_role(paths[role], tinfo, f"{role}_teacher")
        checked.append((paths[role], tinfo, f"the {role} teacher"))
    with resumable(cfg.resume_dir) as open_state:
        ev, test, dataset = evaluate_file(
            model, info, Path(data_dir) / "test.npz", cfg, device, seed, teachers.get("robust"),
            open_state, checked=checked,
        )  # fmt: skip
        numbers: dict[str, Any] = {}
        the_card = ModelCard.of(ev, info, student, dataset)
        the_card.teachers = {}
        for role, (teacher, tinfo) in teachers.items():
            acc = evaluate_teacher(teacher, test, cfg, device, seed)
            numbers[role] = {k: v for k, v in acc.items() if k != "n_images"}
            the_card.teachers[role] = {
                "architecture": tinfo.spec.arch,
                "width": tinfo.spec.width,
                "checkpoint_sha256": tinfo.sha256,
                "source": tinfo.record.source,  # "trained", or the file it was imported from
                **published_numbers(tinfo.record.published, dataset),
                **acc,
            }
        spent = meter.cost(images=ev.n_images)
        write_cost(cost, spent)
        the_card.cost = costs(student, {r: paths[r] for r in teachers}, spent)
        write_outputs(
            ev,
            metrics=metrics,
            details=details,
            card=the_card,
            card_path=card,
            plots=plots,
            selected_epoch=info.record.epoch,
            teachers=numbers,
        )
    log.info("wrote %s, %s, %s and the plots in %s", metrics, details, card, plots)
    fail_if_asked(ev, cfg)
