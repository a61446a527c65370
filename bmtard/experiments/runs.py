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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmtard.config import attack_table, dataset_table, method_table
from bmtard.core.errors import BmtardError

log = logging.getLogger(__name__)

METRICS = Path("metrics") / "evaluate.json"
#: the result columns, in the paper's order: clean, then the protocol's attacks, then W-Robust
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Clean", "clean"),
    *((a.column, a.name) for a in attack_table.ATTACKS),
)
W_ROBUST = "W-Robust"  # (clean + AutoAttack) / 2, spec section 6.3
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
        """The accuracy under ``key`` (clean or an attack), or W-Robust for ``W_ROBUST``."""
        return self.w_robust if key == W_ROBUST else self.accuracy.get(key)


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
        params=params,
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


def gather(root: Path, *, use_dvc: bool = True, results: str = "results") -> list[Run]:
    """Every finished run under ``root``: the workspace, a Snakemake grid, DVC experiments."""
    runs = workspace_runs(root) + grid_runs(root / results)
    if use_dvc:
        runs += dvc_runs(root)
    return runs
