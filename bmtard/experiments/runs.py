"""The finished runs of a project, wherever an engine left them (accuracies in %).

workspace          params.yaml + metrics/evaluate.json (the last ``dvc repro`` / ``snakemake``)
Snakemake grid     results/<experiment>/params.yaml + results/<experiment>/metrics/evaluate.json
DVC                ``dvc exp show --json``: each committed baseline's and each experiment's
                   params and metrics
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmtard.config import attack_table, dataset_table, method_table
from bmtard.core.cost import Cost, read_cost
from bmtard.core.errors import BmtardError

log = logging.getLogger(__name__)

METRICS = Path("metrics") / "evaluate.json"
#: the result columns, in the paper's order: clean, then the protocol's attacks, then W-Robust
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Clean", "clean"),
    *((a.column, a.name) for a in attack_table.ATTACKS),
)
W_ROBUST = "W-Robust"  # (clean + AutoAttack) / 2, spec section 6.3
#: what a run cost, as columns: header, key of ``Run.cost`` (from its cost files, bmtard.core.cost)
COST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Train min", "train_minutes"),
    ("Train img/s", "train_images_per_second"),
    ("Peak GB", "peak_memory_gb"),
    ("GPU-h", "gpu_hours"),
    ("Eval min", "eval_minutes"),
)
STUDENT_COST = Path("models") / "student.cost.json"
EVAL_COST = Path("metrics") / "cost.json"
W_ROBUST_OF = attack_table.the("w_robust")  # the attack W-Robust is made of
IGDM = "+IGDM"  # a method's label with distill.igdm on
NO_TEACHER = "none"  # the teachers of a method that learns from none


def teacher_label(params: dict[str, Any], role: str) -> str:
    """How tables name the ``role`` teacher of a run's params (as in params.yaml): the published
    teacher's name, the file it was imported from, or the architecture trained (with its width
    where not 1)."""
    section = params.get(f"{role}_teacher") or {}
    if section.get("published"):
        return str(section["published"])
    if section.get("checkpoint"):
        return Path(str(section["checkpoint"])).name
    arch = section.get("arch")
    if arch is None:
        dataset = (params.get("data") or {}).get("dataset")
        known = dataset in dataset_table.NAMES
        arch = getattr(dataset_table.dataset(dataset), f"{role}_teacher") if known else "?"
    width = float(section.get("width", 1.0))
    return f"{arch}" + ("" if width == 1.0 else f"×{width:g}") + " (trained)"


def teachers_label(params: dict[str, Any], method: str) -> str:
    """The teachers ``method`` learns from, as tables name them (``NO_TEACHER`` for none)."""
    spec = method_table.BY_NAME.get(method)
    roles = spec.teachers if spec else method_table.TEACHER_STAGES
    return " · ".join(f"{r}: {teacher_label(params, r)}" for r in roles) or NO_TEACHER


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
    params: dict[str, Any] = field(default_factory=dict, compare=False)  # as in its params.yaml
    # what it cost (COST_COLUMNS' keys) and on which device; {} where no cost file was found
    cost: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """The method as tables name it, with "+IGDM" where IGDM was on."""
        spec = method_table.BY_NAME.get(self.method)
        igdm = (self.params.get("distill", {}).get("igdm") or {}).get("alpha", 0) or 0
        return (spec.label if spec else self.method) + (IGDM if igdm > 0 else "")

    @property
    def teachers(self) -> str:
        """The teachers it learned from, as tables name them (``teachers_label``)."""
        return teachers_label(self.params, self.method)

    def value(self, key: str) -> float | None:
        """The accuracy under ``key`` (clean or an attack), W-Robust for ``W_ROBUST``, or a cost
        (a key of ``COST_COLUMNS``)."""
        if key == W_ROBUST:
            return self.w_robust
        return self.cost.get(key) if key in COST_KEYS else self.accuracy.get(key)


COST_KEYS = {k for _, k in COST_COLUMNS}


def cost_of(folder: Path) -> dict[str, Any]:
    """A run's cost from its cost files in ``folder`` (``summarise_cost``)."""
    return summarise_cost(read_cost(folder / STUDENT_COST), read_cost(folder / EVAL_COST))


