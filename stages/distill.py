"""Stage distill: B-MTARD distillation of the student from both teachers (params: run, distill)."""

from pathlib import Path

from bmtard.data.stage_data import StageData
from bmtard.runtime import device as runtime
from bmtard.runtime.cli import run_stage
from bmtard.training.distill import run_distill
from bmtard.training.stage import Outputs


def add_arguments(p):
    p.add_argument("--data", required=True, help="folder written by the download stage")
    p.add_argument("--clean-teacher", required=True, help="clean teacher checkpoint")
    p.add_argument("--robust-teacher", required=True, help="robust teacher checkpoint")
    p.add_argument("--out", required=True, help="student checkpoint to write")
    p.add_argument("--live", required=True, help="dvclive folder for curves and summary")
    p.add_argument("--tb", required=True, help="TensorBoard folder")


def main(params, args, stop):
    device = runtime.setup(params.run, parallel=True)
    run_distill(
        params.run,
        params.distill,
        StageData.load(args.data, val=True),
        device,
        Path(args.clean_teacher),
        Path(args.robust_teacher),
        Outputs(Path(args.out), Path(args.live), Path(args.tb)),
        stop,
    )


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main, name="distill", gpu=True, module="stages.distill")
