"""Stage distill: B-MTARD distillation of the student from both teachers (params: run, distill)."""

from pathlib import Path

from bmtard import runtime
from bmtard.cli import run_stage
from bmtard.distill import run_distill
from bmtard.recipe import StageData
from bmtard.tracking import Tracker


def add_arguments(p):
    p.add_argument("--data", required=True, help="folder written by the download stage")
    p.add_argument("--clean-teacher", required=True, help="clean teacher checkpoint")
    p.add_argument("--robust-teacher", required=True, help="robust teacher checkpoint")
    p.add_argument("--out", required=True, help="student checkpoint to write")
    p.add_argument("--live", required=True, help="dvclive folder for curves and summary")
    p.add_argument("--tb", required=True, help="TensorBoard folder")


def main(params, args):
    device = runtime.setup(params.run)
    data = StageData.load(args.data)
    with Tracker(args.live, args.tb) as tracker:
        run_distill(
            params.run,
            params.distill,
            data,
            device,
            Path(args.clean_teacher),
            Path(args.robust_teacher),
            Path(args.out),
            tracker,
        )


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main)
