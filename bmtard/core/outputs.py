"""Protecting a stage's outputs: enough free disk before a long run, and the last good outputs
kept where no engine deletes them."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from bmtard.core.errors import BmtardError

log = logging.getLogger(__name__)

#: a saved training state holds about this many copies of the model (weights, momentum, the
#: selected epoch's weights) and exists twice while it is replaced
STATE_COPIES = 3 * 2
#: smaller outputs are copied, not hard-linked (only large files, checkpoints, are always
#: replaced whole by our atomic writes, never changed in place)
LINK_FROM_BYTES = 1 << 20
#: the model output plus its temporary and its hard-linked last good copy's old version
OUTPUT_COPIES = 2


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(
    section: str, model_bytes: int, out_model: Path, state_dir: Path | None
) -> None:
    """Refuse to start a long stage that could not save its state or its model."""
    needs = [(Path(out_model).parent, OUTPUT_COPIES * model_bytes, "its model")]
    if state_dir is not None:
        needs.append((Path(state_dir), STATE_COPIES * model_bytes, "its training state"))
    for where, need, what in needs:
        free = free_bytes(where)
        if free < need:
            raise BmtardError(
                f"{section}: {free / 2**20:.0f} MB free where {what} goes ({where}), about "
                f"{need / 2**20:.0f} MB needed; free disk space (or set run.state_dir elsewhere)"
            )


def keep_last_good(paths: list[Path], folder: Path) -> None:
    """Hard-link each finished output (file or folder, relative to the working directory)
    under ``folder``, replacing the previous copy. Costs no space while the output exists;
    keeps the content when an engine deletes the output for a rerun that then fails. Files under
    1 MiB (curves, which dvclive appends to in place) are copied instead, as are files where a
    link is not possible. Paths outside the working directory are skipped."""
    for path in paths:
        path = Path(path)
        target = last_good_copy(path, folder)
        if target is None or not path.exists():
            continue
        _copy(path, target)


def last_good_copy(path: Path, folder: Path) -> Path | None:
    """Where ``keep_last_good`` keeps ``path`` (None for a path outside the working directory)."""
    try:
        return folder / Path(path).absolute().relative_to(Path.cwd())
    except ValueError:
        return None


def restore(paths: list[Path], folder: Path) -> None:
    """Put the last good copies of ``paths`` back in place (replacing what is there), the
    reverse of ``keep_last_good``; each is first assembled beside its place, then renamed."""
    for path in paths:
        path = Path(path)
        copy = last_good_copy(path, folder)
        if copy is None or not copy.exists():
            continue
        tmp = path.with_name(f".{path.name}.restore")
        _copy(copy, tmp)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)


def _copy(src: Path, dst: Path) -> None:
    """Replace ``dst`` (file or folder) with a copy of ``src``, large files hard-linked."""
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    if os.path.getsize(src) >= LINK_FROM_BYTES:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
