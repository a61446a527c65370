"""CIARD (bmtard.methods.ciard) against values computed by hand, its quirks and their switches,
the order of its forwards, the robust teacher's training, and a resumed run equal bit for bit to
an uninterrupted one."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from bmtard.config.schema import BalanceConfig, TrainAttackConfig
from bmtard.methods.balance import Balance
from bmtard.methods.ciard import CIARD, magnitude, push_scale, teacher_lr_factor
from bmtard.methods.decays import cosine_exp
from bmtard.methods.losses import kl_to_teacher
from bmtard.models import build_model
from bmtard.runtime.execution import Execution

ATTACK = TrainAttackConfig(steps=2)
Y = torch.tensor([0, 2, 1, 2])
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
# per-row logits (B = 4, C = 3): the clean teacher is wrong on rows 0 and 2 (argmax 1, 0)
# the student near 5 x the clean teacher on the pushed rows: L3 is small, its weight s = 1000
S = [[4.0, 6.0, -9.0], [0.2, 0.1, -0.3], [9.0, 2.0, 0.0], [-0.7, 0.9, 0.3]]
T_ROB = [[3.0, 0.0, -1.0], [0.5, 0.2, 2.5], [0.1, 1.9, 0.0], [-1.0, 0.0, 1.0]]
T_NAT = [[1.0, 1.5, -2.0], [0.0, 0.3, 0.9], [2.0, 0.5, 0.1], [0.2, -0.4, 1.1]]
RIGHT = [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]  # argmax = Y


class Rows(nn.Module):
    """Fixed logits per row, whatever the input (so the attack leaves them as they are)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits + 0 * x.sum(dim=(1, 2, 3))[:, None]


def frozen(m: nn.Module) -> nn.Module:
    """A teacher as the caller loads it: eval mode, no gradients."""
    return m.eval().requires_grad_(False)


def balance(tau: float = 2.0, **kw) -> Balance:
    return Balance.from_config(BalanceConfig(tau_adv_init=tau, tau_nat_init=tau, **kw))


def ciard(t_rob=T_ROB, t_nat=T_NAT, **kw) -> CIARD:
    return CIARD(frozen(Rows(t_rob)), frozen(Rows(t_nat)), ATTACK, kw.pop("bal", balance()), **kw)


# ---- plain-Python references of the official code ------------------------------------------
def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl_rows(p_rows: list[list[float]], z_rows: list[list[float]]) -> float:
    """The official kl_loss, averaged over all rows x classes: p (log(p + 1e-5) - log_softmax z)."""
    terms = []
    for p, z in zip(p_rows, z_rows, strict=True):
        q = softmax(z)
        terms += [pi * (math.log(pi + 1e-5) - math.log(qi)) for pi, qi in zip(p, q, strict=True)]
    return sum(terms) / len(terms)


def neg_entropy(p_rows: list[list[float]]) -> float:
    terms = [pi * math.log(pi + 1e-5) for p in p_rows for pi in p]
    return sum(terms) / len(terms)


def scale_to_magnitude(a: float, b: float, c: float) -> float:
    """The official weight of the push term, on Python floats."""
    a, b, c = (v + 1e-7 if v == 0 else v for v in (a, b, c))
    ma, mb, mc = (math.floor(math.log10(abs(v))) for v in (a, b, c))
    return 10 ** (min(ma, mb) - mc)


def tempered(rows, tau):
    return [softmax([v / tau for v in z]) for z in rows]


def sign(v: float) -> float:
    return float(v > 0) - float(v < 0)


