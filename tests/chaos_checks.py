"""What the chaos tests check after the grid completed: the grid's settings, its files compared
with an uninterrupted run's, temporaries left behind, and teachers trained again."""

from __future__ import annotations

import re
from pathlib import Path

from bmtard.models.checkpoint import saved_record

from pipeline_helpers import timeless

# The tiny preset with several batches per epoch, a saved state after every batch, two epochs
# (CIARD's teacher fine-tuned in the second) and a quick evaluation in several batches: each
# stage has many moments to be killed at, and each finishes in seconds on a CPU.
CHAOS = {
    "run.save_every_minutes": 0.0,
    "clean_teacher.optim.epochs": 2,
    "clean_teacher.optim.batch_size": 32,
    "robust_teacher.optim.epochs": 2,
    "robust_teacher.optim.batch_size": 32,
    "distill.optim.epochs": 2,
    "distill.optim.batch_size": 32,
    "distill.ciard.teacher_from": 1,
    "evaluate.attacks": ["fgsm", "pgd_sat"],
    "evaluate.batch_size": 5,
    "evaluate.sanity.enabled": False,
}
#: the grid: a method without teachers, one with the robust teacher, one with both, and one that
#: trains a network of its own (CIARD's robust teacher, fine-tuned), each at two seeds
METHODS = ["sat", "rslad", "bmtard", "ciard"]
SEEDS = [0, 1]
GRID = {"distill.method": METHODS, "run.seed": SEEDS}
NAMES = {
    f"method-{m}_seed-{s}": {"distill.method": m, "run.seed": s} for m in METHODS for s in SEEDS
}
ROLES = ("clean", "robust")


def files(repo: Path, folders: list[str]) -> dict[str, bytes]:
    """Every file under ``folders`` of ``repo``, by relative path, as ``timeless`` gives it, but
    TensorBoard's event files (their names and records hold wall times), which ``scalars`` reads
    instead."""
    out = {}
    for folder in folders:
        for p in sorted((repo / folder).rglob("*")):
            if p.is_file() and not p.name.startswith("events.out.tfevents."):
                name = str(p.relative_to(repo))
                data = timeless(name, p.read_bytes())
                if data is not None:
                    out[name] = data
    return out


def scalars(repo: Path, folders: list[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """The TensorBoard curves under ``folders``: run folder -> tag -> (step, value)s."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for folder in folders:
        for run in sorted({p.parent for p in (repo / folder).rglob("events.out.tfevents.*")}):
            acc = EventAccumulator(str(run))
            acc.Reload()
            out[str(run.relative_to(repo))] = {
                tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
            }
    return out


def leftovers(repo: Path) -> list[str]:
    """Temporaries and saved state a finished grid must not leave: our atomic writes' and
    restores' temporaries (``.<name>.<pid>.tmp``, ``.<name>.restore``), the write checks of the
    folder parameters, the grid's params.yaml.tmp, training and evaluation states, and
    Snakemake's markers of incomplete jobs."""
    found = []
    for p in repo.rglob("*"):
        rel = p.relative_to(repo)
        if rel.parts[0] == ".git" or rel.parts[:2] == (".dvc", "cache"):
            continue
        name = p.name
        if p.is_file() and (
            name.endswith((".tmp", ".restore")) or name.startswith(".write-check.")
        ):
            found.append(str(rel))
    for pattern in (".cache/train/*/*.pt", ".cache/evaluate/*.json", ".snakemake/incomplete/**/*"):
        found += [str(p.relative_to(repo)) for p in repo.glob(pattern) if p.is_file()]
    found += [str(p.relative_to(repo)) for p in repo.glob(".dvc/tmp/exps/tmp*")]  # DVC's copies
    return sorted(set(found))


def epochs_trained(log: str, role: str) -> int:
    """How many epochs of the ``role`` teacher a stage log shows trained."""
    return len(re.findall(rf"INFO bmtard\.training\.loop: {role}_teacher epoch \d+/\d+:", log))


def teacher_finished(repo: Path, role: str) -> bool:
    """Whether the ``role`` teacher's training finished: its model file, or the last good copy
    of it, holds a trained model."""
    rel = Path("models") / f"{role}_teacher.pt"
    return any(
        saved_record(p) is not None for p in (repo / rel, repo / ".cache/train/last-good" / rel)
    )
