"""AutoAttack and its Square attack through the reference implementation (PyPI ``pyautoattack``,
Croce & Hein's code). We only adapt the call: no attack is re-implemented here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from bmtard.core.errors import BmtardError

LOGGER = "auto-attack"


def _module():
    try:
        import pyautoattack
    except ImportError:
        raise BmtardError(
            "pyautoattack is not installed: `pip install pyautoattack==0.2.0`, "
            "or remove autoattack from evaluate.attacks and disable evaluate.sanity"
        ) from None
    return pyautoattack


def autoattack_version() -> str:
    """The installed pyautoattack version (a clear error if it is missing)."""
    return _module().__version__


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    version: str = "standard",
    attacks: list[str] | None = None,
    square_queries: int | None = None,
    seed: int = 0,
) -> Tensor:
    """AutoAttack (L-inf) on x (N, C, H, W) in [0, 1] with labels y (N,); eps in pixel units.

    'standard' runs APGD-CE, APGD-T, FAB-T and Square (5000 queries); ``attacks`` with
    version='custom' runs a subset (e.g. ['square']), ``square_queries`` sets Square's budget.
    Returns x_adv (points that stay robust keep x). The reference code's checks (randomised or
    dynamic model, probabilities instead of logits, zero gradients, Square beating the white-box
    attacks) are logged as warnings on the 'auto-attack' logger: see ``flags``.
    """
    aa = _module().AutoAttack(
        model, norm="Linf", eps=eps, version=version, attacks=attacks, device=x.device, seed=seed
    )
    if square_queries is not None:
        aa.square.n_queries = square_queries
    # the reference code uses .view() on gradients shaped like x
    x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y, batch_size=len(y))
    return x_adv.detach()


@contextmanager
def flags() -> Iterator[list[str]]:
    """Collect the warnings the reference AutoAttack logs while the block runs (one per message)."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage().split(" See ")[0]
            if msg not in seen:
                seen.append(msg)

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


@dataclass
class AutoAttackRun:
    """AutoAttack as one attack of the protocol, (model, x, y) -> x_adv like the others: the
    reference code with these settings (``autoattack``; eps in pixel units), which keeps the
    warnings it logged while it ran (``warnings``: one per message, in the order first seen,
    across every batch)."""

    eps: float
    version: str = "standard"
    attacks: list[str] | None = None
    square_queries: int | None = None
    seed: int = 0
    warnings: list[str] = field(default_factory=list)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with flags() as seen:
            x_adv = autoattack(
                model, x, y, eps=self.eps, version=self.version, attacks=self.attacks,
                square_queries=self.square_queries, seed=self.seed,
            )  # fmt: skip
        self.warnings.extend(w for w in seen if w not in self.warnings)
        return x_adv
