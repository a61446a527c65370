"""Device choice, seeding and thread settings for one process."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from bmtard.config.schema import RunConfig
from bmtard.core import distributed
from bmtard.core.errors import ParamsError


def threads_given(run: RunConfig) -> int:
    """The CPU threads this process may use: ``run.num_threads`` when set, else what the engine or
    the scheduler granted (``SLURM_CPUS_PER_TASK``; ``OMP_NUM_THREADS``, which Snakemake sets to a
    rule's ``threads``), else the CPUs this process may run on. A torchrun worker
    (``LOCAL_WORLD_SIZE`` set) takes ``OMP_NUM_THREADS``: its share, which ``bmtard.core.launch``
    sets.
    """
    if run.num_threads:
        return run.num_threads
    worker = "LOCAL_WORLD_SIZE" in os.environ
    for var in ("OMP_NUM_THREADS",) if worker else ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda'/'cuda:N' must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamsError(f"run.device = {name!r}: no CUDA device here; use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ParamsError(f"run.device = {name!r}: only {n} CUDA device(s) here")
    return dev


def setup(run: RunConfig, *, parallel: bool = False) -> torch.device:
    """Seed every RNG, set determinism, and use the CPU threads this process was given
    (``threads_given``: never every core of a shared node); return the
    device.

    ``parallel``: a training stage, which runs as ``run.processes`` torchrun workers when that
    is above 1: this worker joins their process group (``bmtard.core.distributed.start``) and its
    device is the GPU of its local rank."""
    torch.set_num_threads(threads_given(run))
    device = resolve_device(run.device)
    if parallel and (run.processes > 1 or distributed.launched_size() > 1):
        device = distributed.start(run.processes, device)
    seed = distributed.rank_seed(run.seed) % 2**32  # numpy's limit
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = run.deterministic
    if run.deterministic:
        torch.backends.cudnn.benchmark = False
    return device
