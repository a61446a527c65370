"""AutoAttack through the reference implementation (PyPI ``pyautoattack``, Croce & Hein's code).

We only adapt the call: the attack itself is never re-implemented here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from bmtard.errors import BmtardError

VERSIONS = ("standard", "plus", "rand")


def autoattack_version() -> str:
    """The installed pyautoattack version (raises a clear error if it is missing)."""
    return _module().__version__


def _module():
    try:
        import pyautoattack
    except ImportError:
        raise BmtardError(
            "pyautoattack is not installed: `pip install pyautoattack==0.2.0`, "
            "or remove autoattack from evaluate.attacks"
        ) from None
    return pyautoattack


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int | None = None,
    state_path: str | Path | None = None,
) -> Tensor:
    """AutoAttack (L-inf) on x (N, C, H, W) in [0, 1] with labels y (N,); eps in pixel units.

    'standard' runs APGD-CE, APGD-T, FAB-T and Square (5000 queries). ``state_path`` lets the
    reference code resume an interrupted run. Returns x_adv (robust points keep x).
    """
    aa = _module().AutoAttack(
        model, norm="Linf", eps=eps, version=version, device=x.device, seed=seed
    )
    aa.logger = logging.getLogger("auto-attack")
    x_adv, _ = aa.run_standard_evaluation(
        x.contiguous(),  # the reference code uses .view() on gradients shaped like x
        y,
        batch_size=batch_size or len(y),
        state_path=Path(state_path) if state_path is not None else None,
    )
    return x_adv.detach()
