"""The distillation baselines (ARD, RSLAD, MTARD) against hand-computed values, and a few
training steps of each."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.ard import ARD
from bmtard.methods.balance import MTARDWeights
from bmtard.methods.mtard import MTARD
from bmtard.methods.rslad import RSLAD
from bmtard.models import build_model

from method_helpers import Constant, softmax

ATTACK = TrainAttackConfig(steps=2)


def kl_official(p: list[float], z_student: list[float]) -> float:
    """mean over the C classes of p (log(p + 1e-5) - log_softmax(z)): one image."""
    q = softmax(z_student)
    terms = [pi * (math.log(pi + 1e-5) - math.log(qi)) for pi, qi in zip(p, q, strict=True)]
    return sum(terms) / len(p)


def kl_plain(p: list[float], q: list[float]) -> float:
    """nn.KLDivLoss()'s mean over classes of p (log p - log q): one image."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)) / len(p)


S, T, T2 = [0.5, -1.0, 2.0], [3.0, 0.0, -1.0], [1.0, 1.5, -2.0]
X, Y = torch.rand(4, 3, 8, 8), torch.tensor([0, 2, 1, 2])


def test_ard_loss_by_hand():
    ard = ARD(Constant(T).eval(), TrainAttackConfig(init="uniform_unclamped"), 30.0, 0.25)
    loss, logs = ard.batch_loss(Constant(S), X, Y)
    kl = kl_plain(softmax([v / 30 for v in T]), softmax([v / 30 for v in S]))
    ce = sum(-math.log(softmax(S)[y]) for y in Y.tolist()) / len(Y)
    assert logs["loss_kl"].item() == pytest.approx(kl, rel=1e-5)
    assert logs["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(0.25 * 900 * kl + 0.75 * ce, rel=1e-5)


def test_rslad_loss_by_hand():
    rslad = RSLAD(Constant(T).eval(), ATTACK)
    loss, logs = rslad.batch_loss(Constant(S), X, Y)
    kl = kl_official(softmax(T), S)  # the teacher sees clean x on both terms
    assert logs["loss_adv"].item() == pytest.approx(kl, rel=1e-6)
    assert logs["loss_nat"].item() == pytest.approx(kl, rel=1e-6)
    assert loss.item() == pytest.approx(5 / 6.0 * kl + 1 / 6.0 * kl, rel=1e-6)


def test_mtard_weights_by_hand():
    """w_nat moves toward l_nat^b / (l_adv^b + l_nat^b); w_adv = 1 - w_nat; no clipping."""
    for power in (1.0, 2.0):
        w = MTARDWeights.start(lr=0.025, power=power)
        w_nat = 0.5
        losses = [(0.8, 0.4), (0.4, 0.4), (0.2, 0.5), (0.1, 0.05)]
        for la, ln in losses:
            w.update_weights(
                torch.tensor(la, dtype=torch.float64), torch.tensor(ln, dtype=torch.float64)
            )
            ra, rn = (la / losses[0][0]) ** power, (ln / losses[0][1]) ** power
            w_nat = w_nat - 0.025 * (w_nat - rn / (ra + rn))
            assert w.w_nat.item() == pytest.approx(w_nat, rel=1e-12)
            assert w.w_adv.item() == pytest.approx(1 - w_nat, rel=1e-12)
        assert w.w_nat.item() != 0.5  # it moved


def test_mtard_loss_by_hand_at_temperature_one():
    w = MTARDWeights.start(lr=0.1)
    mtard = MTARD(Constant(T).eval(), Constant(T2).eval(), ATTACK, w)
    loss, logs = mtard.batch_loss(Constant(S), X, Y)
    l_adv, l_nat = kl_official(softmax(T), S), kl_official(softmax(T2), S)
    assert logs["loss_adv"].item() == pytest.approx(l_adv, rel=1e-6)
    assert logs["loss_nat"].item() == pytest.approx(l_nat, rel=1e-6)
    assert w.w_nat.item() == 0.5  # the first batch: both relative losses are 1
    assert loss.item() == pytest.approx(0.5 * l_adv + 0.5 * l_nat, rel=1e-6)


def test_uniform_unclamped_start_is_not_clamped_before_the_first_step():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return x.flatten(1)[:, :3] * 1.0

    x = torch.zeros(2, 3, 4, 4)
    for init in ("uniform", "uniform_unclamped"):
        seen.clear()
        torch.manual_seed(0)
        out = pgd_ce(Record(), x, torch.tensor([0, 1]), eps=0.1, step_size=0.01, steps=2, init=init)
        assert out.min() >= 0  # every step clamps to [0, 1]
        assert (seen[0].min() < 0) == (init == "uniform_unclamped")


def tiny(arch: str = "resnet18") -> nn.Module:
    return build_model(arch, 10, 0.0625)
