"""The B-MTARD pipeline for Snakemake, built from dvc.yaml (the one definition of the DAG).

Every DVC stage becomes a rule of the same name with the same command (its ${section.key}
references filled in, as DVC does), inputs (deps), outputs (outs, metrics, plots; paths without
a suffix are directories) and parameters (the params.yaml sections or keys the stage lists,
passed as rule params so that a change reruns it). `meta: {gpu: 1}` in dvc.yaml becomes
`resources: gpu=1`, and gpu=run.processes for a stage with `meta.processes` (one GPU per torchrun
worker). Edit parameters in params.yaml only (not --config): the stage scripts read params.yaml
themselves.

A grid (`--configfile presets/grid.yaml`, bmtard/experiments/grid.py) runs the stages that read `distill` or
`evaluate` (and those after them) once per experiment, as rules `<stage>_grid` writing under
`results/<experiment>/` with that experiment's `results/<experiment>/params.yaml`; the data is
shared. An experiment learns from params.yaml's teachers (rules train_clean_teacher and
train_robust_teacher, each trained if one of the experiments that learn from it needs it), or,
where the grid sets a teacher's keys otherwise, from that teacher variant, computed once for every
experiment that sets them alike (rules `<teacher stage>_grid`, under `teacher-runs/<variant>/`).
"""

import os
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, workflow.basedir)  # the bmtard package beside this file
from bmtard.experiments import grid as grids
from bmtard.core import project_lock
from bmtard.config import method_table
from bmtard.config.params import load_params
from bmtard.core.errors import BmtardError
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
try:
    EXPERIMENTS = [] if GRID is None else grids.expand(GRID)
    # each experiment's params, validated before any job
    EXP_PARAMS = {e.name: grids.experiment_params(config, e)[0] for e in EXPERIMENTS}
except BmtardError as e:
    stop(e)
RESULTS = "results"
# the teacher each experiment learns from, per role: None = params.yaml's (models/), else the
# name of its variant (teacher-runs/<variant>/), shared by the experiments that set it alike
VARIANT = {
    e.name: {
        r: grids.teacher_variant(config, e, r) for r in method_table.TEACHER_STAGES
    }
    for e in EXPERIMENTS
}
# each variant's params (params.yaml with that teacher's values) and the methods learning from it
VARIANT_PARAMS, VARIANT_METHODS = {}, {}
for e in EXPERIMENTS:
    for r, v in VARIANT[e.name].items():
        if v is not None and method_table.needs(
            EXP_PARAMS[e.name]["distill"]["method"], r
        ):
            VARIANT_PARAMS[v] = grids.teacher_params(config, e, r)
            VARIANT_METHODS.setdefault(v, []).append(
                EXP_PARAMS[e.name]["distill"]["method"]
            )
# per role, the methods of the experiments that learn from params.yaml's own teacher (every
# experiment of a grid that varies no teacher; params.yaml's method without a grid)
METHODS = {
    r: (
        [
            EXP_PARAMS[e.name]["distill"]["method"]
            for e in EXPERIMENTS
            if VARIANT[e.name][r] is None
        ]
        if EXPERIMENTS
        else [config["distill"]["method"]]
    )
    for r in method_table.TEACHER_STAGES
}

with open(Path(workflow.basedir, "dvc.yaml")) as f:
    STAGES = yaml.safe_load(f)["stages"]


def lookup(params, dotted):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def interpolate(cmd, stage_name, methods=None):
    """A dvc.yaml command with its ${section.key} references replaced by the values.

    ${distill.method}, which only the shared teachers' commands name, becomes the methods that
    keep only whether the run's methods (a grid's, or params.yaml's) learn from that teacher
    (method_table.need_only): adding a method to a grid, or changing params.yaml's to another
    with the same teachers, then leaves the teacher's command as it was, and Snakemake reruns
    neither the teacher nor the experiments after it. (DVC names the method itself: it reruns
    the teacher stage, which keeps the finished teacher, and its output hashes do not change.)
    ``methods``: those of the experiments learning from this teacher (a grid's teacher variant),
    instead of the ones learning from params.yaml's.
    """

    def value(match):
        key = match.group(1)
        if key != "distill.method":
            return str(lookup(config, key))
        roles = {stage: role for role, stage in method_table.TEACHER_STAGES.items()}
        if stage_name not in roles:
            stop(
                f"dvc.yaml: stage {stage_name} names ${{distill.method}}; only a teacher's may"
            )
        role = roles[stage_name]
        return ",".join(method_table.need_only(methods or METHODS[role], role))

    return re.sub(r"\$\{([A-Za-z0-9_.]+)\}", value, cmd)


def stage_params(stage, params):
    """The rule params of a stage: each section or dotted key it lists (dots as underscores)."""
    return {p.replace(".", "_"): lookup(params, p) for p in stage.get("params", [])}


