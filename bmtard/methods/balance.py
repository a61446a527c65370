"""The two balancing rules of B-MTARD (spec sections 4 and 5), on device tensors.

The state (temperatures, weights, first-iteration reference losses) lives in float64 tensors on
the training device and is updated by tensor operations, so a training step never waits for the
device (the official code reads the losses and entropies back with ``.item()`` every step).
The arithmetic is the official code's, in the same order and in double precision, as Python
floats are: on a CPU the trajectories equal the float implementation's bit for bit
(``bmtard.methods.reference.FloatBalance``; tests/test_balance.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bmtard.config.schema import BalanceConfig

F64 = torch.float64


def entropy_step(
    tau_adv: Tensor, tau_nat: Tensor, e_adv: Tensor, e_nat: Tensor, lr: float, lo: float, hi: float
) -> tuple[Tensor, Tensor]:
    """Entropy-Based Balance: one sign step of both temperatures, clipped to [lo, hi].

    e_adv, e_nat are the official negative-entropy terms (mean of p log p, = -H/C). The teacher
    with the higher entropy gets its temperature lowered by lr, the other raised; equal entropies
    leave both unchanged. A zero term (a one-hot teacher) would divide by zero in the official
    code; there we make no step. Tensors are 0-dim float64 (entropies are cast).
    """
    e_adv, e_nat = e_adv.to(F64), e_nat.to(F64)
    new_adv = (tau_adv - lr * torch.sign(e_adv / e_nat - 1)).clamp(lo, hi)
    new_nat = (tau_nat - lr * torch.sign(e_nat / e_adv - 1)).clamp(lo, hi)
    frozen = (e_adv == 0) | (e_nat == 0)
    return torch.where(frozen, tau_adv, new_adv), torch.where(frozen, tau_nat, new_nat)


def weight_step(
    w_adv: Tensor, w_nat: Tensor, l_adv: Tensor, l_nat: Tensor, lr: float
) -> tuple[Tensor, Tensor]:
    """Normalization Loss Balance: EMA of the weights toward the normalised-loss shares.

    l_adv, l_nat are the current losses divided by their first-iteration values. The target of
    w_i is r_i / (r_adv + r_nat), r_i = l_i / mean(l): the knowledge learnt more slowly gets more
    weight. Then clip at 0 and renormalise to sum 1 (no-ops in exact arithmetic, kept as in the
    official code). 0-dim float64 tensors.
    """
    mean = (l_adv + l_nat) / 2
    r_adv, r_nat = l_adv / mean, l_nat / mean
    target_adv, target_nat = r_adv / (r_adv + r_nat), r_nat / (r_adv + r_nat)
    w_nat = w_nat - lr * (w_nat - target_nat)
    w_adv = w_adv - lr * (w_adv - target_adv)
    w_adv, w_nat = w_adv.clamp_min(0.0), w_nat.clamp_min(0.0)
    total = w_adv + w_nat
    return w_adv / total, w_nat / total


def reference_losses(
    l0_adv: Tensor, l0_nat: Tensor, l_adv: Tensor, l_nat: Tensor
) -> tuple[Tensor, Tensor]:
    """The reference losses L^0: the first batch's (l_adv, l_nat), NaN before it, never
    re-estimated. 0-dim float64 tensors."""
    first = torch.isnan(l0_adv)
    return torch.where(first, l_adv, l0_adv), torch.where(first, l_nat, l0_nat)


@dataclass
class Balance:
    """Temperatures, weights and reference losses of one B-MTARD run (0-dim float64 tensors on
    the training device; the reference losses are NaN until the first step)."""

    tau_adv: Tensor
    tau_nat: Tensor
    w_adv: Tensor
    w_nat: Tensor
    l0_adv: Tensor
    l0_nat: Tensor
    tau_lr: float
    weight_lr: float
    tau_min: float
    tau_max: float

    @classmethod
    def from_config(cls, cfg: BalanceConfig, device: torch.device | str = "cpu") -> Balance:
        def t(v: float) -> Tensor:
            return torch.tensor(v, dtype=F64, device=device)

        return cls(
            tau_adv=t(cfg.tau_adv_init),
            tau_nat=t(cfg.tau_nat_init),
            w_adv=t(cfg.w_adv_init),
            w_nat=t(1.0 - cfg.w_adv_init),
            l0_adv=t(float("nan")),
            l0_nat=t(float("nan")),
            tau_lr=cfg.tau_lr,
            weight_lr=cfg.weight_lr,
            tau_min=cfg.tau_min,
            tau_max=cfg.tau_max,
        )

    def update_temperatures(self, e_adv: Tensor, e_nat: Tensor, rate_factor: float = 1.0) -> None:
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

    def update_weights(self, loss_adv: Tensor, loss_nat: Tensor, rate_factor: float = 1.0) -> None:
        """Move the weights from this batch's losses; they apply to this batch already.

        The first call stores the reference losses L^0 (never re-estimated).
        """
        la, ln = loss_adv.detach().to(F64), loss_nat.detach().to(F64)
        self.l0_adv, self.l0_nat = reference_losses(self.l0_adv, self.l0_nat, la, ln)
        self.w_adv, self.w_nat = weight_step(
            self.w_adv, self.w_nat, la / self.l0_adv, ln / self.l0_nat, self.weight_lr * rate_factor
        )

    def status(self) -> dict[str, float]:
        """The temperatures and weights as floats (reads them from the device)."""
        return {k: float(getattr(self, k)) for k in ("tau_adv", "tau_nat", "w_adv", "w_nat")}

    def state_dict(self) -> dict[str, Tensor | float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict[str, Tensor | float]) -> None:
        device = self.tau_adv.device
        for name, value in state.items():
            setattr(self, name, value.to(device) if isinstance(value, Tensor) else value)


@dataclass
class MTARDWeights:
    """MTARD's balance (ECCV 2022 code) in the place of B-MTARD's
    ``bmtard.methods.balance.Balance``: both teachers at temperature 1, always (no Entropy-Based
    Balance); w_nat moves toward l_nat^b / (l_adv^b + l_nat^b), l_i = L_i / L_i^0 (the first batch's
    losses), at rate ``lr``; w_adv = 1 - w_nat, with no clipping. 0-dim float64 tensors on the
    training device (L^0 NaN until known)."""

    tau_adv: Tensor
    tau_nat: Tensor
    w_nat: Tensor
    w_adv: Tensor
    l0_adv: Tensor
    l0_nat: Tensor
    lr: float = 0.025
    power: float = 1.0  # the official ``bert``

    @classmethod
    def start(cls, w_adv: float = 0.5, lr: float = 0.025, power: float = 1.0, device="cpu"):
        def t(v: float) -> Tensor:
            return torch.tensor(v, dtype=F64, device=device)

        one, nan = t(1.0), t(float("nan"))
        return cls(one, one, t(1.0 - w_adv), t(w_adv), nan, nan, lr, power)

    def update_temperatures(self, e_adv: Tensor, e_nat: Tensor, rate_factor: float = 1.0) -> None:
        """MTARD keeps both temperatures at 1."""

    def update_weights(self, loss_adv: Tensor, loss_nat: Tensor, rate_factor: float = 1.0) -> None:
        la, ln = loss_adv.detach().to(F64), loss_nat.detach().to(F64)
        self.l0_adv, self.l0_nat = reference_losses(self.l0_adv, self.l0_nat, la, ln)
        ra, rn = la / self.l0_adv, ln / self.l0_nat
        if self.power != 1:  # x ** 1 is x; a tensor pow might not return it exactly
            ra, rn = ra**self.power, rn**self.power
        lr = self.lr * rate_factor
        self.w_nat = self.w_nat - lr * (self.w_nat - rn / (ra + rn))
        self.w_adv = 1 - self.w_nat

    def status(self) -> dict[str, float]:
        """The same curves as B-MTARD's (its temperatures stay 1), to compare them side by side."""
        names = ("tau_adv", "tau_nat", "w_adv", "w_nat")
        return {n: float(getattr(self, n)) for n in names}

    def state_dict(self) -> dict:
        return {
            "w_nat": self.w_nat,
            "w_adv": self.w_adv,
            "l0_adv": self.l0_adv,
            "l0_nat": self.l0_nat,
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.w_nat.device
        for name, value in state.items():
            setattr(self, name, value.to(device))
