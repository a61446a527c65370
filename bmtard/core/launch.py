"""A training stage with ``run.processes: N > 1`` runs itself as N torchrun workers.

The stage process stays the parent: it holds the project lock and the GPUs claimed for the stage
(``bmtard.core.project_lock``, ``bmtard.core.gpu_slots``) and starts the workers with torchrun's own
launcher (``torch.distributed.launcher``, what ``torchrun --standalone --nproc_per_node N -m
<the stage's module> <its arguments>`` runs), in this process, so that a stop or a failure ends
as one line. The workers get ``BMTARD_WORKER=1`` and take no lock of their own. The engines run
the same command as with one process: the parameter decides. A stage may also be started by
hand under torchrun; then rank 0 takes the lock (``holds_lock``).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from bmtard.core.errors import BmtardError, Interrupted

log = logging.getLogger(__name__)

#: set in the workers' environment: the parent holds the lock and the GPU slots
WORKER_VAR = "BMTARD_WORKER"


def is_worker(env: dict[str, str] | None = None) -> bool:
    """Whether this process is a worker started by ``torchrun_stage``."""
    env = os.environ if env is None else env
    return env.get(WORKER_VAR) == "1"


def holds_lock(env: dict[str, str] | None = None) -> bool:
    """Whether this process takes the project lock and claims GPUs: the stage process, or rank 0
    of a torchrun started by hand (its other ranks and our own workers do not)."""
    env = os.environ if env is None else env
    return not is_worker(env) and env.get("RANK", "0") == "0"


def speaks(env: dict[str, str] | None = None) -> bool:
    """Whether this process reports a stop: any but a torchrun worker of rank above 0 (rank 0
    says where the workers stopped, the parent that they did)."""
    env = os.environ if env is None else env
    return env.get("RANK", "0") == "0"


def torchrun_stage(
    stage: str, module: str, argv: Sequence[str], processes: int, threads: int
) -> None:
    """Run ``python -m module argv`` as ``processes`` workers on this node, of ``threads`` CPU
    threads each, and wait for them. A stop signal goes on to the workers (they agree on a batch
    and rank 0 saves the state) and is raised as ``Interrupted``; a failed worker is one
    ``BmtardError`` line (the worker printed its own error above it)."""
    os.environ.update({"OMP_NUM_THREADS": str(threads), WORKER_VAR: "1"})  # for the workers
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",  # torchrun --standalone: a rendezvous on a free local port
        rdzv_endpoint="localhost:0",
        max_restarts=0,  # a failed worker fails the stage; its rerun resumes from the state
    )
    log.info("%s: %d processes under torchrun, %d CPU threads each", stage, processes, threads)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    try:
        elastic_launch(config, sys.executable)("-m", module, *argv)
    except SignalException as e:
        raise Interrupted(
            f"{stage}: stopped by {e.sigval.name}; the workers stopped at the same batch and "
            "rank 0 saved the training state (in run.state_dir); run the same command again "
            "to continue",
            int(e.sigval),
        ) from None
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        raise BmtardError(
            f"{stage}: the {processes} torchrun workers failed (exit code "
            f"{', '.join(map(str, codes))}); the first worker's error is above"
        ) from None