# ---- the loss by hand ----------------------------------------------------------------------
def test_loss_by_hand():
    method = ciard()
    method.start_epoch(1)
    loss, logs = method.batch_loss(Rows(S), X, Y)
    l1 = kl_rows(tempered(T_ROB, 2.0), S)
    l2 = kl_rows(tempered(T_NAT, 2.0), S)
    wrong = [0, 2]  # the rows whose clean teacher is wrong on x'
    l3 = kl_rows([softmax(T_NAT[i]) for i in wrong], [[v / 5 for v in S[i]] for i in wrong])
    s = scale_to_magnitude(l1, l2, l3)
    assert logs["loss_adv"].item() == pytest.approx(l1, rel=1e-6)
    assert logs["loss_nat"].item() == pytest.approx(l2, rel=1e-6)
    assert logs["loss_push"].item() == pytest.approx(l3, rel=1e-6)
    assert logs["push_scale"].item() == s == 1000  # the push is rescaled
    assert logs["push_frac"].item() == 0.5
    # unweighted (HEAD); L1 + L2 - s L3 cancels, so float32's error shows at 1e-6 of the terms
    assert loss.item() == pytest.approx(l1 + l2 - s * l3, abs=2e-6)
    parts = (logs[k].item() for k in ("loss_adv", "loss_nat", "loss_push"))
    assert loss.item() == pytest.approx(next(parts) + next(parts) - s * next(parts), rel=1e-6)
    ce = sum(-math.log(softmax(z)[y]) for z, y in zip(T_ROB, Y.tolist(), strict=True)) / 4
    assert logs["teacher_ce"].item() == pytest.approx(ce, rel=1e-6)
    # Entropy-Based Balance with this batch's temperature 2, in force from the next batch
    e_adv, e_nat = neg_entropy(tempered(T_ROB, 2.0)), neg_entropy(tempered(T_NAT, 2.0))
    st = method.status()
    assert st["tau_adv"] == pytest.approx(2.0 - 0.001 * sign(e_adv / e_nat - 1), abs=1e-12)
    assert st["tau_nat"] == pytest.approx(2.0 - 0.001 * sign(e_nat / e_adv - 1), abs=1e-12)
    assert st["tau_adv"] != 2.0
    assert st["w_adv"] == st["w_nat"] == 0.5  # the first batch: both relative losses are 1


def test_push_gradient_pushes_the_student_away_from_the_clean_teacher():
    """Only the pushed rows get the push's gradient, and with the sign that increases L3."""
    student = Rows(S)
    method = ciard()
    method.start_epoch(1)
    loss, logs = method.batch_loss(student, X, Y)
    loss.backward()
    z = student.logits.detach().requires_grad_(True)
    p_rob, p_nat = (torch.softmax(torch.tensor(t) / 2, dim=1) for t in (T_ROB, T_NAT))
    (g_kl,) = torch.autograd.grad(kl_to_teacher(z, p_rob) + kl_to_teacher(z, p_nat), z)
    push = student.logits.grad - g_kl  # -s dL3/dz
    assert push[[1, 3]].abs().max() < 1e-9  # rows where the clean teacher is right
    assert push[[0, 2]].abs().min() > 1e-6
    p = torch.softmax(torch.tensor(T_NAT)[[0, 2]], dim=1)
    s = logs["push_scale"].item()
    # dL3/dz = (softmax(z / 5) - p) / (5 n C) for the official mean over n x C elements
    expected = -s * (torch.softmax(z.detach()[[0, 2]] / 5, dim=1) - p) / (5 * 2 * 3)
    torch.testing.assert_close(push[[0, 2]], expected, rtol=1e-4, atol=1e-9)


def test_no_push_when_the_clean_teacher_is_right_on_every_sample():
    student = Rows(S)
    method = ciard(t_nat=RIGHT)
    method.start_epoch(1)
    loss, logs = method.batch_loss(student, X, Y)
    assert logs["loss_push"].item() == 0 and logs["push_scale"].item() == 0
    assert logs["push_frac"].item() == 0
    assert torch.equal(loss, logs["loss_adv"] + logs["loss_nat"])  # exactly L1 + L2
    loss.backward()
    assert torch.isfinite(student.logits.grad).all()


