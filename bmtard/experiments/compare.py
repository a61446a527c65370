"""The comparison as people read it: every finished experiment of either engine in one table
(CSV and Markdown, the paper's column order) and a trade-off picture (clean against AutoAttack
accuracy, one point per run, with published points as reference markers).

Where the runs come from:
  workspace          params.yaml + metrics/evaluate.json (the last ``dvc repro`` / ``snakemake``)
  Snakemake grid     results/<experiment>/params.yaml + results/<experiment>/metrics/evaluate.json
  DVC                ``dvc exp show --json``: each committed baseline's and each experiment's
                     params and metrics

Writes (into ``--out``, default ``comparison/``, each file atomically):
  comparison.csv, comparison.md   one row per run; accuracies in %
  tradeoff.csv                    the picture's points (runs and reported ones), a DVC plot
  tradeoff-<dataset>.png          the picture, one per dataset

Usage (``python -m bmtard compare`` is the same command):
  python -m bmtard.experiments.compare            # all of the above, from the project in the cwd
  python -m bmtard.experiments.compare --no-dvc   # without asking DVC (where it is not installed)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmtard.config import attack_table, method_table
from bmtard.core.errors import BmtardError
from bmtard.core.io import write_atomic
from bmtard.experiments.reported import MISSING, Reported, reported

log = logging.getLogger(__name__)

METRICS = Path("metrics") / "evaluate.json"
#: the result columns, in the paper's order: clean, then the protocol's attacks, then W-Robust
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Clean", "clean"),
    *((a.column, a.name) for a in attack_table.ATTACKS),
)
W_ROBUST = "W-Robust"  # (clean + AutoAttack) / 2, spec section 6.3
W_ROBUST_OF = "autoattack"


@dataclass(frozen=True)
class Run:
    """One finished experiment: what it was and what the evaluation measured (%)."""

    name: str
    engine: str  # workspace | snakemake | dvc
    method: str  # distill.method
    student: str
    dataset: str
    seed: int
    accuracy: dict[str, float] = field(default_factory=dict)  # clean and each attack
    w_robust: float | None = None  # (clean + AutoAttack) / 2
    sanity: str = "not run"  # passed | failed | not run

    @property
    def label(self) -> str:
        """The method as tables name it."""
        spec = method_table.BY_NAME.get(self.method)
        return spec.label if spec else self.method


def run_from(name: str, engine: str, params: dict[str, Any], metrics: dict[str, Any]) -> Run:
    """A ``Run`` from a params mapping (as in params.yaml) and the evaluate stage's metrics
    (flat: clean, each attack, w_robust, sanity; files from before that held them nested, under
    ``accuracy``, ``weighted_robust`` and ``sanity.passed``)."""
    distill, data, run = params.get("distill", {}), params.get("data", {}), params.get("run", {})
    if "accuracy" in metrics:  # the nested form
        accuracy = dict(metrics["accuracy"])
        w_robust = metrics.get("weighted_robust", {}).get(W_ROBUST_OF)
        checks = metrics.get("sanity")
        sanity = "not run" if not checks else ("passed" if checks.get("passed") else "failed")
    else:
        accuracy = {k: metrics[k] for _, k in COLUMNS if k in metrics}
        w_robust = metrics.get("w_robust")
        sanity = metrics.get("sanity", "not run")
    return Run(
        name=name,
        engine=engine,
        method=str(distill.get("method", "bmtard")),  # files from before distill.method
        student=str(distill.get("arch", "?")),
        dataset=str(data.get("dataset", "?")),
        seed=int(run.get("seed", 0)),
        accuracy=accuracy,
        w_robust=w_robust,
        sanity=sanity,
    )


def _read(folder: Path) -> tuple[dict, dict] | None:
    """(params, metrics) of a finished run in ``folder``; None if it has not finished."""
    params, metrics = folder / "params.yaml", folder / METRICS
    if not (params.is_file() and metrics.is_file()):
        return None
    try:
        return yaml.safe_load(params.read_text()) or {}, json.loads(metrics.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.warning("skipped %s: %s", folder, e)
        return None


def workspace_runs(root: Path) -> list[Run]:
    found = _read(root)
    return [] if found is None else [run_from("workspace", "workspace", *found)]


def grid_runs(results: Path) -> list[Run]:
    """The finished experiments of a Snakemake grid (``results/<experiment>/``)."""
    runs = []
    for folder in sorted(p for p in results.glob("*") if p.is_dir()):
        found = _read(folder)
        if found is None:
            log.info("%s: no metrics yet (not finished)", folder)
            continue
        runs.append(run_from(folder.name, "snakemake", *found))
    return runs


def dvc_runs(root: Path) -> list[Run]:
    """DVC experiments with evaluation metrics, from ``dvc exp show --json`` (none where DVC is
    not installed or the folder is not a DVC project)."""
    exe = shutil.which("dvc")
    if exe is None or not (root / ".dvc").is_dir():
        return []
    proc = subprocess.run(
        [exe, "exp", "show", "--json"], cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise BmtardError(f"dvc exp show failed ({first[:200]}); rerun with --no-dvc to skip it")
    return parse_exp_show(json.loads(proc.stdout or "[]"))


def parse_exp_show(shown: list[dict]) -> list[Run]:
    """The committed baselines and their experiments in ``dvc exp show --json`` output, named as
    ``dvc exp show`` names them (a baseline by its branch, else its short commit); the workspace
    row is left out (``workspace_runs`` reads it from its files)."""
    runs = []
    for commit in shown:
        if commit.get("rev") != "workspace":
            name = commit.get("name") or str(commit.get("rev", "?"))[:7]
            runs += _dvc_run(name, commit.get("data") or {}, "commit")
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or str(rev.get("rev", "?"))[:7]
                runs += _dvc_run(name, rev.get("data") or {}, "experiment")
    return runs


def _dvc_run(name: str, data: dict, kind: str) -> list[Run]:
    """The run of one ``dvc exp show`` row (none while it has no evaluation metrics)."""
    metrics = (data.get("metrics") or {}).get(str(METRICS), {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not metrics or params is None:
        log.info("DVC %s %s: no metrics (queued, running, failed or not evaluated)", kind, name)
        return []
    return [run_from(name, "dvc", params, metrics)]


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
            "Student": r.student,
            "Dataset": r.dataset,
            "Seed": r.seed,
        }
        for header, key in COLUMNS:
            row[header] = r.accuracy.get(key)
        row[W_ROBUST] = r.w_robust
        row["Sanity"] = r.sanity
        out.append(row)
    return out


def to_csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if table:
        w = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in table)
    return buf.getvalue()


def to_markdown(table: list[dict[str, Any]]) -> str:
    if not table:
        return "No finished experiment found.\n"
    heads = list(table[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    for row in table:
        cells = [
            _cell(v) if isinstance(v, float) or (v is None and h != "Sanity") else str(v)
            for h, v in row.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\nAccuracies in %, eps 8/255. {W_ROBUST} = (Clean + AA) / 2. Sanity: the gradient-"
        "masking checks of the evaluation (passed, failed, or not run).\n"
    )
    return "\n".join(lines) + "\n" + note


# --------------------------------------------------------------------------- the picture


def points(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The picture's points: each run with an AutoAttack accuracy, then the published points
    on the runs' datasets (source 'reported')."""
    out = [
        {
            "name": r.name,
            "method": r.label,
            "dataset": r.dataset,
            "student": r.student,
            "clean": r.accuracy["clean"],
            "autoattack": r.accuracy[W_ROBUST_OF],
            "source": "run",
        }
        for r in runs
        if "clean" in r.accuracy and W_ROBUST_OF in r.accuracy
    ]
    for dataset in sorted({r.dataset for r in runs}):
        out += [_reported_point(p) for p in reported(dataset)]
    return out