def stage_outputs(stage):
    """outs + metrics + plots of a dvc.yaml stage, as plain paths."""
    paths = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def gpus(stage, params):
    """The GPUs a stage's job takes: meta.gpu, times run.processes for a stage that runs as
    that many torchrun workers (meta.processes)."""
    meta = stage.get("meta", {})
    per_process = meta.get("gpu", 0)
    return (
        per_process * params["run"]["processes"]
        if meta.get("processes")
        else per_process
    )


def gpu_stage_threads():
    """A GPU stage's threads: every core given with --cores (it has the machine to itself); 1
    without --cores, as on a cluster, where the profile's set-threads sizes each job."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


# a job's output goes to its log; our one-line messages also to the console (Snakemake says only
# "check log file(s)"): on failure the error or stop line, on success each warning (such as the
# data put back after a failed download)
SHELL = (
    "{params.cmd} > {log} 2>&1 || {{ status=$?; grep -E '^(error|stopped): ' {log} >&2 || true; "
    "exit $status; }}; grep ' WARNING ' {log} >&2 || true"
)


def snake_outputs(paths):
    return [p if "." in p.rsplit("/", 1)[-1] else directory(p) for p in paths]


# the stages an experiment reruns: those reading distill or evaluate, and everything after them
PER_EXPERIMENT = []
for name, stage in STAGES.items():
    reads = {p.split(".")[0] for p in stage.get("params", [])}
    after = {
        p
        for s in PER_EXPERIMENT
        for p in stage_outputs(STAGES[s])
        if p in stage["deps"]
    }
    if reads & {"distill", "evaluate"} or after:
        PER_EXPERIMENT.append(name)
# their outputs, which each experiment writes under results/<exp>/
MOVED = {p for s in PER_EXPERIMENT for p in stage_outputs(STAGES[s])}


def in_experiment(path):
    """An experiment's own copy of ``path``: a moved output, or a folder holding one (such as
    the --live folder of dvclive/distill/metrics.json)."""
    moved = path in MOVED or any(m.startswith(f"{path}/") for m in MOVED)
    return f"{RESULTS}/{{exp}}/{path}" if moved else path


def with_params(words, params_file):
    """A stage's command (its words) reading ``params_file`` instead of params.yaml."""
    at = words.index("-m") + 2  # after `python -m stages.NAME`
    return " ".join(words[:at] + [f"--params {params_file}"] + words[at:])


# each teacher's outputs (an experiment learns from a variant's copy of them, or from these)
TEACHER_OUTPUTS = {
    role: stage_outputs(STAGES[stage])
    for role, stage in method_table.TEACHER_STAGES.items()
}
ROLE_OF_OUTPUT = {p: role for role, outs in TEACHER_OUTPUTS.items() for p in outs}


def teacher_run(path, variant):
    """A teacher variant's copy of the teacher output ``path``."""
    return f"{grids.TEACHER_RUNS}/{variant}/{path}"


def experiment_path(path, exp):
    """Experiment ``exp``'s copy of ``path``: its teacher variant's for a teacher's output, its
    own for a moved output, else ``path`` itself."""
    role = ROLE_OF_OUTPUT.get(path)
    if role is not None and VARIANT[exp][role] is not None:
        return teacher_run(path, VARIANT[exp][role])
    return in_experiment(path).replace("{exp}", exp)


def experiment_cmd(cmd, exp):
    """A per-experiment stage's command: its moved paths under results/<exp>/, its teachers'
    under their variants' folders, and the experiment's params file."""
    words = [experiment_path(w, exp) for w in cmd.split()]
    return with_params(words, f"{RESULTS}/{exp}/params.yaml")


def variant_cmd(stage_name, variant):
    """A teacher variant's command: its outputs under teacher-runs/<variant>/, its params file,
    and the methods of the experiments that learn from it."""
    cmd = interpolate(STAGES[stage_name]["cmd"], stage_name, VARIANT_METHODS[variant])
    outs = stage_outputs(STAGES[stage_name])

    def own(word):  # an output, or a folder holding one (the --live folder)
        return word in outs or any(o.startswith(f"{word}/") for o in outs)

    words = [teacher_run(w, variant) if own(w) else w for w in cmd.split()]
    return with_params(words, teacher_run("params.yaml", variant))


PROJECT_LOCK = []  # the open lock file, kept for the whole run
for stale in project_lock.clear_stale_snakemake_locks():
    print(f"removed {stale}: left by a Snakemake run that was killed", file=sys.stderr)


onstart:
    # one engine at a time in this folder (bmtard/core/project_lock.py); released when Snakemake ends
    try:
        PROJECT_LOCK.append(project_lock.hold_for_run("snakemake"))
    except BmtardError as e:  # before any job; Snakemake releases its own lock
        stop(e)


