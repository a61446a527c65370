"""SAAD (bmtard/methods/saad.py) against hand-computed values and independent computations: the
entropy and the sample weights, the linearised-teacher attack (exact for a linear teacher), the
loss from fixed adversarial examples, the weight average and its BatchNorm passes, a resumed run,
and its parameters (published per dataset, the protocol's rules)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from test_params_fuzz import QUICK
from torch import nn

from bmtard.config.schema import DistillConfig, OptimConfig, SAADConfig, TrainAttackConfig
from bmtard.core.errors import ParamsError
from bmtard.methods import saad as saad_module
from bmtard.methods.saad import SAAD, renyi_entropy, saad_attack, sample_weights
from bmtard.models import build_model

ATTACK = TrainAttackConfig(eps=8.0, step_size=2.0, steps=3, init="gaussian")


def test_renyi_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # p = (1/4, 3/4), (1/2, 1/2)
    shannon = renyi_entropy(logits, 1.0)
    want = [-(0.25 * math.log(0.25 + 1e-12) + 0.75 * math.log(0.75 + 1e-12)), math.log(2.0)]
    assert shannon.tolist() == pytest.approx(want, rel=1e-6)
    two = renyi_entropy(logits, 2.0)  # -log(sum p^2)
    assert two.tolist() == pytest.approx([-math.log(0.0625 + 0.5625), -math.log(0.5)], rel=1e-6)


def test_sample_weights_by_hand():
    w, w_norm = sample_weights(torch.tensor([2.0, 1.0, 4.0]), 5.0)
    assert w.tolist() == [5.0, 0.0, 15.0]  # 5 (H - min H)
    assert w_norm.tolist() == pytest.approx([5 / (15 + 1e-8), 0.0, 15 / (15 + 1e-8)], rel=1e-7)


class Linear(nn.Module):
    """logits = W flatten(x): its input gradient of class c is W[c], so the linearisation of the
    true class is exact."""

    def __init__(self, d: int, classes: int = 10) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, d, generator=torch.Generator().manual_seed(3)))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()


def test_the_attack_against_a_linear_teacher_is_its_exact_true_class():
    """With a linear teacher the corrected logits are T(x) but for the true class, which is
    T(x')[y] exactly: one PGD step against that target from the same start gives the same x'."""
    torch.manual_seed(0)
    student = build_model("resnet18", 10, 0.0625).eval()
    teacher = Linear(3 * 8 * 8).eval()
    teacher.requires_grad_(False)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 5, 9])
    attack = TrainAttackConfig(eps=8.0, step_size=2.0, steps=1, init="gaussian")
    torch.manual_seed(5)
    got, z_t = saad_attack(student, teacher, x, y, attack)
    assert torch.equal(z_t, teacher(x))

    torch.manual_seed(5)
    start = x + 0.001 * torch.randn_like(x)
    start.requires_grad_(True)
    target = teacher(x).detach().clone()
    rows = torch.arange(4)
    target = target.index_put((rows, y), teacher(start)[rows, y])  # exact for a linear teacher
    kl = F.kl_div(F.log_softmax(student(start), 1), F.softmax(target, 1), reduction="sum")
    (g,) = torch.autograd.grad(kl, start)
    eps, step = 8 / 255, 2 / 255
    want = torch.min(torch.max(start.detach() + step * g.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-6)
    assert (got - x).abs().max() <= eps + 1e-7  # the configured radius (no step/eps swap)


def _saad(student, teacher, **kw) -> SAAD:
    swa = copy.deepcopy(student)
    batches = kw.pop("batches", [(torch.rand(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))])
    return SAAD(teacher, student, swa, ATTACK, lambda epoch: batches, **kw)


def test_the_loss_from_fixed_adversarial_examples(monkeypatch):
    """The loss, computed here from the same forwards with F.kl_div, the entropy and weights as
    the code writes them: mean_i [w_i (KL_i(T(x')||S(x')) + alpha e/E KL_i(dT || dS)) + beta
    (1 - w_norm_i) KL_i(T(x)||S(x))]."""
    torch.manual_seed(0)
    student = build_model("resnet18", 10, 0.0625)
    teacher = build_model("preact_resnet18", 10, 0.0625).eval()
    teacher.requires_grad_(False)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(2))
    x_adv = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))).clamp(
        0, 1
    )
    monkeypatch.setattr(saad_module, "saad_attack", lambda *a, **k: (x_adv, teacher(x).detach()))
    method = _saad(student, teacher, igdm_alpha=10.0, ramp_epochs=4, clean_weight=0.5)
    method.start_epoch(3)
    ref = copy.deepcopy(student).train()  # the same BatchNorm state, forwarded in the same order
    loss, logs = method.batch_loss(student, x, y)

    def kl(s, t):
        return F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="none").sum(1)

    with torch.no_grad():
        d = x_adv - x
        t_adv, t_minus, t_nat = teacher(x_adv), teacher(x - d), teacher(x)
        s_adv, s_minus, s_nat = ref(x_adv), ref(x - d), ref(x)
        p = F.softmax(t_adv, 1)
        h = -(p * torch.log(p + 1e-12)).sum(1)
        w = 5 * (h - h.min())
        w_norm = (w - w.min()) / (w.max() - w.min() + 1e-8)
        igdm = 10.0 * (3 / 4) * kl(s_adv - s_minus, t_adv - t_minus)
        want = (w * (kl(s_adv, t_adv) + igdm) + 0.5 * (1 - w_norm) * kl(s_nat, t_nat)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["loss_igdm"].item() == pytest.approx(igdm.mean().item(), rel=1e-5)
    assert logs["weight"].item() == pytest.approx(w.mean().item(), rel=1e-5)


def test_weight_average_from_its_epoch_with_batchnorm_passes():
    torch.manual_seed(0)
    student = build_model("resnet18", 10, 0.0625)
    teacher = build_model("preact_resnet18", 10, 0.0625).eval()
    method = _saad(student, teacher, swa_from=2, output_choice="swa", final_bn_pass=False)
    method.end_epoch(1)
    assert method.status() == {"swa_n": 0.0}  # before its epoch: nothing averaged
    first = {k: v.clone() for k, v in student.state_dict().items()}
    method.end_epoch(2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    method.end_epoch(3)
    out = method.output()
    assert method.status() == {"swa_n": 2.0}
    for name, _ in student.named_parameters():
        assert torch.allclose(out[name], first[name] + 0.5), name  # the mean of the two
    bn = "bn1.running_mean"
    assert not torch.equal(out[bn], first[bn])  # recomputed over the BatchNorm pass
    assert _saad(student, teacher, swa_from=2).output() is None  # the student by default


def _run(split_after: int | None):
    """Three epochs of two batches, averaging from epoch 2; with ``split_after`` (epochs) the
    method, student and optimizer are rebuilt from their saved state, as on resume."""
    torch.manual_seed(0)
    teacher = build_model("preact_resnet18", 10, 0.0625).eval()
    teacher.requires_grad_(False)
    gen = torch.Generator().manual_seed(9)
    data = [(torch.rand(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen))
            for _ in range(2)]  # fmt: skip

    def build(student):
        method = _saad(student, teacher, swa_from=2, output_choice="swa", batches=data)
        return method, torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    student = build_model("resnet18", 10, 0.0625)
    method, opt = build(student)
    torch.manual_seed(7)
    for epoch in (1, 2, 3):
        if epoch - 1 == split_after:
            saved = copy.deepcopy((method.state_dict(), student.state_dict(), opt.state_dict()))
            rng = torch.get_rng_state()
            student = build_model("resnet18", 10, 0.0625)
            method, opt = build(student)
            method.load_state_dict(saved[0])
            student.load_state_dict(saved[1])
            opt.load_state_dict(saved[2])
            torch.set_rng_state(rng)
        method.start_epoch(epoch)
        for x, y in data:
            loss, _ = method.batch_loss(student, x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            method.after_step()
        method.end_epoch(epoch)
    return method.output()


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit():
    whole = _run(None)
    resumed = _run(2)
    assert whole.keys() == resumed.keys()
    for k in whole:
        assert torch.equal(whole[k], resumed[k]), k


def test_parameters_published_per_dataset_and_the_protocols_rule():
    raw = copy.deepcopy(QUICK["distill"])
    null = OptimConfig(epochs=None, milestones=None, weight_decay=None)
    base = DistillConfig(method="saad", optim=null)
    c10, c100 = base.resolved("cifar10"), base.resolved("cifar100")
    assert (c10.saad.igdm_alpha, c100.saad.igdm_alpha) == (1.0, 10.0)
    assert (c10.optim.epochs, c10.optim.milestones, c10.optim.weight_decay) == (
        200,
        [100, 150],
        2e-4,
    )
    assert SAADConfig(igdm_alpha=3.0).resolved("cifar10", "resnet18").igdm_alpha == 3.0
    with pytest.raises(ParamsError, match=r"^saad\.output = swa with checkpoint best: .*last"):
        DistillConfig(method="saad", saad=SAADConfig(output="swa"))
    DistillConfig(method="saad", saad=SAADConfig(output="swa"), checkpoint="last")
    DistillConfig(method="bmtard", saad=SAADConfig(output="swa"))  # another method's: not checked
    assert raw["saad"]["swa_from"] == 1  # the quick preset scales the published 95 of 200