def test_weighted_switch_uses_the_weights_of_this_batch():
    """weighted (March 2025): w_adv L1 + w_nat L2 - s L3, the weights already moved by this
    batch's losses (the official rule: EMA toward the normalised shares, then x 1/sum)."""
    student = Rows(S)
    hand = {"adv": 0.5, "nat": 0.5}
    heads = {False: ciard(weighted=False), True: ciard(weighted=True)}
    for m in heads.values():
        m.start_epoch(1)
    first = None
    for _ in range(3):
        out = {w: m.batch_loss(student, X, Y) for w, m in heads.items()}
        l1, l2 = (out[True][1][k].item() for k in ("loss_adv", "loss_nat"))
        first = first or (l1, l2)
        ra, rn = l1 / first[0], l2 / first[1]
        mean = (ra + rn) / 2
        ia, in_ = ra / mean, rn / mean
        hand["nat"] -= 0.025 * (hand["nat"] - in_ / (ia + in_))
        hand["adv"] -= 0.025 * (hand["adv"] - ia / (ia + in_))
        coef = 1.0 / (hand["adv"] + hand["nat"])
        hand = {k: v * coef for k, v in hand.items()}
        st = heads[True].status()
        assert st["w_adv"] == pytest.approx(hand["adv"], rel=1e-12)
        assert st["w_nat"] == pytest.approx(hand["nat"], rel=1e-12)
        s, l3 = out[True][1]["push_scale"].item(), out[True][1]["loss_push"].item()
        weighted = hand["adv"] * l1 + hand["nat"] * l2 - s * l3
        assert out[True][0].item() == pytest.approx(weighted, rel=1e-6)
        assert out[False][0].item() == pytest.approx(l1 + l2 - s * l3, rel=1e-6)
        with torch.no_grad():  # a different student next batch, so that the weights move
            student.logits.mul_(0.7).add_(0.1)
    assert heads[True].status()["w_adv"] != 0.5
    assert heads[False].status()["w_adv"] == heads[True].status()["w_adv"]  # computed, unused


@pytest.mark.parametrize("per_step", [True, False])
def test_rate_decay_every_batch_of_a_milestone_epoch_or_once_per_milestone(per_step):
    method = ciard(milestones=(1,), per_step_decay=per_step)
    b = method.balance
    method.start_epoch(1)
    tau_lr, w_lr, steps = 0.001, 0.025, []
    for _ in range(3):
        before = float(b.tau_adv)
        method.batch_loss(Rows(S), X, Y)  # epoch 1: the decay comes after the milestone epoch
        steps.append(abs(float(b.tau_adv) - before))
    if per_step:  # x 0.1 after every batch, as the official float: 1e-3, 1e-4, 1e-5
        for i in range(3):
            assert steps[i] == pytest.approx(tau_lr, rel=1e-9)
            tau_lr *= 0.1
            w_lr *= 0.1
        assert (b.tau_lr, b.weight_lr) == (tau_lr, w_lr)  # the same float products
    else:  # the corrected form: once per milestone (1 in epoch 1, 0.1 from epoch 2)
        assert steps == pytest.approx([0.001] * 3, rel=1e-9)
        assert (b.tau_lr, b.weight_lr) == (0.001, 0.025)
        method.start_epoch(2)
        before = float(b.tau_adv)
        method.batch_loss(Rows(S), X, Y)
        assert abs(float(b.tau_adv) - before) == pytest.approx(0.0001, rel=1e-9)


def test_per_step_decay_ignores_epochs_off_the_milestones():
    method = ciard(milestones=(3,))
    method.start_epoch(2)
    method.batch_loss(Rows(S), X, Y)
    assert (method.balance.tau_lr, method.balance.weight_lr) == (0.001, 0.025)


# ---- the push weight -------------------------------------------------------------------------
def float32_around_powers_of_ten() -> list[float]:
    values = [0.0, -0.0, 1e-45, 3.4e38, 0.0123, 7.5, -0.003]
    for k in range(-45, 39):
        x = np.float32(10.0**k)
        for direction in (np.float32(0), np.float32(np.inf)):
            y = x
            for _ in range(3):
                y = np.nextafter(y, direction)
                values.append(float(y))
        values.append(float(x))
    return values


def test_magnitude_is_the_official_floor_log10_for_float32_values():
    for v in float32_around_powers_of_ten():
        expected = math.floor(math.log10(abs(v + 1e-7 if v == 0 else v)))
        assert magnitude(torch.tensor(v, dtype=torch.float32)).item() == expected, v


def test_push_scale_is_the_official_weight_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [(0.023, 0.51, 0.0007), (0.5, 0.5, 5.0), (1.0, 0.1, 0.1), (0.0, 0.2, 0.3)]
    cases += [tuple(10.0 ** rng.uniform(-6, 2, 3)) for _ in range(200)]
    for a, b, c in cases:
        la, lb, lc = (torch.tensor(v, dtype=torch.float32) for v in (a, b, c))
        s = push_scale(la, lb, lc)
        official = scale_to_magnitude(la.item(), lb.item(), lc.item())
        assert s.dtype == torch.float32
        assert torch.equal(s * lc, official * lc)  # the official Python scalar times L3
    assert push_scale(torch.tensor(0.023), torch.tensor(0.51), torch.tensor(0.0007)).item() == 100
    assert torch.isnan(push_scale(torch.tensor(float("nan")), torch.tensor(1.0), torch.tensor(1.0)))