def all_outputs():
    if not EXPERIMENTS:
        return [p for stage in STAGES.values() for p in stage_outputs(stage)]
    shared = [
        p
        for n, s in STAGES.items()
        if n not in PER_EXPERIMENT
        for p in stage_outputs(s)
    ]
    return shared + expand(
        [in_experiment(p) for p in MOVED], exp=[e.name for e in EXPERIMENTS]
    )


rule all:
    default_target: True
    input:
        all_outputs(),


for stage_name, stage in STAGES.items():

    rule:
        name:
            stage_name
        input:
            stage["deps"],
        output:
            snake_outputs(stage_outputs(stage)),
        log:
            f"logs/{stage_name}.log",
        conda:
            "envs/bmtard.yaml"
        threads: gpu_stage_threads() if stage.get("meta", {}).get("gpu") else 1
        resources:
            gpu=gpus(stage, config),
        params:
            **stage_params(stage, config),
            # the command goes through params: a loop variable read in `shell:` would be read
            # when the job runs, i.e. after the loop, and give the last stage's command
            cmd=interpolate(stage["cmd"], stage_name),
        shell:
            SHELL


if EXPERIMENTS:

    # writing an experiment's params file is no job for a cluster: it runs where Snakemake runs
    localrules:
        grid_params,

    rule grid_params:
        output:
            f"{RESULTS}/{{exp}}/params.yaml",
        params:
            values=lambda wc: EXP_PARAMS[wc.exp],
        run:
            tmp = Path(f"{output[0]}.tmp")
            tmp.write_text(yaml.safe_dump(params.values, sort_keys=False))
            os.replace(tmp, output[0])

    def experiment_inputs(deps, exp):
        """An experiment's inputs: its copies of ``deps`` (``experiment_path``) but for the
        outputs of a teacher its method does not learn from (its stages never read them), so
        that it neither waits for that teacher's job nor reruns after it."""
        method = EXP_PARAMS[exp]["distill"]["method"]
        unread = {
            p
            for role, outs in TEACHER_OUTPUTS.items()
            if not method_table.needs(method, role)
            for p in outs
        }
        return [experiment_path(p, exp) for p in deps if p not in unread]

    for stage_name in PER_EXPERIMENT:
        stage = STAGES[stage_name]

        rule:
            name:
                f"{stage_name}_grid"
            input:
                lambda wc, deps=stage["deps"]: experiment_inputs(deps, wc.exp),
                f"{RESULTS}/{{exp}}/params.yaml",
            output:
                snake_outputs([in_experiment(p) for p in stage_outputs(stage)]),
            log:
                f"logs/{stage_name}_{{exp}}.log",
            wildcard_constraints:
                exp="|".join(re.escape(e.name) for e in EXPERIMENTS),
            conda:
                "envs/bmtard.yaml"
            threads: gpu_stage_threads() if stage.get("meta", {}).get("gpu") else 1
            resources:
                gpu=lambda wc, stage=stage: gpus(stage, EXP_PARAMS[wc.exp]),
            params:
                # the experiment's own values, so that a change reruns only its jobs
                values=lambda wc, stage=stage: stage_params(stage, EXP_PARAMS[wc.exp]),
                cmd=lambda wc, cmd=stage["cmd"]: experiment_cmd(cmd, wc.exp),
            shell:
                SHELL


if VARIANT_PARAMS:

    localrules:
        grid_teacher_params,

    rule grid_teacher_params:
        output:
            f"{grids.TEACHER_RUNS}/{{tvar}}/params.yaml",
        params:
            values=lambda wc: VARIANT_PARAMS[wc.tvar],
        run:
            tmp = Path(f"{output[0]}.tmp")
            tmp.write_text(yaml.safe_dump(params.values, sort_keys=False))
            os.replace(tmp, output[0])

    # a teacher variant: the teacher stage in teacher-runs/<variant>/, once for every experiment
    # that learns from it
    for role, stage_name in method_table.TEACHER_STAGES.items():
        stage = STAGES[stage_name]
        section = grids.TEACHER_SECTIONS[role]
        variants = [v for v in VARIANT_PARAMS if v.startswith(f"{section}-")]
        if not variants:
            continue

        rule:
            name:
                f"{stage_name}_grid"
            input:
                stage["deps"],
                f"{grids.TEACHER_RUNS}/{{tvar}}/params.yaml",
            output:
                snake_outputs([teacher_run(p, "{tvar}") for p in stage_outputs(stage)]),
            log:
                f"logs/{stage_name}_{{tvar}}.log",
            wildcard_constraints:
                tvar="|".join(re.escape(v) for v in variants),
            conda:
                "envs/bmtard.yaml"
            threads: gpu_stage_threads()
            resources:
                gpu=lambda wc, stage=stage: gpus(stage, VARIANT_PARAMS[wc.tvar]),
            params:
                values=lambda wc, stage=stage: stage_params(
                    stage, VARIANT_PARAMS[wc.tvar]
                ),
                cmd=lambda wc, name=stage_name: variant_cmd(name, wc.tvar),
            shell:
                SHELL
