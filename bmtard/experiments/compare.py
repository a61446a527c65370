"""The comparison as people read it: every finished run of either engine in one table (CSV and
Markdown, the paper's column order), the same over seeds (mean ± standard deviation and the
number of seeds of each setting and column), and a trade-off picture (clean against AutoAttack
accuracy, the runs and each setting's mean with its spread, published points as reference
markers). Where the runs come from: ``bmtard.experiments.runs``.

Writes (into ``--out``, default ``comparison/``, each file atomically):
  comparison.csv, comparison.md   one row per run, then (the .md) one per setting over seeds
  comparison.html                 both tables as a page (the Snakemake report's)
  summary.csv                     per setting and column: mean, std, n (accuracies in %)
  tradeoff.csv                    the picture's points (runs and reported ones), a DVC plot
  tradeoff-<dataset>.png          the picture, one per dataset
  cost-<dataset>.png              training time against W-Robust, where the runs' costs are known

Usage (``python -m bmtard compare`` is the same command):
  python -m bmtard.experiments.compare            # all of the above, from the project in the cwd
  python -m bmtard.experiments.compare --no-dvc   # without asking DVC (where it is not installed)
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bmtard.core.errors import BmtardError
from bmtard.core.io import write_atomic
from bmtard.experiments.pages import comparison_page
from bmtard.experiments.runs import COLUMNS, COST_COLUMNS, W_ROBUST, Run, gather
from bmtard.experiments.seeds import groups, numbers, summary_rows
from bmtard.experiments.tradeoff import plot, plot_cost, points

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the table


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One mapping per run, keys in the table's column order."""
    out = []
    for r in runs:
        row: dict[str, Any] = {
            "Experiment": r.name,
            "Engine": r.engine,
            "Method": r.label,
            "Teachers": r.teachers,
            "Student": r.student,
            "Dataset": r.dataset,
            "Seed": r.seed,
        }
        for header, key in COLUMNS:
            row[header] = r.accuracy.get(key)
        row[W_ROBUST] = r.w_robust
        row["Sanity"] = r.sanity
        for header, key in COST_COLUMNS:
            row[header] = r.cost.get(key)
        row["Device"] = r.cost.get("device", "—")
        out.append(row)
    return out


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    return buf.getvalue()


def _markdown(table: list[dict[str, Any]], cell: Callable[[str, Any], str]) -> str:
    """A Markdown table of ``table``'s mappings (one row each, keys as headers, ``cell(head,
    value)`` the text of a cell)."""
    heads = list(table[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    lines += ["| " + " | ".join(cell(h, v) for h, v in row.items()) + " |" for row in table]
    return "\n".join(lines) + "\n"


def to_markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "No finished experiment found.\n"

    def cell(head: str, value: Any) -> str:
        number = isinstance(value, float) or (value is None and head not in ("Sanity", "Device"))
        return _cell(value) if number else str(value)

    return _markdown(table, cell) + f"\n{NOTE}\n"


#: what the table's columns hold (below it, in Markdown and on the report's page)
NOTE = (
    f"Accuracies in %, eps 8/255. {W_ROBUST} = (Clean + AA) / 2. Sanity: the gradient-masking "
    "checks of the evaluation (passed, failed, or not run). Cost: the student's training "
    "(minutes, images per second, GPU-hours) and the evaluation (minutes), their peak memory (GB: "
    "CUDA allocated on a GPU, the process's RSS on a CPU), on the device named (— where no cost "
    "file was found)."
)


# --------------------------------------------------------------------------- command line


def write_comparison(runs: Sequence[Run], out: Path) -> list[Path]:
    """Write the tables, the points and one picture per dataset; return the files written."""
    table = rows(runs)
    found = groups(runs)
    pts = points(runs)
    written = []
    for name, text in (
        ("comparison.csv", to_csv(table)),
        ("comparison.md", to_markdown(table) + "\n" + summary_markdown(summary_rows(found))),
        ("comparison.html", comparison_page(table, summary_rows(found), f"{NOTE} {SEEDS_NOTE}")),
        ("summary.csv", to_csv(numbers(found))),
        ("tradeoff.csv", to_csv(pts)),
    ):
        write_atomic(out / name, lambda tmp, text=text: tmp.write_text(text))
        written.append(out / name)
    for dataset in sorted({p["dataset"] for p in pts if p["source"] == "run"}):
        path = out / f"tradeoff-{dataset}.png"
        plot(pts, found, dataset, path)
        written.append(path)
    for dataset in sorted({g.dataset for g in found}):
        path = out / f"cost-{dataset}.png"
        if plot_cost(found, dataset, path):
            written.append(path)
    return written


def summary_markdown(summary: list[dict[str, Any]]) -> str:
    """The settings over seeds as Markdown (cells 'mean ± std (n)')."""
    if not summary:
        return ""
    return _markdown(summary, lambda head, value: str(value)) + f"\n{SEEDS_NOTE}\n"


SEEDS_NOTE = (
    "Over seeds: mean ± sample standard deviation (number of runs) of each column, runs whose "
    "parameters differ only in run.seed taken together (a run listed by two engines counted once)."
)


def main(argv: Sequence[str] | None = None) -> int:
    from bmtard.runtime.cli import run_main

    p = argparse.ArgumentParser(
        prog="python -m bmtard compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", default=".", help="the project folder (default: the cwd)")
    p.add_argument("--results", default="results", help="the Snakemake grid's folder in --root")
    p.add_argument("--out", default="comparison", help="folder for the table and the pictures")
    p.add_argument("--no-dvc", action="store_true", help="leave DVC experiments out")
    args = p.parse_args(argv)

    def body() -> None:
        root = Path(args.root)
        runs = gather(root, use_dvc=not args.no_dvc, results=args.results)
        if not runs:
            raise BmtardError(
                f"{root}: no finished experiment (no metrics/evaluate.json in the workspace, "
                f"in {args.results}/*/, or in DVC experiments)"
            )
        for path in write_comparison(runs, Path(args.out)):
            log.info("wrote %s", path)
        print(to_markdown(rows(runs)), end="")
        found = groups(runs)
        if any(len(g.runs) > 1 for g in found):
            print("\n" + summary_markdown(summary_rows(found)), end="")

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
