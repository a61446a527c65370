"""Stage evaluate: the attack protocol on the student, and a check of both teachers
(params: run, evaluate)."""

from bmtard.evaluation.stage import evaluate_pipeline
from bmtard.runtime import device as runtime
from bmtard.runtime.cli import run_stage


def add_arguments(p):
    p.add_argument("--data", required=True, help="folder written by the download stage")
    p.add_argument("--student", required=True, help="student checkpoint")
    p.add_argument("--clean-teacher", required=True, help="clean teacher checkpoint")
    p.add_argument("--robust-teacher", required=True, help="robust teacher checkpoint")
    p.add_argument("--metrics", required=True, help="metrics JSON to write (accuracies in %%)")
    p.add_argument("--details", required=True, help="JSON of the other numbers to write")
    p.add_argument("--card", required=True, help="model card JSON to write next to the student")
    p.add_argument("--plots", required=True, help="folder for eps_curve.csv and per_class.csv")
    p.add_argument("--cost", required=True, help="JSON of what the evaluation cost to write")


def main(params, args, stop=None):
    device = runtime.setup(params.run)
    evaluate_pipeline(
        params.evaluate,
        params.run.seed,
        device,
        data_dir=args.data,
        student=args.student,
        clean_teacher=args.clean_teacher,
        robust_teacher=args.robust_teacher,
        metrics=args.metrics,
        details=args.details,
        card=args.card,
        plots=args.plots,
        cost=args.cost,
        param_grads=not params.run.attack_no_param_grads,
    )


if __name__ == "__main__":
    run_stage(__doc__, add_arguments, main, name="evaluate", graceful=False, gpu=True)
