"""The evaluation protocol (spec section 6.2) and a command to run it on any checkpoint.

Every accuracy is measured in fp32 with the model in eval mode, on the first ``n_images`` test
images, at L-inf eps (in 1/255):
  clean; FGSM (one step of eps); PGD_SAT (PGD-20, step 2/255, uniform start, CE);
  PGD_TRADES (PGD-20, step 0.003, uniform start, CE); CW_inf (CW margin loss with kappa, L-inf
  PGD-30, step 2/255, uniform start); AutoAttack standard (reference pyautoattack code).
Weighted robust accuracy per attack = (clean + attack) / 2. All accuracies in %.

Usage (outside the pipeline):
  python -m bmtard.evaluate --checkpoint models/student.pt --data data/test.npz --out eval.json
  python -m bmtard.evaluate --checkpoint model_cifar_wrn.pt --arch wrn34_10 --data data/test.npz ...
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bmtard.accuracy import Attack, correct, percent
from bmtard.attacks.autoattack import autoattack, autoattack_version
from bmtard.attacks.cw import cw_inf
from bmtard.attacks.fgsm import fgsm
from bmtard.attacks.pgd import pgd_ce
from bmtard.checkpoint import import_state_dict, load_model
from bmtard.config import EVAL_ATTACKS, EvaluateConfig
from bmtard.datasets import Split, load_split
from bmtard.io import sha256_file, write_json
from bmtard.loader import Batches

log = logging.getLogger(__name__)


def protocol_attack(name: str, eps: float, cw_kappa: float = 50.0, seed: int = 0) -> Attack:
    """The named attack of the protocol with its fixed settings; eps in 1/255."""
    e = eps / 255
    if name == "fgsm":
        return functools.partial(fgsm, eps=e)
    if name == "pgd_sat":
        return functools.partial(pgd_ce, eps=e, step_size=2 / 255, steps=20, init="uniform")
    if name == "pgd_trades":
        return functools.partial(pgd_ce, eps=e, step_size=0.003, steps=20, init="uniform")
    if name == "cw_inf":
        return functools.partial(cw_inf, eps=e, step_size=2 / 255, steps=30, kappa=cw_kappa)
    if name == "autoattack":
        return functools.partial(autoattack, eps=e, version="standard", seed=seed)
    raise ValueError(f"attack {name!r}: allowed are {', '.join(EVAL_ATTACKS)}")


def seeded(attack: Attack, seed: int) -> Attack:
    """Run ``attack`` with the global RNG seeded, so random starts repeat exactly."""

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        torch.manual_seed(seed)
        return attack(model, x, y)

    return run


def accuracies(
    model: nn.Module,
    batches: Batches,
    attacks: Sequence[str],
    *,
    eps: float,
    cw_kappa: float = 50.0,
    seed: int = 0,
) -> dict[str, float]:
    """Clean and per-attack accuracy (%) of ``model`` on ``batches``."""
    model = model.float().eval()
    out = {"clean": percent(correct(model, batches))}
    for name in attacks:
        attack = seeded(protocol_attack(name, eps, cw_kappa, seed), seed)
        out[name] = percent(correct(model, batches, attack))
        log.info("%s: %.2f%%", name, out[name])
    return out


def evaluate_student(
    model: nn.Module, test: Split, cfg: EvaluateConfig, device: torch.device, seed: int = 0
) -> dict[str, Any]:
    """The full protocol: accuracies and weighted robust accuracies."""
    batches = Batches(test, cfg.batch_size, device=device, limit=cfg.n_images)
    acc = accuracies(model, batches, cfg.attacks, eps=cfg.eps, cw_kappa=cfg.cw_kappa, seed=seed)
    weighted = {a: (acc["clean"] + acc[a]) / 2 for a in cfg.attacks}
    protocol = {
        "threat_model": "Linf",
        "eps": cfg.eps,
        "eps_unit": "1/255",
        "n_images": batches.num_images,
        "precision": "fp32",
        "attacks": list(cfg.attacks),
        "cw_kappa": cfg.cw_kappa,
        "seed": seed,
    }
    if "autoattack" in cfg.attacks:
        protocol["autoattack"] = {
            "package": "pyautoattack",
            "version": autoattack_version(),
            "mode": "standard",
        }
    return {"protocol": protocol, "accuracy": acc, "weighted_robust": weighted}


def evaluate_teacher(
    model: nn.Module, test: Split, cfg: EvaluateConfig, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """A teacher's clean and PGD_TRADES (PGD-20, step 0.003) accuracy (%)."""
    n = cfg.teacher_n_images or cfg.n_images
    batches = Batches(test, cfg.batch_size, device=device, limit=n)
    out = accuracies(model, batches, ["pgd_trades"], eps=cfg.eps, seed=seed)
    return {**out, "n_images": batches.num_images}


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
    card: str,
) -> None:
    """The evaluate stage: the protocol on the student and a check of both teachers.

    ``metrics``: the numbers only (accuracies in %), for ``dvc metrics`` / ``dvc exp show``;
    ``card``: the same numbers with what they were measured on (model, checkpoint hash, protocol).
    """
    test = load_split(Path(data_dir) / "test.npz")
    model, info = load_model(student, device)
    result = evaluate_student(model, test, cfg, device, seed)
    numbers: dict[str, Any] = {
        "accuracy": result["accuracy"],
        "weighted_robust": result["weighted_robust"],
        "teachers": {},
    }
    details: dict[str, Any] = {}
    for role, path in (("clean", clean_teacher), ("robust", robust_teacher)):
        teacher, tinfo = load_model(path, device)
        acc = evaluate_teacher(teacher, test, cfg, device, seed)
        numbers["teachers"][role] = {k: acc[k] for k in ("clean", "pgd_trades")}
        details[role] = {
            "arch": tinfo["arch"],
            "width": tinfo["width"],
            "sha256": tinfo["sha256"],
            "n_images": acc["n_images"],
        }
    meta = info["meta"]
    write_json(metrics, numbers)
    write_json(
        card,
        {
            "model": {
                "arch": info["arch"],
                "width": info["width"],
                "num_classes": info["num_classes"],
                "checkpoint": str(student),
                "sha256": info["sha256"],
                "epoch": meta.get("epoch"),
                "selection": meta.get("selection"),
            },
            "protocol": result["protocol"],
            **numbers,
            "teacher_details": details,
        },
    )
    log.info("wrote %s and %s", metrics, card)


