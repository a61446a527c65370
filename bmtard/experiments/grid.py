"""Experiment grids: the values to vary over one ``params.yaml``, one experiment per combination.

A grid is a mapping of dotted keys to lists of values, e.g.::

    grid:
      distill.method: [sat, rslad, bmtard]
      run.seed: [0, 1]

or a list of such mappings, whose experiments are taken together (for combinations that are not
a product, as in ``presets/grid.yaml``: IGDM on the methods it composes with only)::

    grid:
      - {distill.method: [sat, rslad], run.seed: [0]}
      - {distill.method: [bmtard, adaad], distill.igdm.alpha: [0.0, 1.0], run.seed: [0, 1]}

What may vary: what the student's stages read (``distill.*``, ``evaluate.*``, ``run.seed``) and
the teachers (``clean_teacher.*``, ``robust_teacher.*``: another published teacher, another file,
another architecture to train). The data is shared by every experiment. Each combination is an
experiment named from its values (``method-sat_seed-0``; a teacher key by its whole name,
``clean_teacher-published-AutoAttack_ResNet18``). Snakemake runs each one in
``results/<experiment>/`` (the Snakefile, with ``--configfile`` naming the grid file); DVC queues
the same combinations with ``dvc exp run --queue -S distill.method=sat,rslad,bmtard -S
run.seed=0,1`` (``dvc_command``).

Teachers: an experiment that sets no teacher key to another value than params.yaml's learns from
the teachers of params.yaml, which Snakemake trains (or imports) once in ``models/``. Experiments
that set a teacher's keys alike share that teacher, its *variant*, computed once in
``teacher-runs/<variant>/`` (``teacher_variant``); DVC computes an experiment's teachers in that
experiment. A grid that has run can take another teacher as a further part of a list: the
finished experiments keep their names, and nothing of theirs reruns.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from bmtard.config import method_table
from bmtard.config.params import parse_params
from bmtard.config.schema import Params
from bmtard.core.errors import ParamsError

#: the parameter section of each teacher role
TEACHER_SECTIONS = {role: f"{role}_teacher" for role in method_table.TEACHER_STAGES}
#: what an experiment may change: keys under these prefixes, or exactly these keys
VARIABLE = ("distill.", "evaluate.", "run.seed", *(f"{s}." for s in TEACHER_SECTIONS.values()))
SCALARS = (str, int, float, bool)
#: where Snakemake computes a teacher that some experiments of a grid share (``teacher_variant``)
TEACHER_RUNS = "teacher-runs"


@dataclass(frozen=True)
class Experiment:
    """One combination: its name (a folder name) and the values it sets (dotted key -> value)."""

    name: str
    overrides: dict[str, Any]


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not any(
        key == v or (v.endswith(".") and key.startswith(v)) for v in VARIABLE
    ):
        raise ParamsError(
            f"grid key {key!r}: a grid varies distill.*, evaluate.*, run.seed, clean_teacher.* "
            "and robust_teacher.* only (the data is shared by every experiment)"
        )
    return key


def _is_teacher_key(key: str) -> bool:
    return key.split(".", 1)[0] in TEACHER_SECTIONS.values()


def _part(key: str, value: Any, full: bool) -> str:
    # a teacher's keys by their whole name: clean and robust share every key name
    label = key.replace(".", "-") if full or _is_teacher_key(key) else key.rsplit(".", 1)[-1]
    text = _text(value)
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in text)
    return f"{label}-{safe}"


def _text(value: Any) -> str:
    """A grid value as YAML writes it (true, null, 0.5)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def expand(grid: Any) -> list[Experiment]:
    """Every combination of ``grid`` (dotted key -> non-empty list of scalars), in order; for a
    list of such mappings, the combinations of each, in order (every name once)."""
    if isinstance(grid, list) and grid:
        out: list[Experiment] = []
        for part in grid:
            for exp in _expand_one(part):
                if any(e.name == exp.name for e in out):
                    raise ParamsError(f"grid: experiment {exp.name!r} is listed twice")
                out.append(exp)
        return out
    return _expand_one(grid)


