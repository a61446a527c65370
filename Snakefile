"""The B-MTARD pipeline for Snakemake, built from dvc.yaml (the one definition of the DAG).

Every DVC stage becomes a rule of the same name with the same command, inputs (deps), outputs
(outs, metrics, plots; paths without a suffix are directories) and parameters (the params.yaml
sections the stage lists, passed as rule params so that a change reruns it). `meta: {gpu: 1}`
in dvc.yaml becomes `resources: gpu=1`. Edit parameters in params.yaml only (not --config):
the stage scripts read params.yaml themselves.
"""

import sys
from pathlib import Path

import yaml


configfile: "params.yaml"


sys.path.insert(0, workflow.basedir)  # the bmtard package beside this file
from bmtard import project_lock
from bmtard.config import load_params
from bmtard.errors import BmtardError
from snakemake.exceptions import WorkflowError

# validates every parameter (and refuses repeated keys) before any job runs
load_params(Path(workflow.basedir, "params.yaml"))
with open(Path(workflow.basedir, "params.yaml")) as f:
    if yaml.safe_load(f) != config:
        raise ValueError(
            "params.yaml differs from the Snakemake config: set values in params.yaml"
        )

with open(Path(workflow.basedir, "dvc.yaml")) as f:
    STAGES = yaml.safe_load(f)["stages"]


def stage_outputs(stage):
    """outs + metrics + plots of a dvc.yaml stage, as plain paths."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def snake_outputs(stage):
    return [
        p if "." in p.rsplit("/", 1)[-1] else directory(p) for p in stage_outputs(stage)
    ]


PROJECT_LOCK = []  # the open lock file, kept for the whole run
for stale in project_lock.clear_stale_snakemake_locks():
    print(f"removed {stale}: left by a Snakemake run that was killed", file=sys.stderr)


onstart:
    # one engine at a time in this folder (bmtard/project_lock.py); released when Snakemake ends
    try:
        PROJECT_LOCK.append(project_lock.hold_for_run("snakemake"))
    except BmtardError as e:  # before any job; Snakemake releases its own lock
        raise WorkflowError(f"error: {e}") from None


rule all:
    default_target: True
    input:
        [p for stage in STAGES.values() for p in stage_outputs(stage)],


for stage_name, stage in STAGES.items():

    rule:
        name:
            stage_name
        input:
            stage["deps"],
        output:
            snake_outputs(stage),
        log:
            f"logs/{stage_name}.log",
        conda:
            "envs/bmtard.yaml"
        threads: workflow.cores if stage.get("meta", {}).get("gpu") else 1
        resources:
            gpu=stage.get("meta", {}).get("gpu", 0),
        params:
            **{section: config[section] for section in stage.get("params", [])},
            # the command goes through params: a loop variable read in `shell:` would be read
            # when the job runs, i.e. after the loop, and give the last stage's command
            cmd=stage["cmd"],
        shell:
            "{params.cmd} > {log} 2>&1"