# --------------------------------------------------------------------------- command line


def _load_any(
    path: str, arch: str | None, width: float, num_classes: int, device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """Our checkpoint format, or (with ``arch``) a plain published state_dict."""
    if arch is None:
        return load_model(path, device)
    model = import_state_dict(path, arch, num_classes, width).to(device)
    return model, {
        "arch": arch,
        "width": width,
        "num_classes": num_classes,
        "sha256": sha256_file(path),
        "meta": {"source": path},
    }


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.cli import run_main  # the CLI helpers are not needed to import this module

    p = argparse.ArgumentParser(
        prog="python -m bmtard.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, help="bmtard model file, or a state_dict with --arch"
    )
    p.add_argument("--arch", default=None, help="architecture of a plain state_dict")
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (with --arch)")
    p.add_argument("--num-classes", type=int, default=10, help="classes (with --arch)")
    p.add_argument("--data", required=True, help="a test split file written by the download stage")
    p.add_argument("--out", required=True, help="where to write the metrics JSON")
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--eps", type=float, default=8.0, help="L-inf budget in 1/255")
    p.add_argument("--attacks", default=",".join(EVAL_ATTACKS), help="comma-separated")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    def body() -> None:
        from bmtard.config import parse_params
        from bmtard.runtime import resolve_device

        params = parse_params(
            {
                "evaluate": {
                    "n_images": args.n_images,
                    "eps": args.eps,
                    "batch_size": args.batch_size,
                    "attacks": [a for a in args.attacks.split(",") if a],
                },
                "run": {"device": args.device},
            }
        )
        device = resolve_device(params.run.device)
        model, info = _load_any(args.checkpoint, args.arch, args.width, args.num_classes, device)
        result = evaluate_student(model, load_split(args.data), params.evaluate, device, args.seed)
        result["model"] = {k: info[k] for k in ("arch", "width", "num_classes", "sha256")}
        result["model"]["checkpoint"] = str(Path(args.checkpoint))
        write_json(args.out, result)
        log.info("wrote %s", args.out)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
