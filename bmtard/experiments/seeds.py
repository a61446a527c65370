"""Runs that differ only in their seed, taken together: mean, standard deviation and number of
seeds of every column (accuracies in %).

Two runs belong to one group when their parameters are the same but for ``run.seed``. A run
that two engines both list (the workspace is usually also a DVC baseline or experiment: the same
parameters and the same numbers) is counted once. A group is named by its method as tables name
it, with the settings that set it apart from other groups of that method on the same dataset and
student (e.g. ``B-MTARD (distill.balance.tau_lr=0.002)``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bmtard.config import method_table
from bmtard.experiments.runs import COLUMNS, COST_COLUMNS, W_ROBUST, Run

#: the parameter that varies inside a group
SEED = ("run", "seed")


@dataclass(frozen=True)
class Stat:
    """One column of a group: the mean and sample standard deviation (None for one seed) of the
    ``n`` runs that have it (%)."""

    mean: float
    std: float | None
    n: int

    def text(self) -> str:
        """'52.10 ± 0.35 (3)', or '52.10 (1)' for one seed."""
        spread = "" if self.std is None else f" ± {self.std:.2f}"
        return f"{self.mean:.2f}{spread} ({self.n})"


@dataclass(frozen=True)
class Group:
    """The runs of one setting, over seeds."""

    label: str
    method: str  # the method's label (with +IGDM), without the distinguishing settings
    student: str
    dataset: str
    runs: tuple[Run, ...]
    teachers: str = ""  # the teachers it learned from, as tables name them (runs.teachers_label)

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def stat(self, key: str) -> Stat | None:
        """The column ``key`` (clean, an attack, or ``W_ROBUST``) over the runs that have it."""
        values = [v for r in self.runs if (v := r.value(key)) is not None]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return Stat(statistics.fmean(values), std, len(values))


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _unread(run: Run) -> set[str]:
    """The parameter sections of the teachers ``run``'s method does not learn from (a SAT run
    is the same setting whatever its clean teacher would have been)."""
    spec = method_table.BY_NAME.get(run.method)
    if spec is None:
        return set()
    return {f"{r}_teacher." for r in method_table.TEACHER_STAGES if r not in spec.teachers}


def _setting(run: Run) -> str:
    """What makes a run's setting: its parameters but the seed and the teachers it does not
    learn from, canonically."""
    flat = _flat(run.params)
    flat.pop(".".join(SEED), None)
    unread = _unread(run)
    flat = {k: v for k, v in flat.items() if not any(k.startswith(u) for u in unread)}
    return json.dumps(flat, sort_keys=True, default=str)


def distinct(runs: Sequence[Run]) -> list[Run]:
    """``runs`` without repeats: a run with the same parameters and numbers as an earlier one (the
    same run, listed by two engines) is dropped."""
    seen, out = set(), []
    for r in runs:
        key = (json.dumps(r.params, sort_keys=True, default=str), repr(sorted(r.accuracy.items())))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def groups(runs: Sequence[Run]) -> list[Group]:
    """The runs of ``runs`` (repeats dropped) grouped by setting, in the order first seen."""
    by_setting: dict[str, list[Run]] = {}
    for r in distinct(runs):
        by_setting.setdefault(_setting(r), []).append(r)
    parts = list(by_setting.values())
    out = []
    for members in parts:
        first = members[0]
        # the teachers column tells runs of other teachers apart: the label names only what
        # sets this setting apart from those of the same method and teachers
        rivals = [p[0] for p in parts if p is not members and _kind(p[0]) == _kind(first)]
        label = first.label + _difference(first, rivals)
        out.append(
            Group(label, first.label, first.student, first.dataset, tuple(members), first.teachers)
        )
    return out


def _kind(run: Run) -> tuple[str, str, str, str]:
    return run.label, run.student, run.dataset, run.teachers


def _difference(run: Run, rivals: Sequence[Run]) -> str:
    """`` (key=value, ...)``: the settings of ``run`` that a rival sets otherwise ("" if none),
    but for the sections of teachers it does not learn from."""
    if not rivals:
        return ""
    unread = _unread(run)
    mine = _flat(run.params)
    keys = sorted(
        k
        for k in mine
        if k != ".".join(SEED)
        and not any(k.startswith(u) for u in unread)
        and any(_flat(o.params).get(k) != mine[k] for o in rivals)
    )
    shown = ", ".join(f"{k}={mine[k]}" for k in keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f" ({shown})" if shown else ""


def summary_rows(found: Sequence[Group]) -> list[dict[str, Any]]:
    """One mapping per group: method, student, dataset, seeds, then each column as
    'mean ± std (n)' ('—' where no run has it), and the sanity checks' verdicts."""
    out = []
    for g in found:
        row: dict[str, Any] = {
            "Method": g.label,
            "Teachers": g.teachers,
            "Student": g.student,
            "Dataset": g.dataset,
            "Seeds": ",".join(map(str, g.seeds)),
        }
        for header, key in (*COLUMNS, (W_ROBUST, W_ROBUST)):
            stat = g.stat(key)
            row[header] = "—" if stat is None else stat.text()
        verdicts = [r.sanity for r in g.runs]
        row["Sanity"] = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts))
        for header, key in COST_COLUMNS:
            stat = g.stat(key)
            row[header] = "—" if stat is None else stat.text()
        out.append(row)
    return out


def numbers(found: Sequence[Group]) -> list[dict[str, Any]]:
    """The summary as numbers (a CSV): per group and column its mean, std and n."""
    out = []
    for g in found:
        row: dict[str, Any] = {
            "method": g.label,
            "teachers": g.teachers,
            "student": g.student,
            "dataset": g.dataset,
        }
        row["seeds"] = " ".join(map(str, g.seeds))
        for header, key in (*COLUMNS, (W_ROBUST, W_ROBUST), *COST_COLUMNS):
            stat = g.stat(key)
            for part in ("mean", "std", "n"):
                row[f"{header} {part}"] = None if stat is None else getattr(stat, part)
        out.append(row)
    return out
