"""A teacher imported instead of trained: which file (``checkpoint``, or a published teacher's
file at its documented place), and how far its measured accuracy may be from the published one.

A published teacher's numbers are on the full test set; the stage measures the first
``monitor.n_images`` test images, so the allowed gap grows as the sample shrinks: three standard
errors of the measured share plus one point (about 2 points on 10,000 images, 5 on 500). PGD-20
is a weaker attack than AutoAttack, so a robust teacher's PGD-20 accuracy is expected above its
published AutoAttack accuracy, by a few points: below it by more than the allowed gap, or above it
by more than ``PGD_ABOVE_AA`` points plus the gap, is far (a wrong normalization or input range
shows up in the clean accuracy, a masked gradient in the PGD-20 one).
"""

from __future__ import annotations

import math
from pathlib import Path

from bmtard.config import teacher_table
from bmtard.config.schema import CleanTeacherConfig, RobustTeacherConfig
from bmtard.config.teacher_table import PublishedTeacher
from bmtard.core.errors import CheckpointError
from bmtard.core.paths import from_project

TeacherConfig = CleanTeacherConfig | RobustTeacherConfig

#: how far above the published AutoAttack accuracy a PGD-20 accuracy may be (% points) before
#: the stage warns: PGD-20 overestimates robustness by 2 to 6 points on the RobustBench models
#: whose both numbers are published (e.g. TRADES WRN-34-10: 56.6 PGD-20, 53.1 AutoAttack)
PGD_ABOVE_AA = 10.0


def published_of(cfg: TeacherConfig, dataset: str, section: str) -> PublishedTeacher | None:
    """The table's entry of ``cfg.published`` on ``dataset`` (None when not set)."""
    if cfg.published is None:
        return None
    return teacher_table.teacher(cfg.published, dataset, f"{section}.published")


def teacher_file(section: str, cfg: TeacherConfig, dataset: str) -> tuple[Path, str]:
    """The file to import and how to name it in records: ``cfg.checkpoint`` as written, or the
    published teacher's documented path; both from the project folder (also inside a DVC
    queue's copy, which holds only what git tracks). A missing published file is one line that
    says where to download it and where to put it."""
    if cfg.checkpoint is not None:
        path = from_project(cfg.checkpoint)
        if not path.is_file():
            raise CheckpointError(f"{cfg.checkpoint}: checkpoint not found ({section}.checkpoint)")
        return path, cfg.checkpoint
    entry = published_of(cfg, dataset, section)
    assert entry is not None, "import without checkpoint or published"
    where = teacher_table.default_path(dataset, entry.name)
    path = from_project(where)
    if not path.is_file():
        raise CheckpointError(
            f"{section}.published = {entry.name}: no file at {where}; download it from "
            f"{entry.source} and put it there (or set {section}.checkpoint to where it is)"
        )
    return path, where


def allowed_gap(accuracy: float, n: int) -> float:
    """How far (% points) a share measured on ``n`` images may be from the full test set's:
    three standard errors of ``accuracy`` (%) on ``n`` images, plus one point."""
    p = min(max(accuracy / 100.0, 0.0), 1.0)
    return 3.0 * 100.0 * math.sqrt(p * (1.0 - p) / max(n, 1)) + 1.0


def far_from_published(entry: PublishedTeacher, metrics: dict[str, float], n: int) -> list[str]:
    """What of ``metrics`` (``clean_acc``, and ``pgd_acc`` for a robust check, %) measured on
    ``n`` test images is far from ``entry``'s published accuracies, one phrase each."""
    out = []
    clean = metrics.get("clean_acc")
    if entry.clean is not None and clean is not None:
        gap = allowed_gap(entry.clean, n)
        if abs(clean - entry.clean) > gap:
            out.append(
                f"clean {clean:.2f} % against the published {entry.clean:.2f} % (more than "
                f"{gap:.1f} points apart)"
            )
    pgd = metrics.get("pgd_acc")
    if entry.autoattack is not None and pgd is not None:
        gap = allowed_gap(entry.autoattack, n)
        if pgd < entry.autoattack - gap:
            out.append(
                f"PGD-20 {pgd:.2f} % below the published AutoAttack {entry.autoattack:.2f} % "
                f"(by more than {gap:.1f} points; PGD-20 is the weaker attack)"
            )
        elif pgd > entry.autoattack + PGD_ABOVE_AA + gap:
            out.append(
                f"PGD-20 {pgd:.2f} % above the published AutoAttack {entry.autoattack:.2f} % "
                f"by more than {PGD_ABOVE_AA + gap:.1f} points"
            )
    return out