# ---- the robust teacher ----------------------------------------------------------------------
def test_teacher_lr_factor_is_the_cosine_exp_schedule_after_teacher_from():
    for epoch in range(1, 51):
        assert teacher_lr_factor(epoch, 50, 300) == 0.0  # it trains only when epoch > 50
    for epoch in range(51, 301):
        assert teacher_lr_factor(epoch, 50, 300) == cosine_exp(epoch, 50, 300)
    method = ciard(teacher_lr=1e-4)
    method.start_epoch(51)
    assert method.status()["teacher_lr"] == 1e-4 * cosine_exp(51, 50, 300)
    method.start_epoch(50)
    assert method.status()["teacher_lr"] == 0.0


def test_takes_ownership_of_the_robust_teacher():
    t_rob = frozen(Rows(T_ROB))
    method = CIARD(t_rob, frozen(Rows(T_NAT)), ATTACK, balance())
    assert t_rob.training and all(p.requires_grad for p in t_rob.parameters())
    assert method.networks() == {"robust_teacher": t_rob}
    group = method.optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.1, 2e-4, False)
    with pytest.raises(ValueError, match="fp32"):
        CIARD(frozen(Rows(T_ROB)).to(torch.bfloat16), frozen(Rows(T_NAT)), ATTACK, balance())


def test_teacher_steps_on_its_ce_after_teacher_from_only():
    method = ciard(teacher_lr=0.5, teacher_from=1, teacher_until=4)
    t_rob = method.teacher_adv.logits
    start = t_rob.detach().clone()
    method.start_epoch(1)  # epoch == teacher_from: no step
    method.batch_loss(Rows(S), X, Y)
    method.after_step()
    assert torch.equal(t_rob.detach(), start) and t_rob.grad is None
    method.start_epoch(2)
    method.batch_loss(Rows(S), X, Y)
    method.after_step()
    # SGD's first step: w - lr (g + wd w), g = (softmax(w) - onehot(y)) / B for the mean CE
    lr = 0.5 * cosine_exp(2, 1, 4)
    g = (torch.softmax(start, dim=1) - torch.eye(3)[Y]) / 4
    torch.testing.assert_close(t_rob.detach(), start - lr * (g + 2e-4 * start))
    assert method.status()["teacher_lr"] == lr


def test_forwards_in_the_official_order_with_their_modes():
    seen = []

    class Record(Rows):
        def __init__(self, name, logits):
            super().__init__(logits)
            self.name = name

        def forward(self, x):
            where = "x" if torch.equal(x, X) else "x'"
            seen.append((self.name, where, self.training, torch.is_grad_enabled()))
            return super().forward(x)

    t_rob, t_nat = frozen(Record("T_rob", T_ROB)), frozen(Record("T_nat", T_NAT))
    method = CIARD(t_rob, t_nat, ATTACK, balance(), teacher_from=1)
    student = Record("S", S)
    for epoch, trains in ((1, False), (2, True)):
        seen.clear()
        method.start_epoch(epoch)
        method.batch_loss(student, X, Y)
        assert seen == [
            ("S", "x", True, True),  # 1. the student's clean forward first (its BN)
            ("T_nat", "x", False, False),  # 2.
            ("T_rob", "x", True, False),  # 3. train mode without graph: only its BN moves
            ("S", "x'", False, True),  # 4. the attack on the student alone, in eval mode
            ("S", "x'", False, True),
            ("S", "x'", True, True),  # 5.
            ("T_rob", "x'", True, trains),  # with graph once the teacher trains
            ("T_nat", "x'", False, False),
        ]
    seen.clear()
    CIARD(t_rob, t_nat, ATTACK, balance(), teacher_clean_pass=False).batch_loss(student, X, Y)
    assert ("T_rob", "x", True, False) not in seen


