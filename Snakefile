"""The B-MTARD pipeline for Snakemake, built from dvc.yaml (the one definition of the DAG).

The translation (commands, inputs, outputs, params, grids and teacher variants) is
bmtard/experiments/workflow.py, tested on its own; this file only validates the parameters, holds
the project lock and defines the rules from it. Edit parameters in params.yaml only (not
--config): the stage scripts read params.yaml (a grid's experiment, its own params file) themselves.

A grid (`--configfile presets/grid.yaml`, bmtard/experiments/grid.py) runs the stages that read
`distill` or `evaluate` (and those after them) once per experiment, as rules `<stage>_grid` under
`results/<experiment>/`, and each teacher variant it asks for once, as rules
`<teacher stage>_grid` under `teacher-runs/<variant>/`; the data is shared.
"""

import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, workflow.basedir)  # the bmtard package beside this file
from bmtard.config import method_table
from bmtard.config.params import load_params
from bmtard.core import project_lock
from bmtard.core.errors import BmtardError
from bmtard.experiments import grid as grids
from bmtard.experiments.workflow import (
    COMPARISON,
    PAGES,
    RESULTS,
    SHELL,
    Workflow,
    compare_inputs,
    gpus,
    page_command,
    page_path,
    report_targets,
    stage_outputs,
    stage_params,
)
from snakemake.exceptions import WorkflowError


def stop(message):
    """A problem the user fixes: our one line, without Snakemake's stack frames, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# validates every parameter (and refuses repeated keys) before Snakemake reads the file and before
# any job runs: an empty, malformed or wrong params.yaml gives our line, not Snakemake's
try:
    load_params(Path(workflow.basedir, "params.yaml"))
except BmtardError as e:
    stop(e)


configfile: "params.yaml"


# from --configfile: the one key that is not in params.yaml
GRID = config.pop("grid", None)
with open(Path(workflow.basedir, "params.yaml")) as f:
    if yaml.safe_load(f) != config:
        stop(
            "params.yaml differs from the Snakemake config: set values in params.yaml "
            "(--configfile may add a grid only)"
        )
with open(Path(workflow.basedir, "dvc.yaml")) as f:
    STAGES = yaml.safe_load(f)["stages"]
try:
    # each experiment's params validated before any job
    W = Workflow(
        STAGES,
        config,
        [] if GRID is None else grids.expand(GRID),
        Path(workflow.basedir),
    )
except BmtardError as e:
    stop(e)


def gpu_stage_threads(stage):
    """A GPU stage's threads: every core given with --cores (it has the machine to itself); 1
    without --cores, as on a cluster, where the profile's set-threads sizes each job."""
    if not stage.get("meta", {}).get("gpu"):
        return 1
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def snake_outputs(paths):
    """Outputs without a suffix are folders."""
    return [p if "." in p.rsplit("/", 1)[-1] else directory(p) for p in paths]


PROJECT_LOCK = []  # the open lock file, kept for the whole run
# a dry run clears nothing (Snakemake only warns of its lock then); workflow.dryrun is not set
# yet while the Snakefile is parsed, its output settings are
if not workflow.output_settings.dryrun:
    for stale in project_lock.clear_stale_snakemake_locks():
        print(
            f"removed {stale}: left by a Snakemake run that was killed", file=sys.stderr
        )


onstart:
    # one engine at a time in this folder (bmtard/core/project_lock.py); released when Snakemake ends
    try:
        PROJECT_LOCK.append(project_lock.hold_for_run("snakemake"))
    except BmtardError as e:  # before any job; Snakemake releases its own lock
        stop(e)


report: "report/workflow.rst"


EXPERIMENTS = [e.name for e in W.experiments]


rule all:
    default_target: True
    input:
        W.all_outputs() + report_targets(EXPERIMENTS),


for stage_name, stage in STAGES.items():

    rule:
        name:
            stage_name
        input:
            W.inputs(stage_name),
        output:
            snake_outputs(stage_outputs(stage)),
        log:
            f"logs/{stage_name}.log",
        benchmark:
            f"benchmarks/{stage_name}.tsv"
        conda:
            "envs/bmtard.yaml"
        threads: gpu_stage_threads(stage)
        resources:
            gpu=gpus(stage, config),
        params:
            **stage_params(stage, config),
            # the command goes through params: a loop variable read in `shell:` would be read
            # when the job runs, i.e. after the loop, and give the last stage's command
            cmd=W.interpolate(stage_name),
        shell:
            SHELL


# writing a run's params file is no job for a cluster: it runs where Snakemake runs
def write_params(path, values):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(yaml.safe_dump(values, sort_keys=False))
    os.replace(tmp, path)


