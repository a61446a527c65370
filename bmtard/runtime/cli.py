"""Shared start-up of the stage scripts and commands: arguments, logging, one-line errors, and
the guard every pipeline stage runs under (project lock, graceful stop, fault-injection name)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from bmtard.config.params import PARAMS_ENV, load_params
from bmtard.config.schema import Params
from bmtard.core import distributed, faults, gpu_slots, launch, project_lock
from bmtard.core.errors import BmtardError, Interrupted
from bmtard.core.stop import StopRequest, graceful_stop
from bmtard.runtime.device import threads_given


def run_main(body: Callable[[], None]) -> int:
    """Run ``body`` with logging set up; a BmtardError becomes one line on stderr, exit code 2;
    a requested stop (SIGTERM, SIGINT) one line and 128 + the signal number."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        body()
    except Interrupted as e:
        if launch.speaks():
            print(f"stopped: {e}", file=sys.stderr)
        return 128 + e.signum
    except BmtardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_stage(
    doc: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[Params, argparse.Namespace, StopRequest], None],
    argv: Sequence[str] | None = None,
    *,
    name: str | Callable[[argparse.Namespace], str] = "stage",
    graceful: bool = True,
    gpu: bool = False,
    module: str | None = None,
) -> None:
    """Parse a stage's arguments, validate the whole params file before any work, then run
    ``body(params, args, stop)`` holding the project lock (``bmtard.core.project_lock``).

    ``name`` (or a function of the arguments giving it) names the stage in the lock and for
    ``bmtard.core.faults``. With ``graceful``, SIGTERM / SIGINT set ``stop`` (the training loop then
    saves its state and exits); otherwise they end the process as usual (``stop`` stays unset).
    A ``gpu`` stage first claims a GPU of its own on a machine with several
    (``bmtard.core.gpu_slots``), held until the process ends. A training stage names its ``module``
    (``python -m`` form): with ``run.processes`` above 1 this process then claims that many
    GPUs and runs the module as that many torchrun workers (``bmtard.core.launch``), which take no
    lock and claim no GPU of their own (nor do the ranks above 0 of a torchrun started by hand).
    """
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument(
        "--params",
        default=os.environ.get(PARAMS_ENV) or "params.yaml",
        help=f"parameter file (default: ${PARAMS_ENV} where set, else params.yaml)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)

    def guarded() -> None:
        params = load_params(args.params)
        stage = name(args) if callable(name) else name
        faults.set_stage(stage)
        processes = params.run.processes if module is not None else 1
        owner = launch.holds_lock()
        lock = project_lock.enter_stage(f"stage {stage}") if owner else None
        slot = None  # referenced until the end: a collected Slot would close its lock file
        try:
            if gpu and owner and distributed.launched_size() == 1:  # torchrun users choose GPUs
                slot = gpu_slots.claim_for_stage(params.run.device, count=processes)
            if processes > 1 and distributed.launched_size() == 1:  # not yet under torchrun
                assert module is not None
                threads = max(1, threads_given(params.run) // processes)
                passed = list(sys.argv[1:] if argv is None else argv)
                launch.torchrun_stage(stage, module, passed, processes, threads)
            elif graceful:
                with graceful_stop() as stop:
                    body(params, args, stop)
            else:
                body(params, args, StopRequest())
        finally:
            distributed.stop()
            if slot is not None:
                slot.release()
            if lock is not None:
                lock.close()

    sys.exit(run_main(guarded))
