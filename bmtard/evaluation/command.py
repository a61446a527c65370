"""``python -m bmtard evaluate``: the pipeline's protocol (``bmtard.evaluation.protocol``) on any
checkpoint, outside the pipeline; the same files as the evaluate stage
(``bmtard.evaluation.writers``)
and the same resume.

Usage (``python -m bmtard.evaluation.command`` is the same command):
  python -m bmtard evaluate --checkpoint models/student.pt --data data/test.npz --out eval/
  python -m bmtard evaluate --checkpoint model_cifar_wrn.pt --arch wrn34_10 \\
      --data data/test.npz --out eval-wrn/ --n-images 1000
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmtard.config import attack_table
from bmtard.config.params import load_params, parse_params
from bmtard.config.schema import EvaluateConfig, to_dict
from bmtard.core.cost import CostMeter, write_cost
from bmtard.core.errors import ParamsError
from bmtard.core.io import sha256_file
from bmtard.evaluation.card import ModelCard
from bmtard.evaluation.runner import resumable
from bmtard.evaluation.stage import check_resume_dir, costs, evaluate_file, fail_if_asked
from bmtard.evaluation.writers import write_outputs
from bmtard.models.checkpoint import (
    CheckpointInfo,
    ModelSpec,
    TrainingRecord,
    import_state_dict,
    load_model,
)

log = logging.getLogger(__name__)


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
        card_path = args.card or Path(args.checkpoint).with_suffix(".card.json")
        out = Path(args.out)
        meter = CostMeter("evaluate", device)
        with resumable(cfg.resume_dir) as open_state:
            ev, _, dataset = evaluate_file(
                model, info, args.data, cfg, device, seed, source, open_state, checked=checked
            )
            spent = meter.cost(images=ev.n_images)
            write_cost(out / "cost.json", spent)
            card = ModelCard.of(ev, info, args.checkpoint, dataset)
            card.cost = costs(args.checkpoint, {}, spent)
            write_outputs(
                ev,
                metrics=out / "evaluate.json",
                details=out / "details.json",
                card=card,
                card_path=card_path,
                plots=out,
                selected_epoch=info.record.epoch,
            )
        log.info("wrote %s and %s", out / "evaluate.json", card_path)
        fail_if_asked(ev, cfg)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
