"""Stages train_clean_teacher / train_robust_teacher: standard training of the clean teacher,
or TRADES / PGD-AT training of the robust teacher, when the --method the teacher is for learns
from it (params: run but its seed, and clean_teacher or robust_teacher, with a seed of its own)."""

import dataclasses
from pathlib import Path

from bmtard.config import method_table
from bmtard.core.errors import ParamsError
from bmtard.data.stage_data import StageData
from bmtard.runtime import device as runtime
from bmtard.runtime.cli import run_stage
from bmtard.training.stage import Outputs
from bmtard.training.teachers import train_clean_teacher, train_robust_teacher


def add_arguments(p):
    p.add_argument("--role", required=True, choices=("clean", "robust"), help="which teacher")
    p.add_argument("--data", required=True, help="folder written by the download stage")
    p.add_argument("--out", required=True, help="teacher checkpoint to write")
    p.add_argument("--live", required=True, help="dvclive folder for curves and summary")
    p.add_argument("--tb", required=True, help="TensorBoard folder")
    p.add_argument(
        "--method",
        help="the distill.method value(s) the teacher is for, comma-separated (default: "
        "params.yaml's): the teacher is trained only if one of them learns from it",
    )


def methods_arg(text: str) -> tuple[str, ...]:
    """``--method`` as a tuple of method names; ParamsError for an unknown one."""
    names = tuple(n for n in text.split(",") if n)
    for name in names or ("",):
        if name not in method_table.NAMES:
            raise ParamsError(
                f"--method {text!r}: {name!r} is not a method; allowed are "
                f"{', '.join(method_table.NAMES)}"
            )
    return names


def main(params, args, stop):
    methods = methods_arg(args.method or params.distill.method)
    if args.role == "clean":
        train, cfg = train_clean_teacher, params.clean_teacher
    else:
        train, cfg = train_robust_teacher, params.robust_teacher
    run = dataclasses.replace(params.run, seed=cfg.seed)  # run.seed is the student's
    device = runtime.setup(run, parallel=True)
    data = StageData.load(args.data)
    outputs = Outputs(Path(args.out), Path(args.live), Path(args.tb))
    train(run, cfg, data, device, outputs, stop, methods)


if __name__ == "__main__":
    run_stage(
        __doc__,
        add_arguments,
        main,
        name=lambda args: f"train_{args.role}_teacher",
        gpu=True,
        module="stages.train_teacher",
    )
