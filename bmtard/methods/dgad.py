"""DGAD: Dynamic Guidance Adversarial Distillation with Enhanced Teacher Knowledge (Park & Min,
ECCV 2024), as its official code computes it (kunsaram01/DGAD at a0329c8, MIT, a fork of AdaAD:
``main.py::train``, branch ``DGAD``; the attack ``AT_helper.py::adaad_inner_loss``, AdaAD's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.config.method_table import ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.core import distributed
from bmtard.methods.adaad import adaad_attack
from bmtard.methods.contract import Build, Method
from bmtard.methods.registry import register
from bmtard.runtime.execution import Execution, logits32

F64 = torch.float64
#: the guard in the official ST divisor: 1 / (n_ST + 1e-10)
ST_GUARD = 1e-10


def swap_clean(t: Tensor, y: Tensor, st: Tensor, top: Tensor) -> Tensor:
    """ELS on the teacher's clean logits t (B, K): for the rows st (B,) bool, the true-class
    logit and the logit of class ``top`` (B,) (the row's argmax) change places; the other rows
    as they are. Official: ``t[st, y[st]] = max[st]`` then ``t[st, top[st]] = true[st]``."""
    rows = torch.arange(len(t), device=t.device)
    true, best = t[rows, y], t[rows, top]
    cols = torch.arange(t.shape[1], device=t.device)[None, :]
    swapped = torch.where(cols == y[:, None], best[:, None], t)
    swapped = torch.where(cols == top[:, None], true[:, None], swapped)  # the later assignment
    return torch.where(st[:, None], swapped, t)


def swap_adversarial(t: Tensor, y: Tensor) -> Tensor:
    """ELS on the teacher's adversarial logits t (B, K): in every row whose true-class logit is
    below the largest other logit (margin true - other < 0), the two change places."""
    rows = torch.arange(len(t), device=t.device)
    true = t[rows, y]
    other, other_idx = t.scatter(1, y[:, None], -float("inf")).max(dim=1)
    wrong = (true - other) < 0
    cols = torch.arange(t.shape[1], device=t.device)[None, :]
    swapped = torch.where(cols == y[:, None], other[:, None], t)
    swapped = torch.where(cols == other_idx[:, None], true[:, None], swapped)
    return torch.where(wrong[:, None], swapped, t)


def kl_per_sample(z_student: Tensor, z_teacher: Tensor) -> Tensor:
    """Per-sample KL(softmax(z_t) || softmax(z_s)): nn.KLDivLoss(reduction='none') summed over
    classes, (B,)."""
    elem = F.kl_div(F.log_softmax(z_student, dim=1), F.softmax(z_teacher, dim=1), reduction="none")
    return elem.sum(dim=1)


def scalar(value: Tensor) -> Tensor:
    """A float64 quantity that the official code holds as a Python float, as the fp32 factor
    torch makes of a Python scalar in a product with a fp32 tensor (rounded once)."""
    return value.to(torch.float32)


@dataclass
class DGAD(Method):
    """One DGAD step per batch (official ``main.py::train``, branch ``DGAD``, ``--alp on``).

    x' from AdaAD's attack on the whole batch (``bmtard.methods.adaad.adaad_attack``). The
    student, in train mode, is forwarded on x, then on x'; the teacher, in eval mode without
    gradient, on x and x'. MAP: the "ST" samples are those the teacher gets wrong on x
    (m_i = [argmax T(x_i) != y_i], n_ST of them). ELS: on the teacher's clean logits, for the ST
    samples, the true-class logit and the argmax logit change places; on its adversarial logits,
    for every sample whose true-class logit is below the largest other one, those two change
    places. Then
    L_ST = sum_ST KL_sum(softmax(T^(x)) || S(x)) / (n_ST + 1e-10),
    L_AT = sum_notST KL_sum(softmax(T^(x')) || S(x')) / (B - n_ST),
    PCR = mean over B x K of (softmax(S(x')) - softmax(S(x)))^2 (both branches live),
    loss = (n_ST / bs) * L_ST + ((bs - n_ST) / bs) * L_AT + beta * PCR.

    teacher: the robust teacher (frozen; ``Execution.teacher``). attack: AdaAD's (eps, step in
    1/255; official 10 steps of 2/255 in 8/255, the 0.001-Gaussian start). batch_size: the
    configured batch size (official ``--bs`` 128). beta: the PCR weight (official ``--ALP_beta``
    1.0; beta = 0 is the official ``--alp off`` only with ``bracket_bug`` off). The schedule is
    the caller's (official: AdaAD's, 200 epochs, lr 0.1 x 0.1 at 100 and 150, weight decay 5e-4).

    Faithful quirks and their switches:
    - ``fixed_divisor=True``: bs is ``batch_size``, the configured size (official ``args.bs``),
      also for the last, partial batch, which is then mis-weighted; False: the batch's length.
    - ``bracket_bug=False``: True computes the official MobileNetV2 branch, whose brackets give
      0.5 * ((n_ST / bs) * L_ST + (bs - n_ST) / bs) * L_AT + beta * PCR (a product of the two KL
      terms; the caller turns it on for a MobileNetV2 student).
    - ``guard_all_st=True`` (a deviation): a batch the teacher gets entirely wrong (n_ST = B) has
      no AT sample; the official code then divides the Python float 1 by 0.0 and stops with a
      ZeroDivisionError (not a NaN). We divide by max(B - n_ST, 1), so L_AT = 0 (its sum is
      empty), like L_ST's 1e-10 guard when n_ST = 0. False: divide by B - n_ST on the device,
      which gives L_AT = 0 * inf = NaN and the loop's finiteness guard stops the run.
    Per-sample KL sums (not AdaAD's CIFAR-10 mean over classes) on every dataset, as the code.
    Logs: loss, loss_st, loss_at, loss_pcr, st_fraction (n_ST / B).
    """

    teacher: nn.Module
    attack: TrainAttackConfig
    batch_size: int = 128
    beta: float = 1.0
    fixed_divisor: bool = True
    bracket_bug: bool = False
    guard_all_st: bool = True
    execution: Execution = field(default_factory=Execution)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size = {self.batch_size}: must be at least 1")

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ex = self.execution
        x = ex.layout(x)
        x_adv = adaad_attack(model, self.teacher, x, self.attack, ex)
        model.train()
        with ex.autocast():
            z_nat = logits32(model(x))
            z_adv = logits32(model(x_adv))
        t_nat = ex.teacher_logits(self.teacher, x)
        t_adv = ex.teacher_logits(self.teacher, x_adv)
        return self.loss_from_logits(z_nat, z_adv, t_nat, t_adv, y)

    def loss_from_logits(
        self, z_nat: Tensor, z_adv: Tensor, t_nat: Tensor, t_adv: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and logs from the fp32 logits (B, K) of the student (live) and the teacher
        on x and x', labels y (B,)."""
        # MAP: the samples the teacher gets wrong on x (official Lambda, 0/1 in fp32)
        st = torch.argmax(t_nat, dim=1) != y
        lam = st.to(torch.float32)
        n = lam.sum(dtype=F64)  # exact: the official num_lambda, a Python float
        b = len(y)
        bs = self.batch_size if self.fixed_divisor else b
        # ELS
        t_nat_hat = swap_clean(t_nat, y, st, torch.max(t_nat, dim=1).indices)
        t_adv_hat = swap_adversarial(t_adv, y)

        kl_nat = kl_per_sample(z_nat, t_nat_hat)
        kl_adv = kl_per_sample(z_adv, t_adv_hat)
        at_count = (b - n).clamp(min=1) if self.guard_all_st else b - n
        loss_st = scalar(1 / (n + ST_GUARD)) * torch.sum(lam * kl_nat)
        loss_at = scalar(1 / at_count) * torch.sum((1 - lam) * kl_adv)
        pcr = F.mse_loss(F.softmax(z_adv, dim=1), F.softmax(z_nat, dim=1))
        w_st, w_at = scalar(n / bs), scalar((bs - n) / bs)
        if self.bracket_bug:  # official: 0.5 * ((n/bs) * L_ST + ((bs - n)/bs)) * L_AT + ...
            loss = 0.5 * (w_st * loss_st + w_at) * loss_at + self.beta * pcr
        else:
            loss = w_st * loss_st + w_at * loss_at + self.beta * pcr
        return loss, {
            "loss": loss.detach(),
            "loss_st": loss_st.detach(),
            "loss_at": loss_at.detach(),
            "loss_pcr": pcr.detach(),
            "st_fraction": (n / b).to(torch.float32),
        }


@register("dgad")
def from_config(b: Build) -> Method:
    c, d = b.cfg, b.cfg.dgad
    return DGAD(
        # its sums are divided by the batch size: each process divides by its share of it
        b.teachers[ROBUST], c.attack, batch_size=c.optim.batch_size // distributed.world(),
        beta=d.beta,
        fixed_divisor=d.fixed_divisor, bracket_bug=bool(d.bracket_bug),
        guard_all_st=d.guard_all_st, execution=b.execution,
    )  # fmt: skip
