"""The B-MTARD balance of one run as a picture: the teachers' temperatures (tau_adv, tau_nat) and
the loss weights (w_adv, w_nat) per epoch, from the distill stage's dvclive curves
(``dvclive/distill/plots/metrics/<name>.tsv``, one row per epoch). MTARD's run has the same curves
(its temperatures stay 1).

With ``--auto``, a run whose method balances no teachers gets its training curves instead (the
loss, the lr, and the monitor's clean and PGD accuracy per epoch): the picture of every
experiment in the Snakemake report.

Usage (``python -m bmtard curves`` is the same command):
  python -m bmtard.experiments.curves                      # the workspace -> balance.png
  python -m bmtard.experiments.curves --run results/method-bmtard_seed-0 --out b.png
  python -m bmtard.experiments.curves --auto --run results/method-sat_seed-0 --out c.png
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from bmtard.core.errors import BmtardError
from bmtard.core.io import write_atomic

log = logging.getLogger(__name__)

CURVES = Path("dvclive") / "distill" / "plots" / "metrics"
TEMPERATURES = ("tau_adv", "tau_nat")
WEIGHTS = ("w_adv", "w_nat")


def read_curve(folder: Path, name: str) -> list[tuple[int, float]]:
    """(epoch, value) rows of one dvclive curve; BmtardError if the file is missing."""
    path = folder / f"{name}.tsv"
    if not path.is_file():
        raise BmtardError(
            f"{path}: not found; the run's distill stage must have finished with a method that "
            "balances its teachers (bmtard or mtard)"
        )
    with open(path, newline="") as f:
        return [(int(r["step"]), float(r[name])) for r in csv.DictReader(f, delimiter="\t")]


def plot_balance(run: Path, path: Path) -> None:
    """Two panels over the epochs of ``run``: the temperatures, then the weights."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    folder = run / CURVES
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 5), dpi=120, sharex=True)
    for ax, names, label in (
        (top, TEMPERATURES, "teacher temperature τ"),
        (bottom, WEIGHTS, "loss weight w"),
    ):
        for name in names:
            rows = read_curve(folder, name)
            ax.plot([e for e, _ in rows], [v for _, v in rows], marker="o", ms=3, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bottom.set_xlabel("epoch (values at the epoch's end)")
    top.set_title(f"Entropy-Based and Normalization Loss Balance: {run.resolve().name}")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def plot_training(run: Path, path: Path) -> None:
    """Three panels over the epochs of ``run``: the loss, the monitor's clean and PGD accuracy
    (where monitored), the lr."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = run / CURVES
    fig, axes = plt.subplots(3, 1, figsize=(6.5, 6), dpi=120, sharex=True)
    for ax, names, label in (
        (axes[0], ("loss",), "training loss"),
        (axes[1], ("clean_acc", "pgd_acc"), "monitor accuracy (%)"),
        (axes[2], ("lr",), "learning rate"),
    ):
        for name in names:
            if (folder / f"{name}.tsv").is_file():
                rows = read_curve(folder, name)
                ax.plot([e for e, _ in rows], [v for _, v in rows], marker="o", ms=3, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    axes[2].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[2].set_xlabel("epoch")
    axes[0].set_title(f"training curves: {run.resolve().name}")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def balances(run: Path) -> bool:
    """Whether ``run``'s distillation logged a teacher balance (temperatures and weights)."""
    return all((run / CURVES / f"{n}.tsv").is_file() for n in TEMPERATURES + WEIGHTS)


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.runtime.cli import run_main

    p = argparse.ArgumentParser(
        prog="python -m bmtard curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", default=".", help="the run's folder (default: the workspace)")
    p.add_argument("--out", default="balance.png", help="the picture to write")
    p.add_argument(
        "--auto", action="store_true", help="the training curves for a run without a balance"
    )
    args = p.parse_args(argv)

    def body() -> None:
        run = Path(args.run)
        draw = plot_training if args.auto and not balances(run) else plot_balance
        draw(run, Path(args.out))
        log.info("wrote %s", args.out)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
