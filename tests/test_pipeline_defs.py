"""dvc.yaml and the Snakefile describe the same DAG, and each stage declares exactly its code."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from bmtard.config import method_table
from bmtard.config.schema import Params, RunConfig, to_dict
from bmtard.core.cost import cost_path
from bmtard.experiments.workflow import is_code, stage_module
from bmtard.runtime.execution import UNUSED_BY

from conftest import ROOT
from pipeline_helpers import BIN, REPORT_RULES, copy_project, run

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGES = list(DVC)


def outputs(stage: dict) -> list[str]:
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def test_the_five_stages_in_order():
    assert STAGES == [
        "download",
        "train_clean_teacher",
        "train_robust_teacher",
        "distill",
        "evaluate",
    ]


def test_code_deps_are_exactly_the_code_each_stage_imports():
    """tools/update_dvc_deps.py --check: each stage's code deps are the folders its module
    imports (run the tool without --check to update them)."""
    proc = subprocess.run(
        [sys.executable, "tools/update_dvc_deps.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", STAGES)
def test_data_paths_in_deps_and_outs_are_the_ones_the_command_names(name):
    """Each data dep and output is an argument of the command, itself or through its folder; a
    model's cost file is beside the model (bmtard.core.cost.cost_path)."""
    stage = DVC[name]
    tokens = set(stage["cmd"].split())
    tokens |= {str(cost_path(t)) for t in tokens if t.endswith(".pt")}
    for path in [d for d in stage["deps"] if not is_code(d)] + outputs(stage):
        parts = path.split("/")
        ancestors = {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
        assert ancestors & tokens, f"{name}: {path} is not passed to the command"


def test_params_sections_exist_and_stages_read_only_their_own():
    sections = set(to_dict(Params()))

    def teacher_run(role: str) -> set[str]:  # the teachers' own seeds; not the switches unused
        unused = {"seed", *UNUSED_BY.get(role, ())}
        return {f"run.{k}" for k in to_dict(RunConfig()) if k not in unused}

    own = {
        "download": {"data"},
        "train_clean_teacher": teacher_run("clean_teacher") | {"clean_teacher"},
        "train_robust_teacher": teacher_run("robust_teacher") | {"robust_teacher"},
        "distill": {"run", "distill"},
        "evaluate": {"run", "evaluate"},
    }
    for name, stage in DVC.items():
        assert {p.split(".")[0] for p in stage["params"]} <= sections
        assert set(stage["params"]) == own[name], name


def test_gpu_stages_are_marked():
    gpu = {n for n, s in DVC.items() if s.get("meta", {}).get("gpu")}
    assert gpu == {"train_clean_teacher", "train_robust_teacher", "distill", "evaluate"}


def test_no_output_is_declared_twice_and_every_dep_has_a_producer_or_exists():
    outs = [o for s in DVC.values() for o in outputs(s)]
    assert len(outs) == len(set(outs))
    for stage in DVC.values():
        for dep in stage["deps"]:
            assert dep in outs or (ROOT / dep).is_file() or (is_code(dep) and (ROOT / dep).is_dir())


def test_conda_env_pins_match_requirements():
    req = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if m:
            req[m.group(1).lower()] = m.group(2)
    env = yaml.safe_load((ROOT / "envs" / "bmtard.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    for pin in pip:
        name, version = pin.split("==")
        assert req.get(name.lower()) == version, pin


@pytest.fixture(scope="module")
def snake_copy(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("defs"))


def snakemake_jobs(repo) -> dict[str, dict]:
    """Each rule's inputs, outputs and shell command, from a forced dry run with -p."""
    out = run(repo, str(BIN / "snakemake"), "-n", "-p", "--forceall", "--cores", "1").stdout
    jobs: dict[str, dict] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head or head.group(1) in ("all", *REPORT_RULES):
            continue
        fields = dict(re.findall(r"^    (input|output): (.*)$", block, re.M))
        cmd = re.search(r"^Shell command: (.*)$", block, re.M).group(1)
        jobs[head.group(1)] = {
            "inputs": set(fields["input"].split(", ")),
            "outs": set(fields["output"].split(", ")),
            "cmd": cmd,
        }
    return jobs


def test_snakemake_rules_equal_dvc_stages(snake_copy):
    """What Snakemake will run (dry run) is each stage's cmd over its deps and outs."""
    jobs = snakemake_jobs(snake_copy)
    assert set(jobs) == set(STAGES)
    method = yaml.safe_load((snake_copy / "params.yaml").read_text())["distill"]["method"]
    for name, stage in DVC.items():
        job = jobs[name]
        assert job["outs"] == set(outputs(stage)), name
        # the data deps as they are; code: the files the stage can import (the Snakefile's
        # rules, bmtard.experiments.workflow.code_closure), each inside a code dep of dvc.yaml
        code = [d for d in stage["deps"] if is_code(d)]
        assert job["inputs"] - {i for i in job["inputs"] if is_code(i)} == {
            d for d in stage["deps"] if not is_code(d)
        }, name
        for i in (i for i in job["inputs"] if is_code(i)):
            assert any(i == d or i.startswith(f"{d}/") for d in code), (name, i)
        assert f"{stage_module(stage['cmd']).replace('.', '/')}.py" in job["inputs"], name
        # a teacher's: the methods that keep only its need (the Snakefile's interpolate)
        role = {s: r for r, s in method_table.TEACHER_STAGES.items()}.get(name)
        stand_in = ",".join(method_table.need_only(method, role)) if role else method
        cmd = " ".join(stage["cmd"].split()).replace("${distill.method}", stand_in)
        assert "${" not in cmd, name  # a reference this test does not resolve yet
        log = f"logs/{name}.log"
        assert job["cmd"] == (  # our one-line messages also to the console (the Snakefile)
            f"{cmd} > {log} 2>&1 || {{ status=$?; grep -E '^(error|stopped): ' {log} >&2 || true; "
            f"exit $status; }}; grep ' WARNING ' {log} >&2 || true"
        ), name


def test_snakemake_lint_and_format_are_clean(snake_copy):
    lint = run(snake_copy, str(BIN / "snakemake"), "--lint", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(snake_copy, str(BIN / "snakefmt"), "--check", "Snakefile", check=False)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_dag_edges_agree(snake_copy):
    """`dvc dag --dot` and `snakemake --rulegraph` have the same stage-to-stage edges."""
    dot = run(snake_copy, str(BIN / "dvc"), "dag", "--dot").stdout
    dvc_edges = set(re.findall(r'"(\w+)"\s*->\s*"(\w+)"', dot))
    graph = run(snake_copy, str(BIN / "snakemake"), "--rulegraph", "--cores", "1").stdout
    labels = dict(re.findall(r"\t(\d+)\[label = \"(\w+)\"", graph))
    snake_edges = {
        (labels[a], labels[b])
        for a, b in re.findall(r"\t(\d+) -> (\d+)", graph)
        if labels[b] != "all" and labels[b] not in REPORT_RULES  # Snakemake's report only
    }
    assert dvc_edges == snake_edges
    assert ("train_robust_teacher", "distill") in dvc_edges
