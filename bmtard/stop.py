"""A graceful stop on SIGTERM (what SLURM sends before it kills a job) and SIGINT (Ctrl-C).

The first signal only sets a flag; the training loop saves its state at the next batch and stops
with ``Interrupted``. A second signal gets the default behaviour (the process ends at once).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    def handler(signum: int, frame: object) -> None:
        stop.request(signum)
        for s in SIGNALS:  # a second signal ends the process at once
            signal.signal(s, signal.SIG_DFL)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