if W.experiments:

    localrules:
        grid_params,

    rule grid_params:
        output:
            f"{RESULTS}/{{exp}}/params.yaml",
        params:
            values=lambda wc: W.exp_params[wc.exp],
        run:
            write_params(output[0], params.values)

    for stage_name in W.per_experiment:
        stage = STAGES[stage_name]

        rule:
            name:
                f"{stage_name}_grid"
            input:
                lambda wc, name=stage_name: W.experiment_inputs(name, wc.exp),
            output:
                snake_outputs(
                    [W.in_experiment(p, "{exp}") for p in stage_outputs(stage)]
                ),
            log:
                f"logs/{stage_name}_{{exp}}.log",
            benchmark:
                f"benchmarks/{stage_name}_{{exp}}.tsv"
            wildcard_constraints:
                exp="|".join(re.escape(e.name) for e in W.experiments),
            conda:
                "envs/bmtard.yaml"
            threads: gpu_stage_threads(stage)
            resources:
                gpu=lambda wc, stage=stage: gpus(stage, W.exp_params[wc.exp]),
            params:
                # the experiment's own values, so that a change reruns only its jobs
                values=lambda wc, stage=stage: stage_params(stage, W.exp_params[wc.exp]),
                cmd=lambda wc, name=stage_name: W.experiment_cmd(name, wc.exp),
            shell:
                SHELL


if W.variant_params:

    localrules:
        grid_teacher_params,

    rule grid_teacher_params:
        output:
            W.teacher_run("params.yaml", "{tvar}"),
        params:
            values=lambda wc: W.variant_params[wc.tvar],
        run:
            write_params(output[0], params.values)

    # a teacher variant: the teacher stage in teacher-runs/<variant>/, once for every experiment
    # that learns from it
    for role, stage_name in method_table.TEACHER_STAGES.items():
        stage = STAGES[stage_name]
        variants = W.variants_of(role)
        if not variants:
            continue

        rule:
            name:
                f"{stage_name}_grid"
            input:
                lambda wc, name=stage_name: W.variant_inputs(name, wc.tvar),
            output:
                snake_outputs(
                    [W.teacher_run(p, "{tvar}") for p in stage_outputs(stage)]
                ),
            log:
                f"logs/{stage_name}_{{tvar}}.log",
            benchmark:
                f"benchmarks/{stage_name}_{{tvar}}.tsv"
            wildcard_constraints:
                tvar="|".join(re.escape(v) for v in variants),
            conda:
                "envs/bmtard.yaml"
            threads: gpu_stage_threads(stage)
            resources:
                gpu=lambda wc, stage=stage: gpus(stage, W.variant_params[wc.tvar]),
            params:
                values=lambda wc, stage=stage: stage_params(
                    stage, W.variant_params[wc.tvar]
                ),
                cmd=lambda wc, name=stage_name: W.variant_cmd(name, wc.tvar),
            shell:
                SHELL


# the report's own rules (snakemake --report): the comparison of every finished run, and each
# run's pages (bmtard/experiments/workflow.py PAGES); seconds each, where Snakemake runs (no
# cluster job)
rule compare:
    input:
        compare_inputs(EXPERIMENTS),
    output:
        report(
            directory(COMPARISON),
            patterns=["{name}.png", "{name}.html"],
            caption="report/comparison.rst",
            category="Comparison",
        ),
    log:
        "logs/compare.log",
    localrule: True
    conda:
        "envs/bmtard.yaml"
    params:
        results=RESULTS,
    shell:
        "python -m bmtard compare --no-dvc --results {params.results} --out {output} > {log} 2>&1"


for page in PAGES:
    if EXPERIMENTS:

        rule:
            name:
                f"{page.name}_grid"
            input:
                lambda wc, page=page: W.in_experiment(page.source, wc.exp),
            output:
                report(
                    page_path(page, "{exp}"),
                    caption=page.caption,
                    category="Experiments",
                    subcategory="{exp}",
                ),
            log:
                f"logs/{page.name}_{{exp}}.log",
            wildcard_constraints:
                exp="|".join(re.escape(e) for e in EXPERIMENTS),
            localrule: True
            conda:
                "envs/bmtard.yaml"
            params:
                # a function: a loop variable read in `shell:` is read when the job runs
                cmd=lambda wc, page=page: page_command(page, wc.exp),
            shell:
                "{params.cmd} > {log} 2>&1"

    else:

        rule:
            name:
                page.name
            input:
                page.source,
            output:
                report(
                    page_path(page, None), caption=page.caption, category="Experiments"
                ),
            log:
                f"logs/{page.name}.log",
            localrule: True
            conda:
                "envs/bmtard.yaml"
            params:
                cmd=lambda wc, page=page: page_command(page, None),
            shell:
                "{params.cmd} > {log} 2>&1"
