"""The trade-off picture: clean against AutoAttack accuracy (%) on one dataset, every run as a
small dot, each setting's mean over its seeds with its standard deviation as error bars, and the
published points as hollow reference markers (``bmtard.experiments.reported``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bmtard.core.io import write_atomic
from bmtard.experiments.reported import MISSING, Reported, reported
from bmtard.experiments.runs import NO_TEACHER, W_ROBUST, W_ROBUST_OF, Run
from bmtard.experiments.seeds import Group

#: marker shapes of the published points, one per point (hollow)
REPORTED_MARKERS = ("D", "s", "^", "v", "P", "X", "*", "h", "p", "<", ">", "d")
#: marker shapes of the runs, one per teacher setting (filled; circles where there is one)
TEACHER_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def points(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The picture's points: each run with an AutoAttack accuracy, then the published points
    on the runs' datasets (source 'reported: ...'); a DVC plot (``comparison/tradeoff.csv``)."""
    out = [
        {
            "name": r.name,
            "method": r.label,
            "dataset": r.dataset,
            "student": r.student,
            "teachers": r.teachers,
            "clean": r.accuracy["clean"],
            "autoattack": r.accuracy[W_ROBUST_OF],
            "source": "run",
        }
        for r in runs
        if "clean" in r.accuracy and W_ROBUST_OF in r.accuracy
    ]
    for dataset in sorted({r.dataset for r in runs}):
        out += [_reported_point(p) for p in reported(dataset)]
    return out


def _reported_point(p: Reported) -> dict[str, Any]:
    return {
        "name": f"{p.method} (reported)",
        "method": p.method,
        "dataset": p.dataset,
        "student": p.student,
        "teachers": p.teachers,
        "clean": p.clean,
        "autoattack": p.autoattack,
        "source": f"reported: {p.source} [{p.certainty}]",
    }


def plot(pts: list[dict[str, Any]], found: Sequence[Group], dataset: str, path: Path) -> None:
    """Clean (x) against AutoAttack (y) on ``dataset``, in two panels: the runs beside the
    published points (left), and the runs alone at their own scale (right). Each group's runs
    are small dots and its mean a large one with error bars of one standard deviation (several
    seeds), one colour per setting of a method and one marker shape per teacher setting (the
    same method from two teachers: one colour, two shapes); published points are hollow black
    markers, one shape each. One legend below both names them (text labels beside the points
    would overlap where runs cluster), with the teachers where the runs learned from more than
    one setting of them."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    mine = [g for g in found if g.dataset == dataset]
    ref = [p for p in pts if p["dataset"] == dataset and p["source"] != "run"]
    rows = len(mine) + len(ref)
    fig, (wide, near) = plt.subplots(1, 2, figsize=(12, 5.5 + 0.11 * rows), dpi=110)
    labels = list(dict.fromkeys(g.label for g in mine))
    settings = list(dict.fromkeys(g.teachers for g in mine if g.teachers != NO_TEACHER))
    for ax in (wide, near):
        for g in mine:
            _draw_group(ax, g, labels, settings, plt, legend=ax is wide)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("AutoAttack accuracy (%), eps 8/255")
        ax.grid(alpha=0.3)
        ax.margins(x=0.08, y=0.08)
    for i, p in enumerate(ref):
        wide.scatter(
            [p["clean"]], [p["autoattack"]], s=60, facecolors="none", edgecolors="black",
            marker=REPORTED_MARKERS[i % len(REPORTED_MARKERS)], label=p["name"], zorder=2,
        )  # fmt: skip
    wide.set_title(f"{dataset}: the runs and the published points", fontsize=10)
    near.set_title("the runs: mean ± std over seeds, dots: each run", fontsize=10)
    handles, names = wide.get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.text(
        0.01, 0.005,
        "reported: published numbers (bmtard/experiments/reported.py), with other teachers and "
        f"protocols; not in it: {', '.join(MISSING)}",
        fontsize=6, color="gray",
    )  # fmt: skip
    legend_inches = 0.3 + 0.15 * ((len(handles) + 1) // 2)  # two columns of 7-point lines
    fig.tight_layout(rect=(0, min(0.6, legend_inches / fig.get_figheight()), 1, 1))
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _draw_group(ax, g: Group, labels: list[str], settings: list[str], plt, legend: bool) -> None:
    """One setting on ``ax``: its runs as dots, its mean ± std as a marker with error bars."""
    color = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(labels.index(g.label) % 20)
    at = settings.index(g.teachers) if g.teachers in settings else 0
    marker = TEACHER_MARKERS[at % len(TEACHER_MARKERS)]
    runs = [r for r in g.runs if "clean" in r.accuracy and W_ROBUST_OF in r.accuracy]
    if not runs:
        return
    ax.scatter(
        [r.accuracy["clean"] for r in runs], [r.accuracy[W_ROBUST_OF] for r in runs],
        s=14, color=color, alpha=0.45, zorder=3, marker=marker,
    )  # fmt: skip
    clean, robust = g.stat("clean"), g.stat(W_ROBUST_OF)
    seeds = f"{len(runs)} seed{'s' if len(runs) > 1 else ''}"
    teachers = f" · {g.teachers}" if len(settings) > 1 else ""
    ax.errorbar(
        [clean.mean], [robust.mean], xerr=[clean.std or 0], yerr=[robust.std or 0],
        fmt=marker, ms=7, color=color, capsize=3, zorder=4,
        label=f"{g.label}{teachers} ({seeds})" if legend else None,
    )  # fmt: skip


def plot_cost(found: Sequence[Group], dataset: str, path: Path) -> bool:
    """The student's training time (minutes, x) against W-Robust (y) on ``dataset``: each
    group's mean with one standard deviation (several seeds), one colour per setting, one
    marker per teacher setting, the device(s) in the title. False (nothing written) where no
    run of the dataset has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [g for g in found if g.dataset == dataset]
    have = [g for g in mine if g.stat("train_minutes") and g.stat(W_ROBUST)]
    if not have:
        return False
    labels = list(dict.fromkeys(g.label for g in have))
    settings = list(dict.fromkeys(g.teachers for g in have if g.teachers != NO_TEACHER))
    devices = sorted({r.cost.get("device") for g in have for r in g.runs} - {None})
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    for g in have:
        color = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(labels.index(g.label) % 20)
        at = settings.index(g.teachers) if g.teachers in settings else 0
        t, w = g.stat("train_minutes"), g.stat(W_ROBUST)
        teachers = f" · {g.teachers}" if len(settings) > 1 else ""
        ax.errorbar(
            [t.mean], [w.mean], xerr=[t.std or 0], yerr=[w.std or 0],
            fmt=TEACHER_MARKERS[at % len(TEACHER_MARKERS)], ms=7, color=color, capsize=3,
            label=f"{g.label}{teachers} ({w.n} seed{'s' if w.n > 1 else ''})",
        )  # fmt: skip
    ax.set_xlabel("the student's training time (minutes)")
    ax.set_ylabel(f"{W_ROBUST} (%): (clean + AutoAttack) / 2")
    ax.set_title(f"{dataset}: what each method costs; on {', '.join(devices) or '?'}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return True
