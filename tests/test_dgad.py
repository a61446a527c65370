"""DGAD (bmtard.methods.dgad): the label swaps and the loss by hand, the loss and its gradients
against an official-style reference (boolean indexing, Python floats) bit for bit, the fixed
divisor, the MobileNetV2 bracket bug, the all-ST batch and its guard, the forwards (AdaAD's
attack, then x and x'), and a few training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.dgad import DGAD, swap_adversarial, swap_clean
from bmtard.models import build_model

from method_helpers import Record, kl_sum, softmax

ATTACK = TrainAttackConfig(steps=2)


def method(**kw) -> DGAD:
    return DGAD(nn.Identity(), ATTACK, **kw)  # loss_from_logits uses no network


# a batch of two, three classes: row 0 the teacher gets right on x, row 1 it gets wrong (ST);
# on x' it gets row 0 wrong (0.5 < 1.0) and row 1 right
T_NAT = [[3.0, 0.0, -1.0], [1.0, 2.0, 0.0]]
T_ADV = [[0.5, 1.0, -1.0], [2.0, 1.0, 0.0]]
S_NAT = [[0.5, -1.0, 2.0], [1.0, 1.5, -2.0]]
S_ADV = [[0.0, 1.0, 0.5], [-1.0, 0.0, 1.0]]
Y = [0, 0]


def tensors():
    return [torch.tensor(v) for v in (S_NAT, S_ADV, T_NAT, T_ADV)] + [torch.tensor(Y)]


def test_the_label_swaps_by_hand():
    t_nat, t_adv, y = torch.tensor(T_NAT), torch.tensor(T_ADV), torch.tensor(Y)
    st = t_nat.argmax(1) != y
    assert st.tolist() == [False, True]
    # ST row 1: the true class (0) and the argmax (1) change places
    assert swap_clean(t_nat, y, st, t_nat.max(1).indices).tolist() == [
        [3.0, 0.0, -1.0],
        [2.0, 1.0, 0.0],
    ]
    # row 0's true logit 0.5 is below the largest other (1.0): they change places
    assert swap_adversarial(t_adv, y).tolist() == [[1.0, 0.5, -1.0], [2.0, 1.0, 0.0]]
    assert t_nat.tolist() == T_NAT and t_adv.tolist() == T_ADV  # the inputs are not modified


def hand(bs: float, bracket: bool, beta: float = 1.0) -> dict[str, float]:
    n = 1  # row 1 is the only ST sample
    l_st = kl_sum(softmax([2.0, 1.0, 0.0]), softmax(S_NAT[1])) / (n + 1e-10)
    l_at = kl_sum(softmax([1.0, 0.5, -1.0]), softmax(S_ADV[0])) / (2 - n)
    pcr = (
        sum(
            (a - b) ** 2
            for za, zn in zip(S_ADV, S_NAT, strict=True)
            for a, b in zip(softmax(za), softmax(zn), strict=True)
        )
        / 6
    )
    if bracket:
        loss = 0.5 * ((n / bs) * l_st + (bs - n) / bs) * l_at + beta * pcr
    else:
        loss = (n / bs) * l_st + ((bs - n) / bs) * l_at + beta * pcr
    return {"loss": loss, "loss_st": l_st, "loss_at": l_at, "loss_pcr": pcr, "st_fraction": 0.5}


@pytest.mark.parametrize(
    ("kw", "bs"),
    [({}, 128), ({"fixed_divisor": False}, 2), ({"batch_size": 64, "beta": 2.5}, 64)],
)
@pytest.mark.parametrize("bracket", [False, True])
def test_loss_by_hand(kw, bs, bracket):
    loss, logs = method(bracket_bug=bracket, **kw).loss_from_logits(*tensors())
    want = hand(bs, bracket, kw.get("beta", 1.0))
    assert logs.keys() == want.keys()
    for k, v in want.items():
        assert logs[k].item() == pytest.approx(v, rel=1e-6), k
    assert loss.item() == logs["loss"].item()


def reference(z_nat, z_adv, t_nat, t_adv, y, bs, beta, bracket):
    """The official branch as described, written as that code writes it: in-place swaps through
    boolean masks, n_ST as a Python float, the divisors and weights as Python floats."""
    t_nat, t_adv = t_nat.clone(), t_adv.clone()
    lam = torch.zeros(len(y))
    st = torch.argmax(t_nat, dim=1) != y
    lam[st] = 1.0
    n = lam.sum().item()
    true = torch.gather(t_nat, 1, y[:, None]).squeeze(1)
    top, top_idx = torch.max(t_nat, dim=1)
    t_nat[st, y[st]] = top[st]
    t_nat[st, top_idx[st]] = true[st]
    correct = torch.gather(t_adv, 1, y[:, None]).squeeze(1)
    other, other_idx = torch.max(t_adv.scatter(1, y[:, None], -float("inf")), dim=1)
    wrong = (correct - other) < 0
    t_adv[wrong, y[wrong]] = other[wrong]
    t_adv[wrong, other_idx[wrong]] = correct[wrong]

    def kl(z, t):
        return F.kl_div(F.log_softmax(z, dim=1), F.softmax(t, dim=1), reduction="none").sum(dim=1)

    l_st = (1 / (n + 1e-10)) * torch.sum(lam * kl(z_nat, t_nat))
    l_at = (1 / (len(y) - n)) * torch.sum((1 - lam) * kl(z_adv, t_adv))
    pcr = F.mse_loss(F.softmax(z_adv, dim=1), F.softmax(z_nat, dim=1))
    if bracket:
        return 0.5 * ((n / bs) * l_st + ((bs - n) / bs)) * l_at + beta * pcr
    return (n / bs) * l_st + ((bs - n) / bs) * l_at + beta * pcr


def random_batch(seed: int, b: int = 12, k: int = 10):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (b,), generator=gen)
    t_nat, t_adv = 3 * torch.randn(b, k, generator=gen), 3 * torch.randn(b, k, generator=gen)
    rows = torch.arange(b)
    t_nat[rows[::2], y[::2]] += 10.0  # the teacher right on half the clean images
    t_adv[rows[::3], y[::3]] += 10.0
    z_nat, z_adv = torch.randn(b, k, generator=gen), torch.randn(b, k, generator=gen)
    return z_nat, z_adv, t_nat, t_adv, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("bracket", "fixed"), [(False, True), (True, True), (False, False)])
def test_equals_the_official_style_reference_bit_for_bit(seed, bracket, fixed):
    z_nat, z_adv, t_nat, t_adv, y = random_batch(seed)
    n_st = (t_nat.argmax(1) != y).sum().item()
    assert 0 < n_st < len(y)
    ours_in = [z_nat.clone().requires_grad_(), z_adv.clone().requires_grad_()]
    ref_in = [z_nat.clone().requires_grad_(), z_adv.clone().requires_grad_()]
    dgad = method(batch_size=128, beta=0.7, fixed_divisor=fixed, bracket_bug=bracket)
    loss, _ = dgad.loss_from_logits(*ours_in, t_nat, t_adv, y)
    bs = 128 if fixed else len(y)
    ref = reference(*ref_in, t_nat, t_adv, y, bs, 0.7, bracket)
    assert torch.equal(loss, ref)
    grads, ref_grads = torch.autograd.grad(loss, ours_in), torch.autograd.grad(ref, ref_in)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.equal(a, b)


def test_the_consistency_term_is_live_on_both_branches():
    """With no ST sample, S(x) enters only through the PCR term, which still sends it a
    gradient (the official code detaches neither softmax)."""
    z_nat, z_adv, t_nat, t_adv, y = random_batch(0)
    y = t_nat.argmax(1)  # the teacher right everywhere: n_ST = 0
    z_nat.requires_grad_()
    z_adv.requires_grad_()
    loss, logs = method().loss_from_logits(z_nat, z_adv, t_nat, t_adv, y)
    assert logs["loss_st"].item() == 0 and logs["st_fraction"].item() == 0
    g_nat, g_adv = torch.autograd.grad(loss, [z_nat, z_adv])
    assert g_nat.abs().max() > 0 and g_adv.abs().max() > 0


def test_an_all_st_batch_is_guarded_or_nan():
    """The official code divides 1 by len - n_ST = 0.0 as Python floats (ZeroDivisionError);
    our guard makes L_AT 0 (an empty sum); without it, 0 * inf = NaN."""
    z_nat, z_adv, t_nat, t_adv, y = random_batch(3, b=4)
    y = (t_nat.argmax(1) + 1) % t_nat.shape[1]  # the teacher wrong everywhere
    loss, logs = method(batch_size=128).loss_from_logits(z_nat, z_adv, t_nat, t_adv, y)
    assert torch.isfinite(loss) and logs["loss_at"].item() == 0
    assert logs["st_fraction"].item() == 1
    expected = 4 / 128 * logs["loss_st"].item() + logs["loss_pcr"].item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss, logs = method(guard_all_st=False).loss_from_logits(z_nat, z_adv, t_nat, t_adv, y)
    assert torch.isnan(loss) and torch.isnan(logs["loss_at"])
    with pytest.raises(ZeroDivisionError):  # what the official code does
        reference(z_nat, z_adv, t_nat, t_adv, y, 128, 1.0, False)


def test_the_attack_is_adaads_and_the_student_runs_on_x_then_x_adv():
    torch.manual_seed(0)
    student = Record(build_model("resnet18", 10, 0.0625))
    teacher = Record(build_model("preact_resnet18", 10, 0.0625).eval().requires_grad_(False))
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    DGAD(teacher, ATTACK).batch_loss(student, x, y)
    attack, train = student.seen[: ATTACK.steps], student.seen[ATTACK.steps :]
    assert not any(mode for mode, _ in attack) and all(mode for mode, _ in train)
    # the teacher is in the attack's loop (AdaAD's), then sees x and x' for the loss
    assert len(teacher.seen) == ATTACK.steps + 2
    for (_, a), (_, b) in zip(attack, teacher.seen[: ATTACK.steps], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(train[0][1], x) and not torch.equal(train[1][1], x)
    assert torch.equal(teacher.seen[-2][1], x) and torch.equal(teacher.seen[-1][1], train[1][1])


def test_a_small_batch_size_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        DGAD(nn.Identity(), ATTACK, batch_size=0)
