"""dvc.yaml as Snakemake rules: the one translation of the DAG, which the Snakefile imports (and
only defines the rules from) and ``tests/test_workflow.py`` checks.

Every DVC stage becomes a rule of the same name with the same command (its ``${section.key}``
references filled in as DVC fills them), its inputs (deps), outputs (outs, metrics, plots) and
params (the params.yaml sections or keys it lists, so that a change reruns it). A grid runs the
stages that read ``distill`` or ``evaluate`` (and those after them) once per experiment, under
``results/<experiment>/``, and each teacher variant the grid asks for once, under
``teacher-runs/<variant>/`` (``bmtard.experiments.grid``). A per-experiment or variant command
reads its own params file through ``BMTARD_PARAMS`` set before it (never an argument spliced into
the command), and its paths are replaced by that run's copies, path by path.

Code as inputs: ``dvc.yaml`` lists each stage's code folders (DVC hashes a folder; a rerun that
changes nothing keeps each stage's result in seconds, since every result is keyed by the code its
process imported). Snakemake compares files by time, and reruns a job's successors whenever it
reruns the job, so its rules take the code files a stage can import (``code_closure``: the
static imports from its script, and for the distillation its method's own module) instead: an
edit of one method's module reruns only the experiments of that method.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bmtard.config import method_table
from bmtard.config.params import PARAMS_ENV
from bmtard.core.errors import BmtardError
from bmtard.experiments import grid as grids
from bmtard.experiments.grid import Experiment

RESULTS = "results"
#: the code packages of the project (dvc.yaml's code deps live under these)
CODE_ROOTS = ("bmtard", "stages")
# A job's output goes to its log; our one-line messages also to the console (Snakemake says only
# "check log file(s)"): on failure the error or stop line, on success each warning (such as the
# data put back after a failed download).
SHELL = (
    "{params.cmd} > {log} 2>&1 || {{ status=$?; grep -E '^(error|stopped): ' {log} >&2 || true; "
    "exit $status; }}; grep ' WARNING ' {log} >&2 || true"
)


def lookup(params: dict[str, Any], dotted: str) -> Any:
    """The value of ``section.key...`` in a params mapping."""
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def stage_params(stage: dict, params: dict[str, Any]) -> dict[str, Any]:
    """The rule params of a stage: each section or dotted key it lists (dots as underscores)."""
    return {p.replace(".", "_"): lookup(params, p) for p in stage.get("params", [])}


def stage_outputs(stage: dict) -> list[str]:
    """outs + metrics + plots of a dvc.yaml stage, as plain paths."""
    paths: list[str] = []
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            paths.extend(entry if isinstance(entry, dict) else [entry])
    return paths


def is_code(dep: str) -> bool:
    """Whether a dvc.yaml dep is code (a file or folder of the project's packages)."""
    return dep.split("/", 1)[0] in CODE_ROOTS


def gpus(stage: dict, params: dict[str, Any]) -> int:
    """The GPUs a stage's job takes: meta.gpu, times run.processes for a stage that runs as that
    many torchrun workers (meta.processes)."""
    meta = stage.get("meta", {})
    per_process = int(meta.get("gpu", 0))
    return per_process * int(params["run"]["processes"]) if meta.get("processes") else per_process


def stage_module(cmd: str) -> str:
    """The module a stage's command runs (``python -m stages.distill ...``)."""
    found = re.search(r"python -m (\S+)", cmd)
    if found is None:
        raise BmtardError(f"dvc.yaml: {cmd!r} runs no python -m module")
    return found.group(1)


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (``bmtard.methods.ciard`` -> bmtard/methods/ciard.py, a
    package -> its __init__.py); None for a module of another package."""
    if module.split(".", 1)[0] not in CODE_ROOTS:
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    """The project modules ``path`` (module ``module``) imports anywhere in its body (function
    bodies too: a superset of what it loads), with their parent packages."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # a submodule imported by name
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if m.split(".", 1)[0] in CODE_ROOTS}


