"""Fault injection for the crash tests: kill this process at a named point.

The tests must show that a run killed at any moment resumes to the same result; killing from
outside lands at random places, so the code names its dangerous points and a test picks one by
setting ``BMTARD_FAULT=<stage>/<point>:<n>`` (kill at the n-th time that point is reached in that
stage; ``*`` matches any stage). The kill is SIGKILL to the whole process group by default (the
engine dies with the stage, as when a node goes down), or to this process alone with
``BMTARD_FAULT_SCOPE=process``. ``BMTARD_FAULT_ACTION=pause`` waits for a signal there instead
(a job whose time runs out in the middle of a batch: the scheduler's SIGTERM then stops it).
``BMTARD_FAULT_ONCE=<file>`` fires only while that file does not exist, and creates it (for a
retried job, which runs with the same environment). Without ``BMTARD_FAULT``, ``hit`` costs one
dict lookup.

Points: ``batch`` (after a training step), ``state_write`` (half-way through writing the
training state file), ``eval_batch`` (after an evaluation batch is saved).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

ENV = "BMTARD_FAULT"
SCOPE_ENV = "BMTARD_FAULT_SCOPE"
ACTION_ENV = "BMTARD_FAULT_ACTION"
ONCE_ENV = "BMTARD_FAULT_ONCE"

_counts: dict[str, int] = {}
_stage = {"name": "*"}


def set_stage(name: str) -> None:
    """Name the stage this process runs (the ``<stage>`` of ``BMTARD_FAULT``)."""
    _stage["name"] = name


def hit(point: str, before: Callable[[], None] | None = None) -> None:
    """Count one arrival at ``point``; kill the process if ``BMTARD_FAULT`` asks for this one
    (calling ``before()`` first, e.g. to leave a half-written file)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, _, n = spec.rpartition(":")
    stage, _, wanted = where.partition("/")
    if wanted != point or stage not in ("*", _stage["name"]):
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n):
        once = os.environ.get(ONCE_ENV)
        if once:
            if os.path.exists(once):
                return
            open(once, "x").close()
        if before is not None:
            before()
        if os.environ.get(ACTION_ENV) == "pause":
            signal.pause()  # until a signal's handler ran (a graceful stop sets its flag)
            return
        if os.environ.get(SCOPE_ENV) == "process":
            os.kill(os.getpid(), signal.SIGKILL)
        os.killpg(os.getpgrp(), signal.SIGKILL)
