"""IGDM on a base method (bmtard.methods.igdm): the term by hand, AdaAD + IGDM against the
official script's structure bit for bit (every forward, in its order), the forward order on every
base, the unclamped x - gamma d and its switch, the unclamped ramp, the state and hooks passed
through to the base (a resumed B-MTARD + IGDM run equals an uninterrupted one bit for bit), and a
few training steps on each base."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.config.schema import BalanceConfig, TrainAttackConfig
from bmtard.methods.adaad import AdaAD, adaad_attack
from bmtard.methods.ard import ARD
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance, MTARDWeights
from bmtard.methods.decays import StepDecay
from bmtard.methods.igdm import IGDM, igdm_order, igdm_term
from bmtard.methods.mtard import MTARD
from bmtard.methods.rslad import RSLAD
from bmtard.models import build_model
from bmtard.runtime.execution import Execution

from method_helpers import Record, softmax

ATTACK = TrainAttackConfig(steps=2)
ATTACK_ARD = TrainAttackConfig(steps=2, init="uniform_unclamped")
BALANCE = BalanceConfig(tau_lr=0.05, weight_lr=0.1)


def tiny(arch: str = "resnet18") -> nn.Module:
    return build_model(arch, 10, 0.0625)


def frozen(arch: str = "preact_resnet18") -> nn.Module:
    return tiny(arch).eval().requires_grad_(False)


def test_the_term_by_hand():
    """KL_batchmean(softmax(T+ - T-) || softmax(S+ - S-)): the softmax of the differences."""
    s_plus, s_minus = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], [[0.0, 0.5, -1.0], [0.0, 1.0, 1.0]]
    t_plus, t_minus = [[2.0, -1.0, 0.0], [1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]]
    got = igdm_term(*(torch.tensor(v) for v in (s_plus, s_minus, t_plus, t_minus)))
    total = 0.0
    for sp, sm, tp, tm in zip(s_plus, s_minus, t_plus, t_minus, strict=True):
        p = softmax([a - b for a, b in zip(tp, tm, strict=True)])
        q = softmax([a - b for a, b in zip(sp, sm, strict=True)])
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
    assert got.item() == pytest.approx(total / 2, rel=1e-6)


def test_the_forward_order_brackets_the_clean_forward():
    assert igdm_order(AdaAD.FORWARDS) == ("plus", "nat", "minus", "adv")  # the official order
    for base in (ARD, RSLAD, BMTARD):
        assert igdm_order(base.FORWARDS) == ("adv", "plus", "nat", "minus")
    with pytest.raises(ValueError, match="clean forward"):
        igdm_order(("adv",))


def official_adaad_igdm_step(student, teacher, x, opt, epoch, alpha, beta, gamma):
    """One step of the official AdaAD + IGDM structure, as described: the AdaAD attack; the
    teacher (no_grad) on x + beta d, x, x - gamma d; the student (train) on x + beta d, x,
    x - gamma d; the IGDM term; the student on x'; the teacher on x'; (1/B) * sum KL terms;
    1 * KL_adv + 0 * KL_nat + alpha * (epoch / 200) * L_IGDM."""
    x_adv = adaad_attack(student, teacher, x, ATTACK)
    student.train()
    opt.zero_grad()
    with torch.no_grad():
        delta = x_adv - x
        t_plus, t_x, t_minus = teacher(x + beta * delta), teacher(x), teacher(x - gamma * delta)
    s_plus, s_x, s_minus = student(x + beta * delta), student(x), student(x - gamma * delta)
    ours = F.kl_div(
        F.log_softmax(s_plus - s_minus, dim=1),
        F.softmax(t_plus - t_minus, dim=1),
        reduction="batchmean",
    )
    s_adv = student(x_adv)
    with torch.no_grad():
        t_adv = teacher(x_adv)

    def kl(z_s, z_t):
        elem = F.kl_div(F.log_softmax(z_s, dim=1), F.softmax(z_t, dim=1), reduction="none")
        return (1 / len(z_s)) * torch.sum(elem)

    loss = 1 * kl(s_adv, t_adv) + (1 - 1) * kl(s_x, t_x) + alpha * (epoch / 200) * ours
    loss.backward()
    opt.step()
    return loss.item(), ours.item()


def test_adaad_igdm_equals_the_official_structure_bit_for_bit():
    """Same losses and same weights and BatchNorm statistics after 4 steps over 2 epochs: the
    same forwards in the same order (each moves BatchNorm's running statistics)."""
    torch.manual_seed(0)
    student0, teacher = tiny(), frozen()
    alpha, beta, gamma = 20.0, 1.0, 1.0
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(6, 3, 8, 8, generator=gen), torch.randint(0, 10, (6,))) for _ in range(4)]

    def run(ours: bool):
        student = copy.deepcopy(student0)
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        base = AdaAD(teacher, ATTACK, alpha=1.0, kl_reduction="batchmean")
        method = IGDM(base, teacher, alpha, beta, gamma, ramp_epochs=200)
        torch.manual_seed(5)
        trace = []
        for i, (x, y) in enumerate(data):
            epoch = 1 + i // 2
            if ours:
                if i % 2 == 0:
                    method.start_epoch(epoch)
                loss, logs = method.batch_loss(student, x, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                trace.append((loss.item(), logs["loss_igdm"].item()))
            else:
                trace.append(official_adaad_igdm_step(student, teacher, x, opt, epoch, *(
                    alpha, beta, gamma)))  # fmt: skip
        return trace, student.state_dict()

    (ours, s_ours), (ref, s_ref) = run(True), run(False)
    assert ours == ref
    for k, v in s_ref.items():
        assert torch.equal(s_ours[k], v), k


BASES = {
    "ard": lambda t_adv, t_nat, ex: ARD(t_adv, ATTACK_ARD, execution=ex),
    "rslad": lambda t_adv, t_nat, ex: RSLAD(t_adv, ATTACK, execution=ex),
    "mtard": lambda t_adv, t_nat, ex: MTARD(
        t_adv, t_nat, ATTACK, MTARDWeights.start(lr=0.1), execution=ex
    ),
    "bmtard": lambda t_adv, t_nat, ex: BMTARD(
        t_adv, t_nat, ATTACK, Balance.from_config(BALANCE), execution=ex
    ),
    "adaad": lambda t_adv, t_nat, ex: AdaAD(t_adv, ATTACK, execution=ex),
}


@pytest.mark.parametrize("name", sorted(BASES))
def test_the_student_forwards_in_train_mode_on_every_base(name):
    """After the base's own attack: IGDM's x + beta d right before the clean forward, x - gamma d
    right after it; x - gamma d unclamped (x = 0 makes it negative)."""
    torch.manual_seed(0)
    student, t_adv, t_nat = Record(tiny()), frozen(), frozen("resnet18")
    method = IGDM(BASES[name](t_adv, t_nat, Execution()), t_adv, alpha=1.0, beta=0.5, gamma=2.0)
    method.start_epoch(1)
    x, y = torch.zeros(4, 3, 8, 8), torch.randint(0, 10, (4,))
    x[:, :, :4] = 0.5
    method.batch_loss(student, x, y)
    assert len(student.seen) == ATTACK.steps + 4
    crafting, loss_forwards = student.seen[: ATTACK.steps], student.seen[ATTACK.steps :]
    assert all(mode == (name == "ard") for mode, _ in crafting)  # ARD crafts in train mode
    assert all(mode for mode, _ in loss_forwards)
    inputs = [seen for _, seen in loss_forwards]
    x_adv = inputs[igdm_order(method.base.FORWARDS).index("adv")]
    delta = x_adv - x
    expected = {"adv": x_adv, "nat": x, "plus": x + 0.5 * delta, "minus": x - 2.0 * delta}
    assert len(inputs) == 4
    for got, which in zip(inputs, igdm_order(method.base.FORWARDS), strict=True):
        assert torch.equal(got, expected[which]), which
    assert delta.abs().max() > 0 and expected["minus"].min() < 0  # not clamped


def test_clamp_minus_clamps_only_x_minus():
    torch.manual_seed(0)
    student, teacher = Record(tiny()), frozen()
    method = IGDM(AdaAD(teacher, ATTACK), teacher, 1.0, clamp_minus=True)
    method.start_epoch(1)
    x = torch.zeros(4, 3, 8, 8)
    method.batch_loss(student, x, torch.randint(0, 10, (4,)))
    plus, nat, minus, adv = [seen for _, seen in student.seen[ATTACK.steps :]]
    assert torch.equal(nat, x) and torch.equal(plus, x + (adv - x))
    assert minus.min() >= 0 and torch.equal(minus, (x - (adv - x)).clamp(0, 1))


@pytest.mark.parametrize("epoch", [1, 100, 300])
def test_the_ramp_is_epoch_over_ramp_epochs_and_not_clamped(epoch):
    torch.manual_seed(0)
    teacher = frozen()
    method = IGDM(RSLAD(teacher, ATTACK), teacher, alpha=20.0, ramp_epochs=200)
    method.start_epoch(epoch)
    assert method.status() == {"igdm_ramp": epoch / 200}  # 1.5 at epoch 300: no clamp at 1
    loss, logs = method.batch_loss(tiny(), torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert logs["loss"].item() == loss.item()
    assert loss.item() == pytest.approx(
        logs["loss_base"].item() + 20.0 * epoch / 200 * logs["loss_igdm"].item(), rel=1e-6
    )
    assert logs["loss_base"].item() == pytest.approx(
        5 / 6 * logs["loss_adv"].item() + 1 / 6 * logs["loss_nat"].item(), rel=1e-6
    )


def test_batch_loss_before_start_epoch_is_refused():
    teacher = frozen()
    method = IGDM(AdaAD(teacher, ATTACK), teacher, 1.0)
    with pytest.raises(RuntimeError, match="start_epoch"):
        method.batch_loss(tiny(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))


def test_hooks_pass_through_to_the_base():
    calls = []

    class Hooked(AdaAD):
        def start_epoch(self, epoch):
            calls.append(("start", epoch))

        def after_step(self):
            calls.append(("step",))

        def end_epoch(self, epoch):
            calls.append(("end", epoch))

        def networks(self):
            return {"peer": self.teacher}

    teacher = frozen()
    method = IGDM(Hooked(teacher, ATTACK), teacher, 1.0)
    method.start_epoch(3)
    method.after_step()
    method.end_epoch(3)
    assert calls == [("start", 3), ("step",), ("end", 3)]
    assert method.networks() == {"peer": teacher} and method.epoch == 3


def bmtard_igdm_run(data, split_after: int | None):
    """B-MTARD + IGDM over 2 epochs of 2 batches; with ``split_after``, the method, student,
    optimizer and random state are saved after that many steps and restored into new ones."""
    torch.manual_seed(0)
    student, t_adv, t_nat = tiny(), frozen(), frozen("resnet18")
    with torch.no_grad():
        t_nat.linear.weight.mul_(20.0)  # a confident clean teacher: tau moves

    def build(student):
        base = BMTARD(
            t_adv, t_nat, ATTACK, Balance.from_config(BALANCE), rates=StepDecay((1,), 0.1)
        )
        opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        return IGDM(base, t_adv, alpha=5.0, ramp_epochs=2), opt

    method, opt = build(student)
    torch.manual_seed(7)
    trace = []
    for i, (x, y) in enumerate(data):
        if i == split_after:
            saved = copy.deepcopy(
                (method.state_dict(), student.state_dict(), opt.state_dict(), torch.get_rng_state())
            )
            student = tiny()
            method, opt = build(student)
            method.load_state_dict(saved[0])
            student.load_state_dict(saved[1])
            opt.load_state_dict(saved[2])
            torch.set_rng_state(saved[3])
        if i % 2 == 0 or i == split_after:  # the loop's call, also for a resumed epoch
            method.start_epoch(1 + i // 2)
        loss, logs = method.batch_loss(student, x, y)  # the rates x 0.1 in epoch 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step()
        trace.append({**{k: v.item() for k, v in logs.items()}, **method.status()})
    return trace, student.state_dict()


@pytest.mark.parametrize("split_after", [1, 2])
def test_a_resumed_bmtard_igdm_run_equals_an_uninterrupted_one(split_after):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(6, 3, 8, 8, generator=gen), torch.randint(0, 10, (6,))) for _ in range(4)]
    whole, s_whole = bmtard_igdm_run(data, None)
    resumed, s_resumed = bmtard_igdm_run(data, split_after)
    assert resumed == whole
    assert len({t["tau_nat"] for t in whole}) > 1  # the base's state moved
    assert [t["igdm_ramp"] for t in whole] == [0.5, 0.5, 1.0, 1.0]
    for k, v in s_whole.items():
        assert torch.equal(s_resumed[k], v), k


def test_the_state_is_the_bases():
    teacher = frozen()
    base = BMTARD(teacher, frozen("resnet18"), ATTACK, Balance.from_config(BALANCE))
    method = IGDM(base, teacher, 1.0)
    assert method.state_dict().keys() == base.state_dict().keys()
    assert method.status() == {**base.status(), "igdm_ramp": 0.0}
