"""AdaAD (bmtard.methods.adaad): the attack against a reference written from the official
description, its quirks (the unclamped start, the gradient through the teacher, the zero-weight
clean forward), the loss by hand in both reductions, bf16, and a few training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.adaad import AdaAD, adaad_attack
from bmtard.models import build_model
from bmtard.runtime.execution import Execution

from method_helpers import Constant, Record, kl_sum, softmax

ATTACK = TrainAttackConfig(steps=3)  # eps 8/255, step 2/255, the 0.001-Gaussian start
EPS, STEP = 8 / 255, 2 / 255


class Linear(nn.Module):
    """Logits linear in the input (a model whose input gradient is never zero)."""

    def __init__(self, pixels: int, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, pixels, generator=gen))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t()


def reference_attack(student, teacher, x, steps):
    """The official attack as described: both in eval, x + 0.001 N(0, I) unclamped, steps of
    sign-gradient ascent on the summed KL(T(x') || S(x')) through both, projection, clamp."""
    student.eval()
    teacher.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(
            F.log_softmax(student(x_adv), dim=1), F.softmax(teacher(x_adv), dim=1), reduction="none"
        )
        (grad,) = torch.autograd.grad(kl.sum(), x_adv)
        x_adv = x_adv.detach() + STEP * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0, 1)
    return x_adv


def test_attack_equals_the_reference_bit_for_bit():
    torch.manual_seed(0)
    student = build_model("resnet18", 10, 0.0625)
    teacher = build_model("preact_resnet18", 10, 0.0625).requires_grad_(False)
    x = torch.rand(4, 3, 8, 8)
    torch.manual_seed(3)
    ours = adaad_attack(student, teacher, x, ATTACK)
    torch.manual_seed(3)
    ref = reference_attack(student, teacher, x, ATTACK.steps)
    assert torch.equal(ours, ref)
    assert not student.training and not teacher.training  # both attacked in eval mode
    assert (ours - x).abs().max() <= EPS + 1e-7 and ours.min() >= 0 and ours.max() <= 1


def test_the_attack_gradient_flows_through_the_teacher():
    """With a student whose logits ignore the input, only the teacher's input gradient moves x'
    (the frozen teacher's parameters get none)."""
    x = torch.full((2, 3, 4, 4), 0.5)
    teacher = Linear(3 * 4 * 4).requires_grad_(False)
    x_adv = adaad_attack(Constant([0.5, -1.0, 2.0]), teacher, x, ATTACK)
    # every pixel moved by at least one step of 2/255 (beyond the 0.001-Gaussian start)
    assert (x_adv - x).abs().min() > STEP - 0.003
    assert teacher.weight.grad is None

    class Detached(nn.Module):  # the same teacher, cut from the graph
        def forward(self, x):
            with torch.no_grad():
                return teacher(x)

    still = adaad_attack(Constant([0.5, -1.0, 2.0]), Detached(), x, ATTACK)
    assert (still - x).abs().max() < 0.01  # only the 0.001-Gaussian start: no gradient


def test_the_start_is_not_clamped_and_both_networks_run_in_eval_mode():
    student, teacher = Record(Constant([0.0, 1.0, 2.0])), Record(Linear(3 * 4 * 4))
    teacher.requires_grad_(False)
    student.train()
    x = torch.zeros(2, 3, 4, 4)
    x_adv = adaad_attack(student, teacher, x, ATTACK)
    assert student.seen[0][1].min() < 0 and teacher.seen[0][1].min() < 0  # x + 0.001 N, unclamped
    assert torch.equal(student.seen[0][1], teacher.seen[0][1])  # both on the same x'
    assert len(student.seen) == len(teacher.seen) == ATTACK.steps
    assert not any(mode for mode, _ in student.seen + teacher.seen)
    assert x_adv.min() >= 0


def test_the_student_runs_on_x_then_x_adv_in_train_mode_even_at_alpha_one():
    """The official order: S(x), then S(x'); the clean forward runs (and moves BatchNorm's
    statistics) although its term has weight 0."""
    student = Record(build_model("resnet18", 10, 0.0625))
    teacher = build_model("resnet18", 10, 0.0625).eval().requires_grad_(False)
    x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
    running = student.inner.bn1.running_mean.clone()
    method = AdaAD(teacher, ATTACK, alpha=1.0)
    loss, logs = method.batch_loss(student, x, y)
    train = [seen for mode, seen in student.seen if mode]
    assert len(student.seen) == ATTACK.steps + 2 and len(train) == 2
    assert not any(mode for mode, _ in student.seen[: ATTACK.steps])  # the attack: eval
    assert torch.equal(train[0], x)  # the clean forward first
    assert not torch.equal(train[1], x) and (train[1] - x).abs().max() <= EPS + 1e-7
    assert not torch.equal(student.inner.bn1.running_mean, running)
    assert loss.item() == logs["loss_adv"].item()  # alpha = 1: only the adversarial term


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_loss_by_hand(reduction, alpha):
    t, s_nat, s_adv = [3.0, 0.0, -1.0], [0.5, -1.0, 2.0], [1.0, 1.5, -2.0]
    method = AdaAD(Constant(t).eval(), ATTACK, alpha=alpha, kl_reduction=reduction)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    logits = {
        "nat": torch.tensor([s_nat] * 4),
        "adv": torch.tensor([s_adv] * 4),
    }
    loss, logs = method.loss_from({"x": x, "y": y, "x_adv": x}, logits)
    div = 3 if reduction == "mean" else 1  # over B x C, or (1/B) * the sum
    kl_adv = kl_sum(softmax(t), softmax(s_adv)) / div
    kl_nat = kl_sum(softmax(t), softmax(s_nat)) / div
    assert logs["loss_adv"].item() == pytest.approx(kl_adv, rel=1e-6)
    assert logs["loss_nat"].item() == pytest.approx(kl_nat, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * kl_adv + (1 - alpha) * kl_nat, rel=1e-6)


def test_batch_loss_by_hand_with_constant_models():
    t, s = [3.0, 0.0, -1.0], [0.5, -1.0, 2.0]
    method = AdaAD(Constant(t).eval(), ATTACK, kl_reduction="batchmean")
    loss, _ = method.batch_loss(Constant(s), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert loss.item() == pytest.approx(kl_sum(softmax(t), softmax(s)), rel=1e-6)


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="kl_reduction"):
        AdaAD(Constant([0.0, 1.0]), ATTACK, kl_reduction="sum")


def tiny(arch: str = "resnet18") -> nn.Module:
    return build_model(arch, 10, 0.0625)


def test_bf16_attack_runs_the_teacher_in_its_dtype_with_a_gradient():
    ex = Execution(precision="bf16")
    teacher = ex.teacher(Linear(3 * 4 * 4))
    assert teacher.weight.dtype == torch.bfloat16
    x = torch.full((2, 3, 4, 4), 0.5)
    x_adv = adaad_attack(Constant([0.5, -1.0, 2.0]), teacher, x, ATTACK, ex)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().min() > STEP - 0.003  # the gradient came through the bf16 teacher
