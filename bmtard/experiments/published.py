"""``python -m bmtard teachers``: the published teachers a run can learn from by name
(``clean_teacher.published``, ``robust_teacher.published``; ``bmtard/config/teacher_table.py``),
where the teacher stage expects each file, which are there, and where to download the others.
``--get AutoAttack_ResNet18`` puts the one teacher this machine already has (the example model of
the reference AutoAttack, inside the pyautoattack wheel) in its place."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path

from bmtard.config import dataset_table, teacher_table
from bmtard.config.teacher_table import PublishedTeacher
from bmtard.core.errors import BmtardError
from bmtard.core.io import sha256_file, write_atomic
from bmtard.core.paths import from_project
from bmtard.runtime.cli import run_main

#: the teachers a dependency of this project ships: name -> (package, file inside it)
SHIPPED = {("cifar10", "AutoAttack_ResNet18"): ("pyautoattack", "examples/model_test.pt")}


def _accuracy(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(dataset: str | None = None, root: Path | None = None) -> str:
    """The published teachers (of ``dataset``, or all) as Markdown: name, what it is, its
    architecture, published clean and AutoAttack accuracy, its file and whether it is there."""
    lines = [
        "| dataset | published | teacher | arch | clean | AA | file | here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in teacher_table.TEACHERS:
        if dataset is not None and t.dataset != dataset:
            continue
        where = teacher_table.default_path(t.dataset, t.name)
        found = (root / where if root else from_project(where)).is_file()
        lines.append(
            f"| {t.dataset} | {t.name} | {t.label} ({t.kind}) | {t.arch} | {_accuracy(t.clean)} "
            f"| {_accuracy(t.autoattack)} | {where} | {'yes' if found else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def shipped_file(t: PublishedTeacher) -> Path | None:
    """The copy of ``t`` an installed dependency ships, if any."""
    if (t.dataset, t.name) not in SHIPPED:
        return None
    package, inside = SHIPPED[(t.dataset, t.name)]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / inside
    return path if path.is_file() else None


def get(name: str, dataset: str) -> Path:
    """Put the shipped copy of teacher ``name`` at its documented place (checked against the
    table's SHA-256); one line saying where to download it for a teacher no package ships."""
    t = teacher_table.teacher(name, dataset, "--get")
    where = from_project(teacher_table.default_path(dataset, name))
    src = shipped_file(t)
    if src is None:
        raise BmtardError(
            f"--get {name}: no copy of it on this machine; download it from {t.source} and put "
            f"it at {teacher_table.default_path(dataset, name)}"
        )
    if t.sha256 is not None and sha256_file(src) != t.sha256:
        raise BmtardError(f"--get {name}: {src} is not the published file (its SHA-256 differs)")
    write_atomic(where, lambda tmp: shutil.copyfile(src, tmp))
    return where


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bmtard teachers", description=__doc__)
    p.add_argument("--dataset", choices=dataset_table.NAMES, help="only this dataset's teachers")
    p.add_argument("--get", metavar="NAME", help="copy a teacher this machine has into place")
    args = p.parse_args(argv)

    def body() -> None:
        if args.get:
            print(f"wrote {get(args.get, args.dataset or 'cifar10')}")
            return
        print(table(args.dataset), end="")
        print(
            "\nA run learns from one by name: clean_teacher.published or "
            "robust_teacher.published in params.yaml; its file is expected at the path above "
            "(or at clean_teacher.checkpoint / robust_teacher.checkpoint). Sources and the "
            "papers that use each: docs/teachers.md."
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
