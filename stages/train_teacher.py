"""Stages train_clean_teacher / train_robust_teacher: standard training of the clean teacher,
or TRADES / PGD-AT training of the robust teacher (params: run, clean_teacher or robust_teacher)."""

from pathlib import Path

from bmtard import runtime
from bmtard.cli import run_stage
from bmtard.stage_data import StageData
from bmtard.teachers import train_clean_teacher, train_robust_teacher
from bmtard.training_stage import Outputs


def add_arguments(p):
    p.add_argument("--role", required=True, choices=("clean", "robust"), help="which teacher")
    p.add_argument("--data", required=True, help="folder written by the download stage")
    p.add_argument("--out", required=True, help="teacher checkpoint to write")
    p.add_argument("--live", required=True, help="dvclive folder for curves and summary")
    p.add_argument("--tb", required=True, help="TensorBoard folder")


def main(params, args, stop):
    device = runtime.setup(params.run)
    data = StageData.load(args.data)
    if args.role == "clean":
        train, cfg = train_clean_teacher, params.clean_teacher
    else:
        train, cfg = train_robust_teacher, params.robust_teacher
    outputs = Outputs(Path(args.out), Path(args.live), Path(args.tb))
    train(params.run, cfg, data, device, outputs, stop)


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main, name=lambda args: f"train_{args.role}_teacher")