def test_the_robust_teacher_batchnorm_moves_on_both_of_its_forwards():
    torch.manual_seed(0)
    t_rob = frozen(build_model("preact_resnet18", 3, 0.0625))
    counts = {}
    for clean_pass in (True, False):
        t = frozen(build_model("preact_resnet18", 3, 0.0625))
        t.load_state_dict(t_rob.state_dict())
        method = CIARD(t, frozen(Rows(T_NAT)), ATTACK, balance(), teacher_clean_pass=clean_pass)
        method.start_epoch(1)
        method.batch_loss(Rows(S), X, Y)
        bn = next(m for m in t.modules() if isinstance(m, nn.BatchNorm2d))
        counts[clean_pass] = int(bn.num_batches_tracked)
    assert counts == {True: 2, False: 1}


# ---- real steps, precision and resume ------------------------------------------------------
def tiny(arch: str = "resnet18", width: float = 0.0625) -> nn.Module:
    return build_model(arch, 10, width)


def build(seed: int, per_step_decay: bool, execution: Execution | None = None, width=0.0625):
    """The student from ``seed``; the teachers as loaded from their files (always the same)."""
    torch.manual_seed(123)
    t_rob, t_nat = frozen(tiny("preact_resnet18", width)), frozen(tiny(width=width))
    torch.manual_seed(seed)
    student = tiny(width=width)
    ex = execution or Execution()
    ex.student(student)
    method = CIARD(
        t_rob, ex.teacher(t_nat), ATTACK, balance(tau=1.0), teacher_lr=0.05, teacher_from=2,
        teacher_until=4, milestones=(3,), per_step_decay=per_step_decay, execution=ex,
    )  # fmt: skip
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    return student, method, opt


def batch(epoch: int, i: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * epoch + i)
    return torch.rand(size, 3, 8, 8, generator=gen), torch.randint(0, 10, (size,), generator=gen)


def train(student, method, opt, steps):
    """The loop's calls for (epoch, batch) in ``steps``; the attack's noise seeded per step."""
    logs, epoch = [], None
    for e, i in steps:
        if e != epoch:
            epoch = e
            method.start_epoch(e)
        torch.manual_seed(1000 * e + i)
        loss, log = method.batch_loss(student, *batch(e, i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step()
        logs.append({"loss": loss.detach(), **log})
    return logs


def snapshot(student, method, opt) -> bytes:
    buf = io.BytesIO()
    state = {"s": student.state_dict(), "o": opt.state_dict(), "m": method.state_dict()}
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.parametrize("per_step_decay", [True, False])
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(per_step_decay):
    """Across the teacher's first training epoch (3 > teacher_from 2) and a milestone epoch (3):
    stopped after the first batch of epoch 3, continued from the saved state by fresh objects."""
    steps = [(e, i) for e in range(1, 5) for i in range(2)]
    cut = steps.index((3, 0)) + 1
    whole = build(0, per_step_decay)
    logs = train(*whole, steps)
    first = build(0, per_step_decay)
    head = train(*first, steps[:cut])
    saved = snapshot(*first)
    student, method, opt = build(7, per_step_decay)  # different weights, overwritten
    state = torch.load(io.BytesIO(saved), weights_only=True)
    student.load_state_dict(state["s"])
    opt.load_state_dict(state["o"])
    method.load_state_dict(state["m"])
    tail = train(student, method, opt, steps[cut:])
    for a, b in zip(logs, head + tail, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert snapshot(*whole) == snapshot(student, method, opt)
    assert method.status() == whole[1].status()
    assert all(torch.isfinite(v).all() for log in logs for v in log.values())
    assert whole[1].balance.tau_lr == (0.001 * 0.1 * 0.1 if per_step_decay else 0.001)
    # the teacher trained from epoch 3 on, and its BatchNorm moved from the first batch
    loaded = build(0, per_step_decay)[1].teacher_adv.state_dict()
    trained = method.teacher_adv.state_dict()
    assert all(not torch.equal(v, trained[k]) for k, v in loaded.items() if v.is_floating_point())


def test_bf16_channels_last_steps_keep_the_teacher_fp32():
    ex = Execution("bf16", channels_last=True)
    student, method, opt = build(0, True, ex, width=0.125)  # channels multiples of 8 (oneDNN)
    start = [p.detach().clone() for p in method.teacher_adv.parameters()]
    logs = train(student, method, opt, [(3, 0), (3, 1)])
    t = method.teacher_adv
    assert all(p.dtype == torch.float32 for p in t.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(start, t.parameters(), strict=True))
    conv = next(m for m in t.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(v).all() for log in logs for v in log.values())
