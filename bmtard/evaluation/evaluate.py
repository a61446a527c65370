"""Evaluate a model with the protocol of ``bmtard.evaluation.protocol``: the pipeline's evaluate
stage, and a command for any checkpoint outside the pipeline. Both write the same files:

  metrics JSON     what runs are compared by, flat: accuracy (%) clean and per attack,
                   w_robust, the sanity verdict, the epoch of the weights (DVC metrics: the
                   columns of ``dvc exp show``)
  details JSON     every number: accuracies with the worst case, weighted robust accuracy per
                   attack, eps-curve, worst class, the teachers' accuracy, each sanity check
  eps_curve.csv    eps (1/255) -> PGD-20 accuracy (%)              (a DVC plot)
  per_class.csv    class -> clean and worst-case robust accuracy (%) (a DVC plot)
  model card       the numbers with what they were measured on (RobustBench-style fields)

Usage (``python -m bmtard evaluate`` is the same command):
  python -m bmtard.evaluation.evaluate --checkpoint models/student.pt --data data/test.npz \\
      --out eval/
  python -m bmtard.evaluation.evaluate --checkpoint model_cifar_wrn.pt --arch wrn34_10 \\
      --data data/test.npz --out eval-wrn/ --n-images 1000
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.config import attack_table, dataset_table, teacher_table
from bmtard.config.params import EvaluateConfig, load_params, parse_params, to_dict
from bmtard.core.errors import BmtardError, CheckpointError, ParamsError
from bmtard.core.io import sha256_file, write_atomic, write_json
from bmtard.core.paths import writable_folder
from bmtard.core.provenance import code_version
from bmtard.data.splits import Split, load_manifest, load_split
from bmtard.evaluation.accuracy import percent
from bmtard.evaluation.protocol import Evaluation, evaluate_model, protocol_attack
from bmtard.evaluation.runner import Runner, Task
from bmtard.models.checkpoint import (
    CheckpointInfo,
    ModelSpec,
    TrainingRecord,
    check_fits_data,
    check_role,
    import_state_dict,
    load_model,
)

log = logging.getLogger(__name__)

#: the dataset of a checkpoint evaluated without a manifest, by its number of classes
DATASET_BY_CLASSES = {d.num_classes: d.name for d in dataset_table.DATASETS}


def model_card(ev: Evaluation, info: CheckpointInfo, checkpoint: str, dataset: str) -> dict:
    """RobustBench-style description of one evaluated model, with what made it: the training
    record (stage, method, epoch, selection, teachers' and data SHA-256s, the training code)
    and the code and test data of this evaluation."""
    rec = info.record
    training = {
        "stage": rec.stage,
        "method": rec.method,
        "source": rec.source,
        "source_sha256": rec.source_sha256,
        "epoch": rec.epoch,
        "selection": rec.selection,
        "teachers": rec.teachers,
        "data_sha256": {k: v.get("sha256") for k, v in rec.data.items() if isinstance(v, dict)},
        "code": rec.code,
    }
    card = {
        "architecture": info.spec.arch,
        "width": info.spec.width,
        "num_classes": info.spec.num_classes,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": info.sha256,
        "training": {k: v for k, v in training.items() if v not in (None, {})},
        "evaluation_code": code_version(),
        "dataset": dataset,
        "threat_model": "Linf",
        "eps": f"{ev.protocol['eps']:g}/255",
        "n_test_points": ev.n_images,
        "additional_data": False,
        "clean_acc": ev.accuracy["clean"],
        "autoattack_acc": ev.accuracy.get("autoattack"),
        "attacks_acc": {k: v for k, v in ev.accuracy.items() if k != "clean"},
        "weighted_robust_acc": ev.weighted_robust,
        "autoattack_version": ev.protocol.get("autoattack", {}).get("version"),
        "autoattack_warnings": ev.autoattack_warnings,
        "eps_curve": ev.eps_curve,
        "per_class": ev.per_class,
        "protocol": ev.protocol,
    }
    if ev.checks:
        card["sanity"] = {c.name: {**c.as_dict(), "detail": c.detail} for c in ev.checks}
    return card


def _csv(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write_outputs(
    ev: Evaluation,
    *,
    metrics: str | Path,
    details: str | Path,
    card: dict,
    card_path: str | Path,
    plots: str | Path,
    selected_epoch: int | None = None,
    teachers: dict | None = None,
) -> None:
    """Write the metrics and details JSON, both plot CSVs and the model card (each atomically);
    then drop the evaluation's resume state. ``selected_epoch``: the epoch of the model's weights
    (its training record's; the metrics' ``epoch``); ``teachers``: role -> the teacher's clean
    and PGD_TRADES accuracy (%)."""
    plots = Path(plots)
    curve = [["eps", "accuracy"]] + [[e, v] for e, v in ev.eps_curve.items()]
    classes = [["class", "clean", "robust"]] + [
        [c, ev.per_class["clean"][c], ev.per_class["robust"][c]] for c in ev.per_class["clean"]
    ]
    for name, rows in (("eps_curve.csv", curve), ("per_class.csv", classes)):
        text = _csv(rows)
        write_atomic(plots / name, lambda tmp, text=text: tmp.write_text(text))
    headline = ev.metrics()
    if selected_epoch is not None:
        headline["epoch"] = selected_epoch
    write_json(
        details, {**ev.details(), **({"teachers": teachers} if teachers is not None else {})}
    )
    write_json(metrics, headline)
    write_json(card_path, card)
    ev.finish()


def fail_if_asked(ev: Evaluation, cfg: EvaluateConfig) -> None:
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
    """A teacher's clean and PGD_TRADES (PGD-20, step 0.003) accuracy (%)."""
    n = test.n_first(cfg.teacher_n_images or cfg.n_images)
    run = Runner(model.float(), test, batch_size=cfg.batch_size, device=device, seed=seed)
    clean = run.mask(Task("clean", None, n))
    pgd = run.mask(Task("pgd_trades", protocol_attack("pgd_trades", cfg.eps), n))
    return {"clean": percent(clean), "pgd_trades": percent(pgd), "n_images": n}


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
    *,
    checked: Sequence[tuple[str | Path, CheckpointInfo, str]] = (),
) -> tuple[Evaluation, Split, str]:
    """The protocol on a test split file; ``transfer`` = (model, info) to craft the transfer
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
    source, source_id = (transfer[0], transfer[1].sha256) if transfer is not None else (None, "")
    ev = evaluate_model(
        model,
        test,
        cfg,
        device,
        seed=seed,
        model_id=info.sha256,
        transfer_source=source,
        transfer_id=source_id,
        class_names=manifest.get("classes"),
    )
    n = info.spec.num_classes
    return ev, test, manifest.get("dataset") or DATASET_BY_CLASSES.get(n, f"{n} classes")


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
) -> None:
    """The evaluate stage: the protocol and sanity checks on the student (the robust teacher is
    the transfer source), a check of each teacher the student learnt from (its training record
    names them; a method without teachers gets no transfer check), then every output file."""
    check_resume_dir(cfg)
    model, info = load_model(student, device)
    check_role(student, info, "student")
    paths = {"clean": clean_teacher, "robust": robust_teacher}
    teachers = {
        role: load_model(paths[role], device) for role in paths if role in info.record.teachers
    }
    checked = [(student, info, "the student")]
    for role, (_, tinfo) in teachers.items():
        check_role(paths[role], tinfo, f"{role}_teacher")
        checked.append((paths[role], tinfo, f"the {role} teacher"))
    ev, test, dataset = evaluate_file(
        model, info, Path(data_dir) / "test.npz", cfg, device, seed, teachers.get("robust"),
        checked=checked,
    )  # fmt: skip
    numbers: dict[str, Any] = {}
    the_card = model_card(ev, info, student, dataset)
    the_card["teachers"] = {}
    for role, (teacher, tinfo) in teachers.items():
        acc = evaluate_teacher(teacher, test, cfg, device, seed)
        numbers[role] = {k: acc[k] for k in ("clean", "pgd_trades")}
        the_card["teachers"][role] = {
            "architecture": tinfo.spec.arch,
            "width": tinfo.spec.width,
            "checkpoint_sha256": tinfo.sha256,
            "source": tinfo.record.source,  # "trained", or the file it was imported from
            **published_numbers(tinfo.record.published, dataset),
            **acc,
        }
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


# --------------------------------------------------------------------------- command line


def _load_any(
    path: str, arch: str | None, width: float, num_classes: int, device: torch.device
) -> tuple[nn.Module, CheckpointInfo]:
    """Our checkpoint format, or (with ``arch``) a plain published state_dict."""
    if arch is None:
        return load_model(path, device)
    spec = ModelSpec(arch, width, num_classes)
    model = import_state_dict(path, spec).to(device)
    return model, CheckpointInfo(spec, sha256_file(path), TrainingRecord(source=path))


def _config(args: argparse.Namespace) -> tuple[EvaluateConfig, int, str]:
    """The evaluate section (from --params, or the paper protocol), with the flags on top."""
    raw: dict[str, Any] = {}
    if args.params:
        params = load_params(args.params)
        raw = to_dict(params.evaluate)
        seed, device = params.run.seed, params.run.device
    else:
        seed, device = 0, "auto"
    for flag, key in (("n_images", "n_images"), ("eps", "eps"), ("batch_size", "batch_size")):
        if getattr(args, flag) is not None:
            raw[key] = getattr(args, flag)
    if args.attacks is not None:
        raw["attacks"] = [a for a in args.attacks.split(",") if a]
    if args.no_sanity:
        raw.setdefault("sanity", {})["enabled"] = False
    seed = args.seed if args.seed is not None else seed
    device = args.device or device
    try:
        params = parse_params(
            {"evaluate": raw, "run": {"device": device, "seed": seed}}, complete=False
        )
    except ParamsError as e:
        raise ParamsError(f"command line: {e}") from None
    return params.evaluate, seed, params.run.device


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.runtime.cli import run_main

    p = argparse.ArgumentParser(
        prog="python -m bmtard evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, help="bmtard model file, or a state_dict (--arch)"
    )
    p.add_argument("--arch", help="architecture of a plain state_dict (e.g. wrn34_10)")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (with --arch)")
    p.add_argument("--num-classes", type=int, default=10, help="classes (with --arch)")
    p.add_argument("--data", required=True, help="test split written by the download stage")
    p.add_argument(
        "--out", required=True, help="folder for evaluate.json, details.json and the plot CSVs"
    )
    p.add_argument("--card", help="model card path (default: next to the checkpoint)")
    p.add_argument("--params", help="take the protocol from this file's evaluate section")
    p.add_argument("--transfer-from", help="checkpoint to craft the transfer attack on")
    p.add_argument("--n-images", type=int)
    p.add_argument("--eps", type=float, help="L-inf budget in 1/255 (default 8)")
    p.add_argument("--attacks", help=f"comma-separated, from: {','.join(attack_table.NAMES)}")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)

    def body() -> None:
        from bmtard.runtime.device import resolve_device

        cfg, seed, device_name = _config(args)
        device = resolve_device(device_name)
        check_resume_dir(cfg)
        model, info = _load_any(args.checkpoint, args.arch, args.width, args.num_classes, device)
        source = load_model(args.transfer_from, device) if args.transfer_from else None
        checked = [(args.checkpoint, info, "the model")]
        if source is not None:
            checked.append((args.transfer_from, source[1], "the transfer source"))
        ev, _, dataset = evaluate_file(
            model, info, args.data, cfg, device, seed, source, checked=checked
        )
        card_path = args.card or Path(args.checkpoint).with_suffix(".card.json")
        out = Path(args.out)
        write_outputs(
            ev,
            metrics=out / "evaluate.json",
            details=out / "details.json",
            card=model_card(ev, info, args.checkpoint, dataset),
            card_path=card_path,
            plots=out,
            selected_epoch=info.record.epoch,
        )
        log.info("wrote %s and %s", out / "evaluate.json", card_path)
        fail_if_asked(ev, cfg)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
