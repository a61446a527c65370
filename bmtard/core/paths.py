"""Folders named by parameters: relative paths taken from the project folder (also inside a DVC
queue's temporary copy), and a check before any work that a folder can be created and written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bmtard.core.errors import ParamsError

#: where DVC runs a queued or temporary experiment: a copy of the project at <project>/DVC_TEMP/<id>
DVC_TEMP = (".dvc", "tmp", "exps")


def from_project(path: str | Path, cwd: Path | None = None) -> Path:
    """A relative path as the user wrote it, from the project folder, also inside a DVC queue's
    temporary copy. The copy holds only what git tracks and is deleted when its experiment ends
    (a failed one too), so ``../elsewhere/...`` would point beside the copy instead of beside the
    project, and a training state kept in the copy would be lost with it."""
    path = Path(path)
    if path.is_absolute():
        return path
    parts = (cwd or Path.cwd()).resolve().parts
    for i in range(len(parts) - len(DVC_TEMP)):
        if parts[i : i + len(DVC_TEMP)] == DVC_TEMP:
            return Path(*parts[:i]) / path
    return path


def writable_folder(value: str | Path | None, key: str, instead: str) -> Path | None:
    """The folder parameter ``key`` (``value``, from the project, ``from_project``), created and
    shown to be writable by creating and removing a file in it; None for None. Raise a ParamsError
    naming ``key`` and, in ``instead``, what to do instead (e.g. "or null to save no state")."""
    if value is None:
        return None
    folder = from_project(value)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ParamsError(
            f"{key} = {str(value)!r}: cannot be created or written ({e.strerror or e}); "
            f"choose another folder{instead}"
        ) from None
    return folder