def code_closure(root: Path, modules: list[str]) -> list[str]:
    """Every project file the ``modules`` can import (the static closure of their imports),
    relative to ``root``, sorted."""
    seen: dict[str, Path] = {}
    # importing a module imports its packages first
    todo = [".".join(m.split(".")[: i + 1]) for m in modules for i in range(m.count(".") + 1)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(root, module)
        if path is None:
            continue
        seen[module] = path
        todo.extend(_imports(path, module) - set(seen))
    return sorted({str(p.relative_to(root)) for p in seen.values()})


def code_folders(files: list[str]) -> list[str]:
    """The folders that hold ``files`` as dvc.yaml lists them: each bmtard subpackage whole, and
    the package files and stage scripts themselves."""
    out = set()
    for f in files:
        parts = f.split("/")
        out.add("/".join(parts[:2]) if parts[0] == "bmtard" and len(parts) > 2 else f)
    return sorted(out)


@dataclass
class Workflow:
    """The rules of dvc.yaml's ``stages`` over a params mapping ``config`` and a grid's
    ``experiments`` (none: the workspace's one run), with the project folder ``root`` (the code
    inputs)."""

    stages: dict[str, dict]
    config: dict[str, Any]
    experiments: list[Experiment] = field(default_factory=list)
    root: Path = Path(".")

    def __post_init__(self) -> None:
        self.exp_params = {
            e.name: grids.experiment_params(self.config, e)[0] for e in self.experiments
        }
        roles = tuple(method_table.TEACHER_STAGES)
        # the teacher each experiment learns from, per role: None = params.yaml's (models/),
        # else its variant (teacher-runs/<variant>/), shared by the experiments setting it alike
        self.variant = {
            e.name: {r: grids.teacher_variant(self.config, e, r) for r in roles}
            for e in self.experiments
        }
        self.variant_params: dict[str, dict] = {}
        self.variant_methods: dict[str, list[str]] = {}
        self.variant_role: dict[str, str] = {}
        for e in self.experiments:
            method = self.method_of(e.name)
            for r, v in self.variant[e.name].items():
                if v is not None and method_table.needs(method, r):
                    self.variant_params[v] = grids.teacher_params(self.config, e, r)
                    self.variant_methods.setdefault(v, []).append(method)
                    self.variant_role[v] = r
        # per role, the methods of the runs that learn from params.yaml's own teacher
        self.methods = {
            r: (
                [
                    self.method_of(e.name)
                    for e in self.experiments
                    if self.variant[e.name][r] is None
                ]
                if self.experiments
                else [self.config["distill"]["method"]]
            )
            for r in roles
        }
        self.per_experiment = self._per_experiment()
        self.moved = {p for s in self.per_experiment for p in stage_outputs(self.stages[s])}
        self.teacher_outputs = {
            r: stage_outputs(self.stages[s]) for r, s in method_table.TEACHER_STAGES.items()
        }
        self.role_of_output = {p: r for r, outs in self.teacher_outputs.items() for p in outs}

    # ---------------------------------------------------------------- what runs where

    def method_of(self, exp: str) -> str:
        return self.exp_params[exp]["distill"]["method"]

    def _per_experiment(self) -> list[str]:
        """The stages an experiment reruns: those reading distill or evaluate, and every stage
        after them."""
        out: list[str] = []
        for name, stage in self.stages.items():
            reads = {p.split(".")[0] for p in stage.get("params", [])}
            after = any(p in stage["deps"] for s in out for p in stage_outputs(self.stages[s]))
            if reads & {"distill", "evaluate"} or after:
                out.append(name)
        return out

    def in_experiment(self, path: str, exp: str) -> str:
        """Experiment ``exp``'s own copy of ``path``: a moved output, or a folder holding one
        (the --live folder of dvclive/distill/metrics.json); else ``path``."""
        moved = path in self.moved or any(m.startswith(f"{path}/") for m in self.moved)
        return f"{RESULTS}/{exp}/{path}" if moved else path

    def experiment_path(self, path: str, exp: str) -> str:
        """Experiment ``exp``'s copy of ``path``: its teacher variant's for a teacher's output,
        its own for a moved output, else ``path`` itself."""
        role = self.role_of_output.get(path)
        if role is not None and self.variant[exp][role] is not None:
            return self.teacher_run(path, self.variant[exp][role])
        return self.in_experiment(path, exp)

    @staticmethod
    def teacher_run(path: str, variant: str) -> str:
        """A teacher variant's copy of ``path``."""
        return f"{grids.TEACHER_RUNS}/{variant}/{path}"

    def variants_of(self, role: str) -> list[str]:
        """The teacher variants of ``role`` the grid's experiments learn from."""
        return [v for v, r in self.variant_role.items() if r == role]

    # ---------------------------------------------------------------- commands

    def interpolate(self, stage_name: str, methods: list[str] | None = None) -> str:
        """A stage's command with its ${section.key} references replaced by the values.

        ${distill.method}, which only the teachers' commands name, becomes the methods that
        keep only whether the runs' methods learn from that teacher (``method_table.need_only``):
        adding a method to a grid, or changing params.yaml's to another with the same teachers,
        leaves the command as it was, and Snakemake reruns neither the teacher nor the
        experiments after it. (DVC names the method itself: it reruns the teacher stage, which
        keeps the finished teacher, and its output hashes do not change.) ``methods``: those of
        the experiments learning from a teacher variant, instead of params.yaml's teacher's.
        """
        roles = {stage: role for role, stage in method_table.TEACHER_STAGES.items()}

        def value(match: re.Match) -> str:
            key = match.group(1)
            if key != "distill.method":
                return str(lookup(self.config, key))
            if stage_name not in roles:
                raise BmtardError(
                    f"dvc.yaml: stage {stage_name} names ${{distill.method}}; only a teacher's may"
                )
            role = roles[stage_name]
            return ",".join(method_table.need_only(methods or self.methods[role], role))

        return re.sub(r"\$\{([A-Za-z0-9_.]+)\}", value, self.stages[stage_name]["cmd"])

    def experiment_cmd(self, stage_name: str, exp: str) -> str:
        """A per-experiment stage's command: its paths replaced by the experiment's copies
        (``experiment_path``), reading the experiment's params file."""
        words = [self.experiment_path(w, exp) for w in self.stages[stage_name]["cmd"].split()]
        return f"{PARAMS_ENV}={RESULTS}/{exp}/params.yaml " + " ".join(words)

    def variant_cmd(self, stage_name: str, variant: str) -> str:
        """A teacher variant's command: its outputs (and folders holding them) under
        teacher-runs/<variant>/, its params file, the methods of the experiments learning from
        it."""
        cmd = self.interpolate(stage_name, self.variant_methods[variant])
        outs = stage_outputs(self.stages[stage_name])

        def own(word: str) -> bool:
            return word in outs or any(o.startswith(f"{word}/") for o in outs)

        words = [self.teacher_run(w, variant) if own(w) else w for w in cmd.split()]
        return f"{PARAMS_ENV}={self.teacher_run('params.yaml', variant)} " + " ".join(words)

    # ---------------------------------------------------------------- inputs and outputs

    def code_inputs(self, stage_name: str, method: str | None = None) -> list[str]:
        """The code files a stage's job can import: the closure of its script, and for the
        distillation that of ``method``'s own module (imported by name when it is built)."""
        modules = [stage_module(self.stages[stage_name]["cmd"])]
        if method is not None and stage_name == "distill":
            modules.append(f"bmtard.methods.{method_table.method(method).module}")
        return code_closure(self.root, modules)

    def data_inputs(self, stage_name: str) -> list[str]:
        return [d for d in self.stages[stage_name]["deps"] if not is_code(str(d))]

    def inputs(self, stage_name: str) -> list[str]:
        """A shared rule's inputs (params.yaml's method for the distillation's code)."""
        method = self.config["distill"]["method"]
        return self.code_inputs(stage_name, method) + self.data_inputs(stage_name)

    def experiment_inputs(self, stage_name: str, exp: str) -> list[str]:
        """An experiment's inputs: its copies of the stage's data deps but for the outputs of a
        teacher its method does not learn from (its stages never read them: it neither waits for
        that teacher's job nor reruns after it), its code, and its params file."""
        method = self.method_of(exp)
        unread = {
            p
            for role, outs in self.teacher_outputs.items()
            if not method_table.needs(method, role)
            for p in outs
        }
        data = [
            self.experiment_path(p, exp) for p in self.data_inputs(stage_name) if p not in unread
        ]
        return self.code_inputs(stage_name, method) + data + [f"{RESULTS}/{exp}/params.yaml"]

    def variant_inputs(self, stage_name: str, variant: str) -> list[str]:
        return (
            self.code_inputs(stage_name)
            + self.data_inputs(stage_name)
            + [self.teacher_run("params.yaml", variant)]
        )

    def all_outputs(self) -> list[str]:
        """What a run produces: every stage's outputs, or with a grid the shared stages' and
        every experiment's own."""
        if not self.experiments:
            return [p for stage in self.stages.values() for p in stage_outputs(stage)]
        shared = [
            p
            for n, s in self.stages.items()
            if n not in self.per_experiment
            for p in stage_outputs(s)
        ]
        own = [self.in_experiment(p, e.name) for e in self.experiments for p in sorted(self.moved)]
        return shared + own


# ------------------------------------------------------------------------ the report's rules


@dataclass(frozen=True)
class Page:
    """A picture or page of each run in the Snakemake report (``snakemake --report``), made by a
    rule of its own (``name``; ``<name>_grid`` per experiment of a grid) from one file of the
    run (``source``) into ``<run>/pages/<out>``. ``cmd``: its command, over ``{input}``,
    ``{output}`` and ``{run}`` (the run's folder), filled in by ``page_command``."""

    name: str
    source: str
    out: str
    cmd: str
    caption: str


PAGES = (
    Page(
        "curves",
        "dvclive/distill/metrics.json",  # written last: the distillation's curves are complete
        "curves.png",
        "python -m bmtard curves --auto --run {run} --out {output}",
        "report/curves.rst",
    ),
    Page(
        "card",
        "models/student.card.json",
        "card.html",
        "python -m bmtard card {input} --out {output}",
        "report/card.rst",
    ),
)
#: the folder of the comparison (``python -m bmtard compare``), a report rule of its own
COMPARISON = "comparison"
#: every rule of the report: not pipeline stages, they follow every finished run
REPORT_RULES = ("compare", *(p.name for p in PAGES), *(f"{p.name}_grid" for p in PAGES))


def in_run(path: str, exp: str | None) -> str:
    """``path`` of a run's folder: the workspace's (``exp`` None) or an experiment's."""
    return path if exp is None else f"{RESULTS}/{exp}/{path}"


def page_path(page: Page, exp: str | None) -> str:
    return in_run(f"pages/{page.out}", exp)


def page_command(page: Page, exp: str | None) -> str:
    """The command that makes ``page`` of a run (the workspace's, ``exp`` None)."""
    run = "." if exp is None else f"{RESULTS}/{exp}"
    return page.cmd.format(input=in_run(page.source, exp), output=page_path(page, exp), run=run)


#: the files a finished run's row in the comparison is read from (``bmtard.experiments.runs``)
RUN_FILES = ("metrics/evaluate.json", "metrics/cost.json", "models/student.cost.json")


def report_targets(exps: list[str]) -> list[str]:
    """What the report shows besides the stages' outputs: the comparison and every run's
    pages (a grid's experiments, else the workspace's run)."""
    runs: list[str | None] = list(exps) or [None]
    return [COMPARISON] + [page_path(p, e) for p in PAGES for e in runs]


def compare_inputs(exps: list[str]) -> list[str]:
    runs: list[str | None] = list(exps) or [None]
    return [in_run(f, e) for e in runs for f in RUN_FILES]
