"""A graceful stop on SIGTERM (what SLURM sends before it kills a job) and SIGINT (Ctrl-C).

The first signal only sets a flag; the training loop saves its state at the next batch and stops
with ``Interrupted``. A second signal within ``REPEAT_SECONDS`` is the same request arriving by
another path and is ignored: SLURM signals every process of a job step and srun forwards the
signal too, and under torchrun a worker gets Ctrl-C's SIGINT and then torchrun's SIGTERM. A
signal after that gets the default behaviour (the process ends at once: Ctrl-C pressed again).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: seconds after the first stop signal during which another one is the same request
REPEAT_SECONDS = 2.0


class StopRequest:
    """Truthy once a stop signal arrived; ``signum`` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "-"

    def request(self, signum: int) -> None:
        self.signum = signum


@contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Within the block, SIGTERM / SIGINT set the yielded request instead of ending the process."""
    stop = StopRequest()
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    first: list[float] = []

    def handler(signum: int, frame: object) -> None:
        now = time.monotonic()
        if not first:
            first.append(now)
            stop.request(signum)
            return
        if now - first[0] < REPEAT_SECONDS:
            return
        for s in SIGNALS:  # a later signal ends the process at once
            signal.signal(s, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
