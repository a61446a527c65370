"""One GPU per running job on a machine with several: a lock per GPU ("slot").

Snakemake's ``--resources gpu=N`` and ``dvc queue start -j N`` only count jobs; neither says which
GPU a job should use, so every job would start on GPU 0. Each GPU stage therefore claims a slot
before CUDA starts: it takes an exclusive ``flock`` on ``<dir>/gpu-<id>.lock`` for the first
free GPU and sets ``CUDA_VISIBLE_DEVICES`` to that GPU alone. The kernel drops the lock when the
process ends in any way (a SIGKILL included), so a crashed job never leaves a slot taken. With
more jobs than GPUs, the extra ones wait for a slot: two jobs never share a GPU.

Nothing is claimed when the scheduler already chose (``CUDA_VISIBLE_DEVICES`` set, as SLURM does
for ``--gpus``), when ``run.device`` names a GPU (``cuda:N``) or the CPU, or when the machine has
no GPU. The GPUs are ``BMTARD_GPUS`` (comma-separated ids) if set, else those ``nvidia-smi -L``
lists; the lock folder is ``BMTARD_GPU_LOCKS`` if set, else ``<tmp>/bmtard-gpu-slots``.
Plain ``fcntl`` file locks, written here: no library offers this per-machine device lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bmtard.core.errors import ParamsError

log = logging.getLogger(__name__)

GPUS_VAR = "BMTARD_GPUS"
LOCKS_VAR = "BMTARD_GPU_LOCKS"
VISIBLE_VAR = "CUDA_VISIBLE_DEVICES"
POLL_SECONDS = 0.2


@dataclass
class Slot:
    """Claimed GPUs: their ids as ``CUDA_VISIBLE_DEVICES`` names them ("2", or "0,1" for a stage
    of two processes) and the open, locked files that hold the claim until ``release`` or the
    end of the process."""

    gpu: str
    handles: list[IO[bytes]]

    def release(self) -> None:
        for handle in self.handles:
            handle.close()  # closing the file drops its flock


def machine_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids of this machine: ``BMTARD_GPUS`` if set (e.g. "0,1,2,3"; empty: none), else
    the indices ``nvidia-smi -L`` lists (none without nvidia-smi). CUDA is not touched, so
    ``CUDA_VISIBLE_DEVICES`` still takes effect afterwards."""
    env = os.environ if env is None else env
    if GPUS_VAR in env:
        ids = [g.strip() for g in env[GPUS_VAR].split(",") if g.strip()]
        bad = [g for g in ids if not g.isdigit()]
        if bad:
            raise ParamsError(
                f"{GPUS_VAR} = {env[GPUS_VAR]!r}: comma-separated GPU indices (e.g. 0,1,2,3)"
            )
        return ids
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def lock_dir(env: dict[str, str] | None = None) -> Path:
    """Where the slot locks live: ``BMTARD_GPU_LOCKS``, else ``<tmp>/bmtard-gpu-slots``."""
    env = os.environ if env is None else env
    return Path(env.get(LOCKS_VAR) or Path(tempfile.gettempdir()) / "bmtard-gpu-slots")


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = open(path, "a+b")  # noqa: SIM115 (kept open: the lock lives as long as the file)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def claim(gpus: list[str], folder: Path, wait_seconds: float | None = None, count: int = 1) -> Slot:
    """The first ``count`` free GPUs of ``gpus``, locked; waits while fewer are free (for at most
    ``wait_seconds``, None: without limit). All or none are held at a time, so two jobs that
    each want two GPUs never hold one each and wait for each other. TimeoutError when the wait
    runs out; ParamsError when the machine has fewer than ``count``."""
    if count > len(gpus):
        raise ParamsError(
            f"run.processes = {count} wants {count} GPUs; this machine has {len(gpus)} "
            f"({','.join(gpus) or 'none'})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
    waited = False
    while True:
        held: list[tuple[str, IO[bytes]]] = []
        for gpu in gpus:
            handle = _try_lock(folder / f"gpu-{gpu}.lock")
            if handle is not None:
                held.append((gpu, handle))
                if len(held) == count:
                    break
        if len(held) == count:
            for _, handle in held:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{os.getpid()}\n".encode())  # who holds it, for a curious user
                handle.flush()
            return Slot(",".join(g for g, _ in held), [h for _, h in held])
        for _, handle in held:
            handle.close()
        if not waited:
            log.info(
                "every GPU (%s) is taken by another job: waiting for one"
                if count == 1
                else f"fewer than {count} of the GPUs (%s) are free: waiting",
                ",".join(gpus),
            )
            waited = True
        if deadline is not None and time.monotonic() >= deadline:
            wanted = "free GPU" if count == 1 else f"{count} free GPUs"
            raise TimeoutError(f"no {wanted} among {','.join(gpus)} in {folder}")
        time.sleep(POLL_SECONDS)


def claim_for_stage(device: str, env: dict[str, str] | None = None, count: int = 1) -> Slot | None:
    """Before CUDA starts in a GPU stage: claim ``count`` GPUs (one per training process) and
    show the process those alone (``CUDA_VISIBLE_DEVICES``), unless the scheduler or
    ``run.device`` already chose, or there is no GPU (see the module docstring). Returns the
    slot (held until the process ends)."""
    env = os.environ if env is None else env
    if env.get(VISIBLE_VAR) is not None or device not in ("auto", "cuda"):
        return None
    gpus = machine_gpus(env)
    if not gpus:
        return None
    slot = claim(gpus, lock_dir(env), count=count)
    env[VISIBLE_VAR] = slot.gpu
    log.info("GPU slot %s claimed (%s=%s)", slot.gpu, VISIBLE_VAR, slot.gpu)
    return slot
