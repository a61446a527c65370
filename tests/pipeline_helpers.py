"""Helpers for tests that run the pipeline in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bmtard.experiments.workflow import REPORT_RULES

from conftest import ROOT, SAMPLE

BIN = Path(sys.executable).parent

# The quick preset made smaller still, so that each engine runs the whole DAG in well under a
# minute on 2 CPU cores. Values are (dotted key, value) over presets/quick.yaml.
TINY = {
    "run.num_threads": 1,  # two tests run at once (tests/conftest.py)
    "data.train_limit": 100,
    "data.test_limit": 40,
    "clean_teacher.width": 0.125,
    "clean_teacher.optim.epochs": 1,
    "robust_teacher.width": 0.05,
    "robust_teacher.optim.epochs": 1,
    "robust_teacher.attack.steps": 2,
    "robust_teacher.monitor.n_images": 20,
    "distill.width": 0.0625,
    "distill.optim.epochs": 1,
    "distill.optim.batch_size": 32,  # 4 steps: a 1-step student predicts one class for every
    # image, and AutoAttack then spends its whole budget (minutes) on the images of that class
    "distill.attack.steps": 2,
    "distill.monitor.n_images": 20,
    "evaluate.n_images": 10,
    "evaluate.batch_size": 10,
    "evaluate.teacher_n_images": 10,
}


def set_key(params: dict, dotted: str, value) -> None:
    node = params
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    if last not in node:
        raise KeyError(dotted)
    node[last] = value


def project_files() -> list[str]:
    """What the repository holds, as it is in the working tree: the files git tracks and new ones
    it does not ignore, without the pipeline's products (dvc.yaml's outputs, dvc.lock,
    comparison/), which a user's main job leaves in the workspace and a test copy must not take,
    and without the CIFAR-10 sample, which the copies read where it is (``SAMPLE``)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    products = pipeline_products()
    return [
        f
        for f in out
        if (ROOT / f).is_file() and not any(f == p or f.startswith(f"{p}/") for p in products)
    ]


def pipeline_products() -> set[str]:
    """Paths the pipeline writes (files and folders), relative to the project."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    paths = {"dvc.lock", "comparison", "results", str(SAMPLE.relative_to(ROOT))}
    for stage in dvc["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.update(entry if isinstance(entry, dict) else [entry])
    return paths


def copy_project(dest: Path, overrides: dict | None = None) -> Path:
    """Copy the project to ``dest`` with a tiny params.yaml on the offline sample, as a new git
    repository with one commit (DVC needs git)."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    set_key(params, "data.local_root", str(SAMPLE))
    for key, value in {**TINY, **(overrides or {})}.items():
        set_key(params, key, value)
    write_params(dest, params)
    git(dest, "init", "-q")
    git(dest, "config", "user.name", "test")  # DVC experiments commit; CI may have no identity
    git(dest, "config", "user.email", "test@example.invalid")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "test copy")
    return dest


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["GIT_AUTHOR_NAME"] = e["GIT_COMMITTER_NAME"] = "test"
    e["GIT_AUTHOR_EMAIL"] = e["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    # a fixed date: copies of the same tree get the same commit, which checkpoints record
    e["GIT_AUTHOR_DATE"] = e["GIT_COMMITTER_DATE"] = "2026-01-01T00:00:00+00:00"
    e["DVC_NO_ANALYTICS"] = "1"
    e.pop("PYTHONPATH", None)
    return e


def run(
    repo: Path, *cmd: str, check: bool = True, timeout: int = 600, env_extra: dict | None = None
):
    proc = subprocess.run(
        list(cmd),
        cwd=repo,
        env={**env(), **(env_extra or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc


def git(repo: Path, *args: str):
    return run(repo, "git", *args)


def dvc_ran(output: str) -> list[str]:
    """Stages that `dvc repro` / `dvc exp run` ran, in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def snakemake_ran(output: str, report: bool = False) -> list[str]:
    """Rules that a snakemake run finished (without the `all` target, and without the report's
    rules unless ``report``)."""
    ran = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)
    return [r for r in ran if r != "all" and (report or r not in REPORT_RULES)]


#: files that hold wall times: a stage's cost, and the files that gather the costs
COST_FILE = "cost.json"
WITH_COST = (".card.json", "details.json")
#: a model card's page (bmtard/experiments/pages.py) holds the cost in a section of its own
COST_SECTION = re.compile(rb'<section class="cost">.*?</section>', re.S)


def timeless(name: str, data: bytes) -> bytes | None:
    """A pipeline file as two runs of the same settings must agree on it (an interrupted one,
    another engine's): None for a cost file (bmtard/core/cost.py: wall times), a model card or
    details.json without its ``cost``, a card's page without its cost section, any other file
    as it is."""
    if name.endswith(COST_FILE):
        return None
    if name.endswith("card.html"):
        return COST_SECTION.sub(b"", data)
    if name.endswith(WITH_COST):
        content = json.loads(data)
        content.pop("cost", None)
        return json.dumps(content, sort_keys=True).encode()
    return data
