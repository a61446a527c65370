"""Entropy-Based Balance and Normalization Loss Balance against hand-computed steps."""

import pytest
import torch
from torch import nn

from bmtard.config.schema import BalanceConfig, TrainAttackConfig
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance, entropy_step, weight_step
from bmtard.methods.losses import kl_to_teacher, teacher_probs
from bmtard.methods.reference import FloatBalance


def t(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def entropy(*args):
    """entropy_step on floats: (tau_adv, tau_nat, e_adv, e_nat, lr, lo, hi) -> floats."""
    tau_adv, tau_nat = entropy_step(*(t(a) for a in args[:4]), *args[4:])
    return float(tau_adv), float(tau_nat)


def weights(*args):
    """weight_step on floats: (w_adv, w_nat, l_adv, l_nat, lr) -> floats."""
    w_adv, w_nat = weight_step(*(t(a) for a in args[:4]), args[4])
    return float(w_adv), float(w_nat)


# ---- entropy rule: E = mean(p log p) = -H/C (negative) ------------------------------------
def test_higher_entropy_teacher_is_sharpened_the_other_softened():
    # robust teacher has the higher entropy (E_adv more negative)
    assert entropy(5.0, 5.0, -0.2, -0.1, 0.001, 1.0, 10.0) == pytest.approx((4.999, 5.001))
    # clean teacher has the higher entropy
    assert entropy(5.0, 5.0, -0.1, -0.2, 0.001, 1.0, 10.0) == pytest.approx((5.001, 4.999))


def test_equal_entropy_moves_nothing():
    assert entropy(3.0, 2.0, -0.1, -0.1, 0.001, 1.0, 10.0) == (3.0, 2.0)


def test_temperatures_are_clipped_to_range():
    # at the lower bound only the lower-entropy teacher can move (upwards)
    assert entropy(1.0, 1.0, -0.2, -0.1, 0.001, 1.0, 10.0) == pytest.approx((1.0, 1.001))
    assert entropy(10.0, 10.0, -0.1, -0.2, 0.5, 1.0, 10.0) == pytest.approx((10.0, 9.5))


def test_zero_entropy_term_makes_no_step():
    assert entropy(2.0, 2.0, 0.0, -0.1, 0.001, 1.0, 10.0) == (2.0, 2.0)


# ---- weight rule ---------------------------------------------------------------------------
def test_weights_move_toward_normalised_loss_share():
    # l_adv = 0.9, l_nat = 0.6 -> targets 0.6 / 0.4; EMA with rate 0.025 from 0.5 / 0.5
    w_adv, w_nat = weights(0.5, 0.5, 0.9, 0.6, 0.025)
    assert w_adv == pytest.approx(0.5 - 0.025 * (0.5 - 0.6))  # 0.5025
    assert w_nat == pytest.approx(0.5 - 0.025 * (0.5 - 0.4))  # 0.4975
    assert w_adv + w_nat == pytest.approx(1.0)


def test_first_iteration_losses_are_the_reference_and_never_reset():
    b = Balance.from_config(BalanceConfig())
    b.update_weights(t(2.0), t(4.0))  # first call: l = 1, 1 -> targets 0.5, no change
    assert (float(b.l0_adv), float(b.l0_nat)) == (2.0, 4.0)
    assert (float(b.w_adv), float(b.w_nat)) == pytest.approx((0.5, 0.5))
    b.update_weights(t(1.0), t(3.0))  # l_adv = 0.5, l_nat = 0.75 -> target_adv = 0.4
    assert (float(b.l0_adv), float(b.l0_nat)) == (2.0, 4.0)
    assert float(b.w_adv) == pytest.approx(0.5 - 0.025 * (0.5 - 0.4))
    b.update_weights(t(1.0), t(3.0), rate_factor=0.1)  # decayed rate
    assert float(b.w_adv) == pytest.approx(0.4975 - 0.0025 * (0.4975 - 0.4))


def test_tensor_rules_equal_the_official_float_rules_bit_for_bit():
    """The device-tensor balance (float64) does the official float arithmetic in the same order:
    the same τ and w to the last bit, over many steps of random entropies and losses, with a
    decayed rate, at the clip bounds and with equal entropies."""
    gen = torch.Generator().manual_seed(0)
    cfg = BalanceConfig(tau_lr=0.3, weight_lr=0.2, tau_max=3.0)
    ref, new = FloatBalance.from_config(cfg), Balance.from_config(cfg)
    for i in range(500):
        e = -torch.rand(2, generator=gen, dtype=torch.float32)
        if i % 50 == 7:
            e[1] = e[0]  # equal entropies: no step
        losses = torch.rand(2, generator=gen, dtype=torch.float32) + 0.01
        factor = 0.1 if i > 300 else 1.0
        ref.step(e[0].item(), e[1].item(), losses[0].item(), losses[1].item(), factor)
        new.update_temperatures(e[0], e[1], factor)
        new.update_weights(losses[0], losses[1], factor)
        got = new.status()
        assert (got["tau_adv"], got["tau_nat"]) == (ref.tau_adv, ref.tau_nat), i
        assert (got["w_adv"], got["w_nat"]) == (ref.w_adv, ref.w_nat), i


def test_ema_converges_to_target_and_stays_normalised():
    w = (0.5, 0.5)
    for _ in range(2000):
        w = weights(*w, 0.3, 0.9, 0.025)
    assert w == pytest.approx((0.25, 0.75), abs=1e-6)


# ---- wiring inside one B-MTARD step ------------------------------------------------------
class Fixed(nn.Module):
    """A 'teacher' returning fixed logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_temperature_change_takes_effect_from_next_batch_weights_from_this_one():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    t_adv = Fixed([1.0, 0.0, -1.0])  # high entropy
    t_nat = Fixed([6.0, 0.0, -3.0])  # low entropy -> its temperature rises
    attack = TrainAttackConfig(eps=0.0, step_size=1.0, steps=1)  # x_adv == x
    balance = Balance.from_config(BalanceConfig(tau_lr=0.5))
    method = BMTARD(t_adv, t_nat, attack, balance, "mean")
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])

    loss1, logs1 = method.batch_loss(student, x, y)
    z = student(x)
    kl_adv1 = kl_to_teacher(z, teacher_probs(t_adv(x), 1.0)).item()
    kl_nat1 = kl_to_teacher(z, teacher_probs(t_nat(x), 1.0)).item()  # tau still 1 in batch 1
    assert float(logs1["loss_adv"]) == pytest.approx(kl_adv1, rel=1e-6)
    assert float(logs1["loss_nat"]) == pytest.approx(kl_nat1, rel=1e-6)
    assert (float(balance.tau_adv), float(balance.tau_nat)) == (1.0, 1.5)  # after the losses
    # the weights of batch 1 already include batch 1 (l = 1, 1 -> unchanged 0.5 / 0.5)
    assert loss1.item() == pytest.approx(0.5 * kl_adv1 + 0.5 * kl_nat1, rel=1e-6)

    _, logs2 = method.batch_loss(student, x, y)
    kl_nat2 = kl_to_teacher(z, teacher_probs(t_nat(x), 1.5)).item()  # batch 2 uses tau 1.5
    assert float(logs2["loss_nat"]) == pytest.approx(kl_nat2, rel=1e-6)
    assert float(balance.tau_nat) == 2.0
    assert student.training  # the student is left in train mode after the step
