"""Which code produced a result: hashes of the source and, where there is one, the git commit
and whether the code differs from it.

``code_version`` is recorded in every checkpoint and model card: the hash of every ``.py`` file
of ``bmtard/`` and ``stages/`` (path and bytes, so it changes with any edit, committed or not),
the git commit, and whether the code folders differ from it ("dirty" looks at the code only: a
DVC run modifies ``dvc.lock`` and ``params.yaml``, which are not code).

``loaded_code_sha256`` hashes only the code files this process has imported, i.e. the code a
stage runs (the same files dvc.yaml lists as the stage's deps): it keys the saved training and
evaluation state, so that a state made by other code is never reused, while an edit to another
stage's code does not throw away a day of training.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository: bmtard/core/provenance.py
CODE_FOLDERS = ("bmtard", "stages")


@functools.cache
def code_version() -> dict[str, Any]:
    """{"package_sha256": hex, "git_commit": hex or None, "git_dirty": bool or None}."""
    return {"package_sha256": package_sha256(), **_git()}


def package_sha256(root: Path = ROOT) -> str:
    """SHA-256 over (relative path, bytes) of every .py file of the code folders."""
    return _files_sha256(
        [p for folder in CODE_FOLDERS for p in (root / folder).rglob("*.py")], root
    )


def loaded_code_sha256() -> str:
    """SHA-256 over (relative path, bytes) of the code-folder files imported so far."""
    files = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name.split(".")[0] in CODE_FOLDERS:
            files.append(Path(path).resolve())
    return _files_sha256(files, ROOT)


def _files_sha256(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(set(files)):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _git() -> dict[str, Any]:
    none = {"git_commit": None, "git_dirty": None}
    try:
        commit = _run_git("rev-parse", "HEAD")
        status = _run_git("status", "--porcelain", "--", *CODE_FOLDERS)
    except (OSError, subprocess.SubprocessError):
        return none  # no git, or not a repository (e.g. a copy of the tree on another machine)
    return {"git_commit": commit, "git_dirty": bool(status)}


def _run_git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()