def cost_at(root: Path, rev: str) -> dict[str, Any]:
    """A DVC experiment's cost, from the cost files its commit ``rev`` holds (they are outputs
    kept in Git, ``cache: false``); {} where Git has none."""

    def show(path: Path) -> Cost | None:
        proc = subprocess.run(
            ["git", "show", f"{rev}:{path.as_posix()}"],
            cwd=root, capture_output=True, text=True, check=False,
        )  # fmt: skip
        try:
            return Cost.from_dict(json.loads(proc.stdout)) if proc.returncode == 0 else None
        except ValueError:
            return None

    return summarise_cost(show(STUDENT_COST), show(EVAL_COST))


def summarise_cost(train: Cost | None, evaluation: Cost | None) -> dict[str, Any]:
    """A run's cost (the keys of ``COST_COLUMNS`` and its device) from the student's training
    and the evaluation: minutes, images per second, peak memory (GB, the larger of the two),
    GPU-hours."""
    out: dict[str, Any] = {}
    if train is not None and train.seconds:
        out["train_minutes"] = train.seconds / 60
        out["train_images_per_second"] = train.images_per_second
        out["gpu_hours"] = train.gpu_seconds / 3600
        out["device"] = train.device
    if evaluation is not None and evaluation.seconds:
        out["eval_minutes"] = evaluation.seconds / 60
        out.setdefault("device", evaluation.device)
    peaks = [c.peak_memory_mb for c in (train, evaluation) if c is not None and c.peak_memory_mb]
    if peaks:
        out["peak_memory_gb"] = max(peaks) / 1024
    return out


def run_from(
    name: str,
    engine: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    cost: dict[str, Any] | None = None,
) -> Run:
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
        params=params,
        cost=cost or {},
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
    return [] if found is None else [run_from("workspace", "workspace", *found, cost_of(root))]


def grid_runs(results: Path) -> list[Run]:
    """The finished experiments of a Snakemake grid (``results/<experiment>/``)."""
    runs = []
    for folder in sorted(p for p in results.glob("*") if p.is_dir()):
        found = _read(folder)
        if found is None:
            log.info("%s: no metrics yet (not finished)", folder)
            continue
        runs.append(run_from(folder.name, "snakemake", *found, cost_of(folder)))
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
    return parse_exp_show(json.loads(proc.stdout or "[]"), lambda rev: cost_at(root, rev))


def parse_exp_show(
    shown: list[dict], cost: Callable[[str], dict[str, Any]] = lambda rev: {}
) -> list[Run]:
    """The committed baselines and their experiments in ``dvc exp show --json`` output, named as
    ``dvc exp show`` names them (a baseline by its branch, else its short commit); the workspace
    row is left out (``workspace_runs`` reads it from its files). ``cost``: a commit's cost
    (``cost_at``)."""
    runs = []
    for commit in shown:
        if commit.get("rev") != "workspace":
            name = commit.get("name") or str(commit.get("rev", "?"))[:7]
            runs += _dvc_run(name, commit, "commit", cost)
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                name = rev.get("name") or exp.get("name") or str(rev.get("rev", "?"))[:7]
                runs += _dvc_run(name, rev, "experiment", cost)
    return runs


def _dvc_run(name: str, row: dict, kind: str, cost: Callable[[str], dict[str, Any]]) -> list[Run]:
    """The run of one ``dvc exp show`` row (none while it has no evaluation metrics)."""
    data = row.get("data") or {}
    metrics = (data.get("metrics") or {}).get(str(METRICS), {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not metrics or params is None:
        log.info("DVC %s %s: no metrics (queued, running, failed or not evaluated)", kind, name)
        return []
    rev = row.get("rev")
    return [run_from(name, "dvc", params, metrics, cost(rev) if rev else {})]


def gather(root: Path, *, use_dvc: bool = True, results: str = "results") -> list[Run]:
    """Every finished run under ``root``: the workspace, a Snakemake grid, DVC experiments."""
    runs = workspace_runs(root) + grid_runs(root / results)
    if use_dvc:
        runs += dvc_runs(root)
    return runs
