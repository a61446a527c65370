"""The translation of dvc.yaml into Snakemake's rules (bmtard/experiments/workflow.py), on its
own: commands, inputs and outputs of the shared rules, of a grid's experiments and of its teacher
variants, the code each rule takes as input, and the one thing the Snakefile itself decides at
parse time (a dry run clears nothing)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from test_params_fuzz import QUICK

from bmtard.core.errors import BmtardError
from bmtard.experiments.grid import expand
from bmtard.experiments.workflow import (
    PAGES,
    REPORT_RULES,
    RESULTS,
    RUN_FILES,
    Workflow,
    code_closure,
    code_folders,
    compare_inputs,
    gpus,
    in_run,
    lookup,
    page_command,
    page_path,
    report_targets,
    stage_module,
    stage_outputs,
    stage_params,
)

from conftest import ROOT
from pipeline_helpers import BIN, copy_project, run

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
GRID = [
    {"distill.method": ["sat"], "run.seed": [0]},
    {"distill.method": ["bmtard"], "clean_teacher.published": [None, "MTARD_ResNet56"]},
]


@pytest.fixture(scope="module")
def grid() -> Workflow:
    return Workflow(STAGES, copy.deepcopy(QUICK), expand(GRID), ROOT)


def test_the_stage_parts():
    distill = STAGES["distill"]
    assert lookup(QUICK, "distill.balance.tau_lr") == QUICK["distill"]["balance"]["tau_lr"]
    assert stage_params(distill, QUICK) == {"run": QUICK["run"], "distill": QUICK["distill"]}
    assert "models/student.pt" in stage_outputs(distill)
    assert "dvclive/distill/plots/metrics" in stage_outputs(distill)  # plots are outputs too
    assert stage_module(distill["cmd"]) == "stages.distill"
    with pytest.raises(BmtardError, match="runs no python -m module"):
        stage_module("echo hello")
    four = {**QUICK, "run": {**QUICK["run"], "processes": 4}}
    counts = [gpus(STAGES[s], four) for s in ("distill", "evaluate", "download")]
    assert counts == [4, 1, 0]


def test_code_closure_is_the_static_imports_with_packages():
    teacher = code_closure(ROOT, ["stages.train_teacher"])
    assert "stages/__init__.py" in teacher and "bmtard/__init__.py" in teacher
    assert "bmtard/methods/trades.py" in teacher and "bmtard/methods/sat.py" in teacher
    assert "bmtard/methods/ciard.py" not in teacher  # a student's method: no teacher's input
    ciard = code_closure(ROOT, ["stages.distill", "bmtard.methods.ciard"])
    assert "bmtard/methods/ciard.py" in ciard and "bmtard/methods/peeraid.py" not in ciard
    saad = code_closure(ROOT, ["bmtard.methods.saad"])
    assert {"bmtard/methods/adaad.py", "bmtard/methods/dgad.py"} <= set(saad)  # what it reuses
    assert code_folders(["bmtard/__init__.py", "bmtard/methods/sat.py", "stages/x.py"]) == [
        "bmtard/__init__.py", "bmtard/methods", "stages/x.py",
    ]  # fmt: skip


def test_relative_imports_are_followed(tmp_path: Path):
    pkg = tmp_path / "bmtard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from . import b\nfrom ..c import thing\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    import bmtard.d  # a lazy import counts\n")
    (pkg / "c.py").write_text("thing = 1\n")
    (pkg / "d.py").write_text("import os\n")
    assert code_closure(tmp_path, ["bmtard.sub.a"]) == [
        "bmtard/__init__.py", "bmtard/c.py", "bmtard/d.py", "bmtard/sub/__init__.py",
        "bmtard/sub/a.py", "bmtard/sub/b.py",
    ]  # fmt: skip


def test_shared_rules_take_params_yamls_method_and_teachers_need():
    w = Workflow(STAGES, copy.deepcopy(QUICK), [], ROOT)
    assert w.per_experiment == ["distill", "evaluate"]
    clean = w.interpolate("train_clean_teacher")
    assert clean.endswith("--method mtard,bmtard,ciard")  # need_only of params.yaml's bmtard
    assert "bmtard/methods/b_mtard.py" in w.inputs("distill")
    assert "models/clean_teacher.pt" in w.inputs("distill")
    assert set(w.all_outputs()) == {p for s in STAGES.values() for p in stage_outputs(s)}
    broken = {**STAGES, "distill": {**STAGES["distill"], "cmd": "python -m x ${distill.method}"}}
    with pytest.raises(BmtardError, match="stage distill names"):
        Workflow(broken, copy.deepcopy(QUICK), [], ROOT).interpolate("distill")


def test_an_experiments_command_is_the_stages_with_its_own_paths_and_params(grid: Workflow):
    exp = "method-bmtard_clean_teacher-published-MTARD-ResNet56"
    variant = "clean_teacher-published-MTARD-ResNet56"
    cmd = grid.experiment_cmd("distill", exp)
    env, rest = cmd.split(" ", 1)
    assert env == f"BMTARD_PARAMS={RESULTS}/{exp}/params.yaml"
    words, stage = rest.split(), STAGES["distill"]["cmd"].split()
    assert len(words) == len(stage)  # word for word: paths replaced, nothing inserted
    assert f"teacher-runs/{variant}/models/clean_teacher.pt" in words
    assert "models/robust_teacher.pt" in words  # params.yaml's robust teacher
    assert f"{RESULTS}/{exp}/models/student.pt" in words
    assert f"{RESULTS}/{exp}/dvclive/distill" in words  # the folder holding an output
    null = "method-bmtard_clean_teacher-published-null"
    assert "models/clean_teacher.pt" in grid.experiment_cmd("distill", null).split()


def test_a_variant_is_computed_once_for_the_experiments_that_need_it(grid: Workflow):
    variant = "clean_teacher-published-MTARD-ResNet56"
    assert grid.variants_of("clean") == [variant] and grid.variants_of("robust") == []
    assert grid.variant_params[variant]["clean_teacher"]["published"] == "MTARD_ResNet56"
    cmd = grid.variant_cmd("train_clean_teacher", variant)
    assert cmd.startswith(f"BMTARD_PARAMS=teacher-runs/{variant}/params.yaml python -m ")
    assert f"--out teacher-runs/{variant}/models/clean_teacher.pt" in cmd
    assert f"--live teacher-runs/{variant}/dvclive/train_clean_teacher" in cmd
    assert cmd.endswith("--method mtard,bmtard,ciard")
    assert f"teacher-runs/{variant}/params.yaml" in grid.variant_inputs(
        "train_clean_teacher", variant
    )


def test_an_experiment_waits_only_for_its_own_teachers_and_code(grid: Workflow):
    sat = grid.experiment_inputs("distill", "method-sat_seed-0")
    assert not any(p.endswith("teacher.pt") for p in sat)  # SAT learns from none
    assert "bmtard/methods/sat.py" in sat and "bmtard/methods/b_mtard.py" not in sat
    assert f"{RESULTS}/method-sat_seed-0/params.yaml" in sat
    bmtard = grid.experiment_inputs("evaluate", "method-bmtard_clean_teacher-published-null")
    assert {"models/clean_teacher.pt", "models/robust_teacher.pt"} <= set(bmtard)
    shared = set(grid.all_outputs()) - {p for p in grid.all_outputs() if p.startswith(RESULTS)}
    assert "models/student.pt" not in shared and "data/train.npz" in shared


def test_the_reports_rules_read_and_write_each_runs_own_files(grid: Workflow):
    """The comparison reads every experiment's metrics and costs; each page of a run is made
    from that run's own file (an output moved into its folder) into its pages/ folder."""
    names = [e.name for e in grid.experiments]
    for exp in names:
        for path in (*RUN_FILES, *(p.source for p in PAGES)):
            assert in_run(path, exp) == grid.in_experiment(path, exp) != path
    assert compare_inputs(names) == [f"{RESULTS}/{e}/{f}" for e in names for f in RUN_FILES]
    assert compare_inputs([]) == list(RUN_FILES)
    curves, card = PAGES
    exp = names[0]
    assert page_command(card, exp) == (
        f"python -m bmtard card {RESULTS}/{exp}/models/student.card.json "
        f"--out {RESULTS}/{exp}/pages/card.html"
    )
    assert (
        page_command(curves, None)
        == "python -m bmtard curves --auto --run . --out pages/curves.png"
    )
    assert report_targets(names) == ["comparison"] + [page_path(p, e) for p in PAGES for e in names]
    assert report_targets([]) == ["comparison", "pages/curves.png", "pages/card.html"]
    assert set(REPORT_RULES) == {"compare", "curves", "card", "curves_grid", "card_grid"}
    assert not set(REPORT_RULES) & set(STAGES)


def test_a_dry_run_clears_no_lock(tmp_path):
    """A Snakemake lock a killed run left stays through a dry run (Snakemake only warns of it
    there); a real run clears it before it starts (no other run holds the project)."""
    repo = copy_project(tmp_path / "p")
    locks = repo / ".snakemake" / "locks"
    locks.mkdir(parents=True)
    stale = locks / "0.input.lock"
    stale.write_text("")
    run(repo, str(BIN / "snakemake"), "-n", "--cores", "1", "data/manifest.json")
    assert stale.exists()
    proc = run(repo, str(BIN / "snakemake"), "--cores", "1", "data/manifest.json")
    assert not stale.exists()
    assert "left by a Snakemake run that was killed" in proc.stderr