def _expand_one(grid: Any) -> list[Experiment]:
    if not isinstance(grid, dict) or not grid:
        raise ParamsError(
            f"grid = {grid!r}: expected a mapping of keys to lists of values, or a list of such "
            "mappings"
        )
    keys = [_check_key(k) for k in grid]
    for key in keys:
        values = grid[key]
        if not isinstance(values, list) or not values:
            raise ParamsError(f"grid key {key}: expected a non-empty list of values")
        for v in values:
            if v is not None and not isinstance(v, SCALARS):
                raise ParamsError(f"grid key {key}: {v!r} is not a number, string, boolean or null")
        if len(set(map(repr, values))) != len(values):
            raise ParamsError(f"grid key {key}: a value is listed twice")
    lasts = [k.rsplit(".", 1)[-1] for k in keys if not _is_teacher_key(k)]
    full = len(set(lasts)) != len(lasts)  # two keys end alike: name by the whole key
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, combo, strict=True))
        name = "_".join(_part(k, v, full) for k, v in overrides.items())
        if any(e.name == name for e in out):
            raise ParamsError(
                f"grid: two experiments would both be named {name!r} (values that differ only "
                "in characters a folder name cannot hold)"
            )
        out.append(Experiment(name, overrides))
    return out


def apply(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` with ``overrides`` (dotted key -> value) set; every
    key must exist already."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"grid key {dotted}: no such section in params.yaml")
            node = node[part]
        if last not in node:
            raise ParamsError(f"grid key {dotted}: no such key in params.yaml")
        node[last] = value
    return out


def experiment_params(raw: dict[str, Any], exp: Experiment) -> tuple[dict[str, Any], Params]:
    """The experiment's params mapping and its validated form; a bad value is one line naming
    the experiment."""
    merged = apply(raw, exp.overrides)
    try:
        return merged, parse_params(merged)
    except ParamsError as e:
        raise ParamsError(f"experiment {exp.name}: {e}") from None


def _value(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


def teacher_overrides(raw: dict[str, Any], exp: Experiment, role: str) -> dict[str, Any]:
    """The values ``exp`` gives the ``role`` teacher's keys that differ from ``raw``'s."""
    prefix = f"{TEACHER_SECTIONS[role]}."
    return {
        k: v
        for k, v in exp.overrides.items()
        if k.startswith(prefix) and repr(v) != repr(_value(raw, k))
    }


def teacher_variant(raw: dict[str, Any], exp: Experiment, role: str) -> str | None:
    """The name of the ``role`` teacher ``exp`` learns from: None for params.yaml's own, else a
    name from the values it sets otherwise (``clean_teacher-published-AutoAttack_ResNet18``),
    the same for every experiment that sets them alike (they share that teacher)."""
    changed = teacher_overrides(raw, exp, role)
    if not changed:
        return None
    return "_".join(_part(k, v, True) for k, v in changed.items())


def teacher_params(raw: dict[str, Any], exp: Experiment, role: str) -> dict[str, Any]:
    """The params mapping of ``exp``'s ``role`` teacher: ``raw`` with that teacher's keys as
    ``exp`` sets them (nothing else of ``exp``'s: the teacher's stage reads no other)."""
    return apply(raw, teacher_overrides(raw, exp, role))


def methods(raw: dict[str, Any], experiments: list[Experiment]) -> list[str]:
    """The distill.method values of the experiments, each once, in order."""
    seen: list[str] = []
    for exp in experiments:
        m = exp.overrides.get("distill.method", raw["distill"]["method"])
        if m not in seen:
            seen.append(m)
    return seen


def dvc_command(grid: dict[str, list[Any]] | list[dict[str, list[Any]]]) -> str:
    """The ``dvc exp run --queue`` command (one line per mapping of a list) that queues the same
    combinations."""
    expand(grid)  # validates

    def command(part: dict[str, list[Any]]) -> str:
        sets = " ".join(f"-S '{k}={','.join(map(_text, v))}'" for k, v in part.items())
        return f"dvc exp run --queue {sets}"

    return "\n".join(command(p) for p in (grid if isinstance(grid, list) else [grid]))