def _reported_point(p: Reported) -> dict[str, Any]:
    return {
        "name": f"{p.method} (reported)",
        "method": p.method,
        "dataset": p.dataset,
        "student": p.student,
        "clean": p.clean,
        "autoattack": p.autoattack,
        "source": f"reported: {p.source}",
    }


#: marker shapes of the published points, one per method (runs are filled circles)
REPORTED_MARKERS = ("D", "s", "^", "v", "P", "X", "*", "h")


def plot(pts: list[dict[str, Any]], dataset: str, path: Path) -> None:
    """Clean (x) against AutoAttack (y) accuracy on ``dataset``: runs as filled circles coloured
    by method, published points as hollow black markers, one shape per method; the legend names
    both (text labels beside the points would overlap where runs cluster)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    mine = [p for p in pts if p["dataset"] == dataset]
    runs = [p for p in mine if p["source"] == "run"]
    ref = [p for p in mine if p["source"] != "run"]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for i, m in enumerate(sorted({p["method"] for p in runs})):
        xs = [p for p in runs if p["method"] == m]
        ax.scatter(
            [p["clean"] for p in xs],
            [p["autoattack"] for p in xs],
            s=45,
            color=plt.get_cmap("tab10")(i % 10),
            alpha=0.85,
            label=f"{m} ({len(xs)} run{'s' if len(xs) > 1 else ''})",
            zorder=3,
        )
    for i, p in enumerate(ref):
        ax.scatter(
            [p["clean"]],
            [p["autoattack"]],
            s=60,
            facecolors="none",
            edgecolors="black",
            marker=REPORTED_MARKERS[i % len(REPORTED_MARKERS)],
            label=p["name"],
            zorder=2,
        )
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%), eps 8/255")
    ax.set_title(f"{dataset}: clean vs robust accuracy, one point per run")
    ax.grid(alpha=0.3)
    ax.margins(x=0.08, y=0.08)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.text(
        0.01,
        0.01,
        "reported: published numbers (bmtard/experiments/reported.py); not in it: "
        f"{', '.join(MISSING)} (no published number in the spec)",
        fontsize=6,
        color="gray",
    )
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def gather(root: Path, *, use_dvc: bool = True, results: str = "results") -> list[Run]:
    """Every finished run under ``root``: the workspace, a Snakemake grid, DVC experiments."""
    runs = workspace_runs(root) + grid_runs(root / results)
    if use_dvc:
        runs += dvc_runs(root)
    return runs


def write_comparison(runs: Sequence[Run], out: Path) -> list[Path]:
    """Write the table, the points and one picture per dataset; return the files written."""
    table = rows(runs)
    pts = points(runs)
    written = []
    for name, text in (
        ("comparison.csv", to_csv(table)),
        ("comparison.md", to_markdown(table)),
        ("tradeoff.csv", to_csv(pts)),
    ):
        write_atomic(out / name, lambda tmp, text=text: tmp.write_text(text))
        written.append(out / name)
    for dataset in sorted({p["dataset"] for p in pts if p["source"] == "run"}):
        path = out / f"tradeoff-{dataset}.png"
        plot(pts, dataset, path)
        written.append(path)
    return written


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

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
