"""One lock per project folder for both engines: DVC and Snakemake never run stages at once.

Each engine has a lock of its own, but neither knows the other, and both delete a stage's
outputs before running it: a ``dvc repro`` started while Snakemake runs can delete what a
Snakemake job is writing. So:

- A Snakemake run takes the lock once, for its whole duration, in the Snakefile's ``onstart``
  hook (``hold_for_run``); it records a random token in the lock file and in the environment
  (``BMTARD_RUN_TOKEN``) that its jobs inherit.
- Every stage script takes the lock for its own duration (``enter_stage``), unless it belongs to
  the run that holds it (same token). So stages run by DVC, or by hand, take it one at a time,
  and a stage of one engine refuses to start while the other engine holds the lock.

The lock is ``fcntl.flock`` on ``.cache/project.lock`` in the working directory: the kernel
releases it when the holder dies, so a killed run never leaves a stale lock behind. Snakemake's
own lock files carry no process id, so a killed Snakemake leaves them and the next run would ask
for ``snakemake --unlock``; since only one run may use the folder, Snakemake locks found while
nobody holds ours are stale, and the Snakefile clears them (``clear_stale_snakemake_locks``).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import sys
from pathlib import Path
from typing import IO

from bmtard.core.errors import BmtardError

LOCK = Path(".cache") / "project.lock"
TOKEN_ENV = "BMTARD_RUN_TOKEN"


class ProjectBusy(BmtardError):
    """Another run holds the project lock."""


def hold_for_run(what: str, path: Path = LOCK) -> IO[str]:
    """Take the lock for the rest of this process (an engine's whole run); its jobs inherit the
    token through the environment. Returns the open lock file (keep it open)."""
    f = _acquire(path, what)
    token = secrets.token_hex(8)
    _describe(f, what, token)
    os.environ[TOKEN_ENV] = token
    return f


def enter_stage(what: str, path: Path = LOCK) -> IO[str] | None:
    """Take the lock for this stage process, or join the run that holds it (same token).
    Returns the open lock file (None when joining)."""
    token = os.environ.get(TOKEN_ENV)
    if token and _holder(path).get("token") == token and _is_held(path):
        return None
    f = _acquire(path, what)
    _describe(f, what, None)
    return f


def clear_stale_snakemake_locks(
    locks: Path = Path(".snakemake") / "locks", path: Path = LOCK
) -> list[Path]:
    """Remove Snakemake's lock files if no run holds the project (they are a killed run's)."""
    stale = sorted(locks.glob("*.lock")) if locks.is_dir() else []
    if not stale or _is_held(path):
        return []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def _acquire(path: Path, what: str) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 (kept open: the lock lives as long as the file is open)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        holder = _holder(path)
        who = f"{holder.get('what', 'another run')} (pid {holder.get('pid', '?')})"
        raise ProjectBusy(
            f"{what}: this project is in use by {who}; wait for it to end or stop it "
            f"(one engine at a time per folder: {path})"
        ) from None
    return f


def _describe(f: IO[str], what: str, token: str | None) -> None:
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "what": what, "token": token, "argv": sys.argv[:4]}))
    f.flush()


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _is_held(path: Path) -> bool:
    """True if some process holds the lock (probe with a non-blocking shared lock)."""
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except OSError:
        return False
