"""The two balancing rules of B-MTARD (spec sections 4 and 5), as plain functions over floats.

``Balance`` holds the state (temperatures, weights, first-iteration reference losses, current
rates) in one place so that a checkpoint can save and restore it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bmtard.config import BalanceConfig


def _sign(v: float) -> float:
    return float(v > 0) - float(v < 0)


def entropy_step(
    tau_adv: float, tau_nat: float, e_adv: float, e_nat: float, lr: float, lo: float, hi: float
) -> tuple[float, float]:
    """Entropy-Based Balance: one sign step of both temperatures, clipped to [lo, hi].

    e_adv, e_nat are the official negative-entropy terms (mean of p log p, = -H/C). The teacher
    with the higher entropy gets its temperature lowered by lr, the other raised; equal entropies
    leave both unchanged. A zero term (a one-hot teacher) would divide by zero in the official code;
    there we make no step.
    """
    if e_adv == 0 or e_nat == 0:
        return tau_adv, tau_nat
    tau_adv = tau_adv - lr * _sign(e_adv / e_nat - 1)
    tau_nat = tau_nat - lr * _sign(e_nat / e_adv - 1)
    return min(max(tau_adv, lo), hi), min(max(tau_nat, lo), hi)


def weight_step(
    w_adv: float, w_nat: float, l_adv: float, l_nat: float, lr: float
) -> tuple[float, float]:
    """Normalization Loss Balance: EMA of the weights toward the normalised-loss shares.

    l_adv, l_nat are the current losses divided by their first-iteration values. The target of
    w_i is r_i / (r_adv + r_nat), r_i = l_i / mean(l): the knowledge learnt more slowly gets more
    weight. Then clip at 0 and renormalise to sum 1 (no-ops in exact arithmetic, kept as in the
    official code).
    """
    mean = (l_adv + l_nat) / 2
    r_adv, r_nat = l_adv / mean, l_nat / mean
    target_adv, target_nat = r_adv / (r_adv + r_nat), r_nat / (r_adv + r_nat)
    w_nat = w_nat - lr * (w_nat - target_nat)
    w_adv = w_adv - lr * (w_adv - target_adv)
    w_adv, w_nat = max(w_adv, 0.0), max(w_nat, 0.0)
    total = w_adv + w_nat
    return w_adv / total, w_nat / total


@dataclass
class Balance:
    """Temperatures, weights and reference losses of one B-MTARD run."""

    tau_adv: float
    tau_nat: float
    w_adv: float
    w_nat: float
    tau_lr: float
    weight_lr: float
    tau_min: float
    tau_max: float
    l0_adv: float | None = None
    l0_nat: float | None = None

    @classmethod
    def from_config(cls, cfg: BalanceConfig) -> Balance:
        return cls(
            tau_adv=cfg.tau_adv_init,
            tau_nat=cfg.tau_nat_init,
            w_adv=cfg.w_adv_init,
            w_nat=1.0 - cfg.w_adv_init,
            tau_lr=cfg.tau_lr,
            weight_lr=cfg.weight_lr,
            tau_min=cfg.tau_min,
            tau_max=cfg.tau_max,
        )

    def update_temperatures(self, e_adv: float, e_nat: float, rate_factor: float = 1.0) -> None:
        """Move the temperatures; they take effect from the next batch."""
        self.tau_adv, self.tau_nat = entropy_step(
            self.tau_adv,
            self.tau_nat,
            e_adv,
            e_nat,
            self.tau_lr * rate_factor,
            self.tau_min,
            self.tau_max,
        )

    def update_weights(self, loss_adv: float, loss_nat: float, rate_factor: float = 1.0) -> None:
        """Move the weights from this batch's losses; they apply to this batch already.

        The first call stores the reference losses L^0 (never re-estimated).
        """
        if self.l0_adv is None or self.l0_nat is None:
            self.l0_adv, self.l0_nat = loss_adv, loss_nat
        if not (math.isfinite(loss_adv) and math.isfinite(loss_nat)):
            raise FloatingPointError(
                f"non-finite distillation loss: adv {loss_adv}, nat {loss_nat}"
            )
        self.w_adv, self.w_nat = weight_step(
            self.w_adv,
            self.w_nat,
            loss_adv / self.l0_adv,
            loss_nat / self.l0_nat,
            self.weight_lr * rate_factor,
        )

    def state_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
