"""PeerAiD (bmtard.methods.peeraid): its losses by hand, the attack against a reference, which
forwards run in which mode and order, where the gradient flows (each quirk and its switch), the
peer's optimizer, the weight average and its BatchNorm pass, a run continued from a saved state
equal bit for bit to an uninterrupted one across the start of the averaging, and a few real
training steps."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.config import method_table
from bmtard.config.schema import OptimConfig, TrainAttackConfig
from bmtard.core.errors import BmtardError
from bmtard.methods.decays import lr_factor
from bmtard.methods.peeraid import (
    OFFICIAL_SWA_FROM,
    PUBLISHED,
    PeerAiD,
    average_into,
    recompute_batch_norm,
)
from bmtard.models import build_model
from bmtard.runtime.execution import Execution
from bmtard.training.loop import Parts, fit, make_optimizer

from method_helpers import Constant, softmax

ATTACK = TrainAttackConfig(steps=2)
# fixed inputs, whatever the random state at collection (the reference checks are within rounding)
X = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
Y = torch.tensor([0, 2, 1, 2])


class Linear(nn.Module):
    """logits = W flatten(x) + b: the logits of x and x' differ, and gradients are easy to check."""

    def __init__(self, n_in: int = 3 * 8 * 8, classes: int = 3, scale: float = 3.0) -> None:
        super().__init__()
        self.fc = nn.Linear(n_in, classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x):
        return self.fc(x.flatten(1))


def method(student, peer, **kw) -> PeerAiD:
    kw.setdefault("attack", ATTACK)
    return PeerAiD(student, peer, lr_at=lambda e: 0.1, bn_batches=lambda e: [], **kw)


def kl_mean(p: list[float], q: list[float]) -> float:
    """nn.KLDivLoss()'s mean over classes of p (log p - log q): one image."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True)) / len(p)


def ce(z: list[float], y: list[int]) -> float:
    return sum(-math.log(softmax(z)[c]) for c in y) / len(y)


S, P = [0.5, -1.0, 2.0], [3.0, 0.0, -1.0]
W = {"temperature": 2.0, "peer_temperature": 1.5, "gamma1": 0.7, "gamma2": 0.3}
L = {"lambda1": 0.2, "lambda2": 0.5, "lambda3": 0.9}


def test_published_settings_are_the_configuration_layers():
    assert PUBLISHED == method_table.PEERAID
    assert PUBLISHED["cifar10"]["gamma2"] == 0.1 and PUBLISHED["cifar100"]["gamma2"] == 1.0
    assert OFFICIAL_SWA_FROM == 215  # the official 0-based epoch 214


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_losses_by_hand(reduction):
    """Constant models: z_p = P and z_s1 = z_s = z_n = S whatever the attack does."""
    m = method(Constant(S), Constant(P), kl_reduction=reduction, **W, **L)
    loss, logs = m.batch_loss(m.student, X, Y)
    t, tr, y = W["temperature"], W["peer_temperature"], Y.tolist()
    scale = len(S) if reduction == "batchmean" else 1  # 'mean' is the batch-mean KL / C
    peer_kl = scale * kl_mean(softmax([v / tr for v in S]), softmax([v / tr for v in P]))
    kl_peer = scale * kl_mean(softmax([v / t for v in P]), softmax([v / t for v in S]))
    assert logs["peer_ce"].item() == pytest.approx(ce(P, y), rel=1e-6)
    assert logs["peer_kl"].item() == pytest.approx(peer_kl, rel=1e-5)
    assert logs["student_ce"].item() == pytest.approx(ce(S, y), rel=1e-6)
    assert logs["student_kl_peer"].item() == pytest.approx(kl_peer, rel=1e-5)
    assert logs["student_kl_clean"].item() == pytest.approx(0.0, abs=1e-7)  # z_n = z_s here
    l_peer = 0.7 * ce(P, y) + 0.3 * tr * tr * peer_kl
    l_student = 0.2 * ce(S, y) + 0.5 * t * t * kl_peer
    assert logs["loss_peer"].item() == pytest.approx(l_peer, rel=1e-5)
    assert logs["loss_student"].item() == pytest.approx(l_student, rel=1e-5)
    assert loss.item() == pytest.approx(l_peer + l_student, rel=1e-5)
    argmax_p, argmax_s = P.index(max(P)), S.index(max(S))
    assert logs["peer_adv_acc"].item() == sum(c == argmax_p for c in y) / 4
    assert logs["student_adv_acc"].item() == sum(c == argmax_s for c in y) / 4
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())


class Recorder(nn.Module):
    """A linear model that records (name, train mode, grad enabled, input) at every forward."""

    def __init__(self, name: str, calls: list, scale: float = 3.0) -> None:
        super().__init__()
        self.name, self.calls, self.net = name, calls, Linear(scale=scale)

    def forward(self, x):
        self.calls.append((self.name, self.training, torch.is_grad_enabled(), x.detach().clone()))
        return self.net(x)


@pytest.mark.parametrize("second", [True, False])
def test_forwards_in_the_official_order_and_modes(second):
    calls = []
    student, peer = Recorder("student", calls), Recorder("peer", calls)
    m = method(student, peer, second_student_forward=second)
    m.batch_loss(student, X, Y)
    seen = [(n, tr, g) for n, tr, g, _ in calls]
    steps = ATTACK.steps
    train_student = [("student", True, True)] * (3 if second else 2)
    expected = [("peer", False, False)] + [("student", False, True)] * steps
    expected += [("peer", True, True)] + train_student
    assert seen == expected
    x_adv = calls[1 + steps][3]
    assert torch.equal(calls[0][3], X)  # the peer's target: the clean x
    for _, _, _, x_in in calls[1 + steps : -1]:
        assert torch.equal(x_in, x_adv)  # the peer and the student (once or twice) on x'
    assert torch.equal(calls[-1][3], X)  # the clean logits z_n
    assert not torch.equal(x_adv, X)
    assert (x_adv - X).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert student.training and peer.training


def test_attack_is_the_summed_kl_to_the_peers_clean_prediction():
    calls = []
    student, peer = Recorder("student", calls), Recorder("peer", calls)
    torch.manual_seed(3)
    method(student, peer).batch_loss(student, X, Y)
    x_adv = calls[1 + ATTACK.steps][3]
    # the reference: LinfPeerAttack as described, written out
    torch.manual_seed(3)
    with torch.no_grad():
        p = F.softmax(peer.net(X), dim=1)
    eps, step = 8 / 255, 2 / 255
    xa = X + 0.001 * torch.randn_like(X)  # not clamped before the first step
    for _ in range(ATTACK.steps):
        xa.requires_grad_(True)
        log_q = F.log_softmax(student.net(xa), dim=1)
        objective = (p * (torch.log(p) - log_q)).sum()
        (g,) = torch.autograd.grad(objective, xa)
        xa = torch.min(torch.max(xa.detach() + step * g.sign(), X - eps), X + eps).clamp(0, 1)
    assert torch.equal(x_adv, xa)


def reference_loss(student, peer, x, x_adv, y, *, live_s1=True, live_n=True, **kw):
    """L_peer + L_student written out from the equations, on the linear models."""
    t, tr = kw["temperature"], kw["peer_temperature"]
    z_p, z_s, z_n = peer.net(x_adv), student.net(x_adv), student.net(x)
    s1 = z_s if live_s1 else z_s.detach()
    n = z_n if live_n else z_n.detach()

    def kl(p, log_q):  # mean over B x C of p (log p - log q)
        return (p * (torch.log(p) - log_q)).mean()

    log_p = F.log_softmax(z_p / tr, dim=1)
    l_peer = kw["gamma1"] * F.cross_entropy(z_p, y) + kw["gamma2"] * tr**2 * kl(
        F.softmax(s1 / tr, dim=1), log_p
    )
    log_s = F.log_softmax(z_s / t, dim=1)
    l_student = (
        kw["lambda1"] * F.cross_entropy(z_s, y)
        + kw["lambda2"] * t**2 * kl(F.softmax(z_p.detach() / t, dim=1), log_s)
        + kw["lambda3"] * t**2 * kl(F.softmax(n / t, dim=1), log_s)
    )
    return l_peer + l_student


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def run_and_reference(weights: dict, **switches):
    """The method's gradients on both networks, and the reference's with both targets live and
    with the switched ones detached."""
    calls = []
    student, peer = Recorder("student", calls), Recorder("peer", calls)
    m = method(student, peer, **weights, **switches)
    loss, _ = m.batch_loss(student, X, Y)
    loss.backward()
    got = grads(student), grads(peer)
    x_adv = calls[1 + ATTACK.steps][3]
    out = {}
    for live in (True, False):
        student.zero_grad(set_to_none=True)
        peer.zero_grad(set_to_none=True)
        ref = reference_loss(student, peer, X, x_adv, Y, live_s1=live, live_n=live, **weights)
        ref.backward()
        assert ref.item() == pytest.approx(loss.item(), rel=1e-4)  # as `same`: other sum orders
        out[live] = grads(student), grads(peer)
    return got, out


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(u, v, rtol=1e-4, atol=1e-7) for u, v in zip(a, b, strict=True))


def zero(a: list[torch.Tensor]) -> bool:
    return all(not u.any() for u in a)


def test_the_peer_loss_trains_the_student_unless_switched():
    only_peer_kl = {**W, "gamma1": 0.0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 0.0}
    (s, p), ref = run_and_reference(only_peer_kl)
    assert same(s, ref[True][0]) and same(p, ref[True][1])
    assert not zero(s) and zero(ref[False][0])  # the student's gradient comes from L_peer alone
    (s, p), ref = run_and_reference(only_peer_kl, peer_kl_trains_student=False)
    assert zero(s) and same(p, ref[False][1])


def test_the_clean_target_is_live_unless_switched():
    only_clean = {**W, "gamma1": 0.0, "gamma2": 0.0, "lambda1": 0.0, "lambda2": 0.0, "lambda3": 1}
    (s, p), ref = run_and_reference(only_clean)
    assert same(s, ref[True][0]) and not same(s, ref[False][0]) and zero(p)
    (s, p), ref = run_and_reference(only_clean, live_clean_target=False)
    assert same(s, ref[False][0]) and zero(p)


def test_the_peer_learns_from_its_own_loss_only_and_every_term_matches_the_reference():
    only_student_kl = {**W, "gamma1": 0.0, "gamma2": 0.0, "lambda1": 0.0, "lambda2": 1.0}
    (s, p), ref = run_and_reference({**only_student_kl, "lambda3": 0.0})
    assert zero(p) and not zero(s)  # z_p is detached in L_student
    (s, p), ref = run_and_reference({**W, **L})
    assert same(s, ref[True][0]) and same(p, ref[True][1])
    (s, p), ref = run_and_reference({**W, **L}, second_student_forward=False)
    assert same(s, ref[True][0]) and same(p, ref[True][1])  # one forward: the same gradients


class WithBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.bn(x).flatten(1))


@pytest.mark.parametrize("second", [True, False])
def test_batchnorm_updates_per_step(second):
    """Three train-mode student forwards (x', x', x) update its BN statistics three times (two with
    the switch); the peer's once (its clean forward is in eval mode); the attack's none."""
    m = method(WithBN(), WithBN(), second_student_forward=second)
    m.batch_loss(m.student, X, Y)
    assert m.student.bn.num_batches_tracked.item() == (3 if second else 2)
    assert m.peer.bn.num_batches_tracked.item() == 1


def test_peer_optimizer_clears_steps_and_follows_its_schedule():
    peer = Linear()
    m = PeerAiD(
        Linear(), peer, ATTACK, lr_at=lambda e: 0.1 * 0.1 ** (e > 2), bn_batches=lambda e: [],
        momentum=0.9, weight_decay=2e-4, **W, **L,
    )  # fmt: skip
    for p in peer.parameters():
        p.grad = torch.full_like(p, 7.0)  # stale: cleared before the forwards
    m.start_epoch(3)
    assert m.status()["peer_lr"] == pytest.approx(0.01)
    loss, _ = m.batch_loss(m.student, X, Y)
    assert all(p.grad is None for p in peer.parameters())
    loss.backward()
    before = [p.detach().clone() for p in peer.parameters()]
    g = grads(peer)
    m.after_step()
    for p, b, gi in zip(peer.parameters(), before, g, strict=True):  # first step: buffer = grad
        assert torch.allclose(p, b - 0.01 * (gi + 2e-4 * b), rtol=0, atol=1e-7)
    m.start_epoch(1)
    assert m.status()["peer_lr"] == 0.1


def test_average_into_is_the_official_running_mean():
    a, b, c = Linear(), Linear(), Linear()
    average_into(a, b, 0)  # a x 0 + b x 1
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters(), strict=True))
    average_into(a, c, 1)
    for u, v, w in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(u, v * (1 - 0.5) + w * 0.5)
    before = [u.clone() for u in a.parameters()]
    average_into(a, b, 2)
    for u, v, w in zip(a.parameters(), before, b.parameters(), strict=True):
        assert torch.allclose(u, v * (1 - 1 / 3) + w * (1 / 3), rtol=0, atol=1e-7)


def test_batchnorm_pass_is_the_image_weighted_mean_of_batch_statistics():
    model = WithBN().eval()
    model.bn.momentum = 0.25
    x1, x2 = torch.rand(3, 3, 8, 8), torch.rand(5, 3, 8, 8) * 2
    recompute_batch_norm(model, [(x1, None), (x2, None)])

    def stats(x):
        flat = x.transpose(0, 1).reshape(3, -1).double()
        return flat.mean(1), flat.var(1, unbiased=True)

    (m1, v1), (m2, v2) = stats(x1), stats(x2)
    assert torch.allclose(model.bn.running_mean.double(), (3 * m1 + 5 * m2) / 8, atol=1e-6)
    assert torch.allclose(model.bn.running_var.double(), (3 * v1 + 5 * v2) / 8, atol=1e-6)
    assert model.bn.momentum == 0.25 and not model.training  # restored


def test_end_epoch_averages_from_swa_from_with_a_bn_pass():
    seen = []

    def bn_batches(epoch):
        seen.append(epoch)
        return [(torch.rand(4, 3, 8, 8), None)]

    student = WithBN()
    m = PeerAiD(student, WithBN(), ATTACK, lr_at=lambda e: 0.1, bn_batches=bn_batches, swa_from=2)
    with torch.no_grad():
        m.swa.fc.weight.fill_(5.0)
    assert set(m.networks()) == {"peer", "swa"} and m.status()["swa_n"] == 0
    with pytest.raises(BmtardError, match="nothing was averaged"):
        m.output_model("swa")
    assert m.output() is None  # the student's own weights by default
    m.end_epoch(1)
    assert seen == [] and m.swa_n == 0 and m.swa.fc.weight.eq(5.0).all()
    m.end_epoch(2)
    assert seen == [2] and m.swa_n == 1
    for u, v in zip(m.swa.parameters(), student.parameters(), strict=True):
        assert torch.equal(u, v) and not u.requires_grad
    assert m.swa.bn.num_batches_tracked.item() > 0
    assert m.output_model("swa") is m.swa and m.output_model("student") is student
    m.output_choice = "swa"
    assert m.output().keys() == m.swa.state_dict().keys()
    with torch.no_grad():
        student.fc.weight.add_(1.0)
    m.end_epoch(3)
    assert m.swa_n == 2 and seen == [2, 3]
    assert torch.allclose(m.swa.fc.weight, student.fc.weight - 0.5)


def test_refusals():
    with pytest.raises(ValueError, match="kl_reduction"):
        method(Linear(), Linear(), kl_reduction="sum")
    with pytest.raises(ValueError, match="architecture"):
        method(Linear(), Linear(), swa=Linear(classes=4))
    m = method(Linear(), Linear())
    with pytest.raises(ValueError, match="another model"):
        m.batch_loss(Linear(), X, Y)
    with pytest.raises(ValueError, match="output"):
        m.output_model("peer")


def tiny() -> nn.Module:
    return build_model("resnet18", 10, 0.0625)


# a continued run equals an uninterrupted one, across the start of the averaging

DATA_X = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
DATA_Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(6))
CFG = OptimConfig(epochs=3, batch_size=4, lr=0.1, milestones=[2], weight_decay=2e-4)


class ToyBatches:
    """Two batches of 4 per epoch, the order drawn from the epoch number; resumable mid-epoch."""

    def __init__(self) -> None:
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __len__(self) -> int:
        return 2

    def __iter__(self):
        order = torch.randperm(8, generator=torch.Generator().manual_seed(self.epoch))
        while self.position < 2:
            rows = order[4 * self.position : 4 * self.position + 4]
            self.position += 1
            yield DATA_X[rows], DATA_Y[rows]


def bn_batches(epoch: int):
    order = torch.randperm(8, generator=torch.Generator().manual_seed(100 + epoch))
    return [(DATA_X[order[:4]], DATA_Y[order[:4]]), (DATA_X[order[4:]], DATA_Y[order[4:]])]


def build(seed: int) -> Parts:
    torch.manual_seed(seed)
    student, peer = tiny(), tiny()
    m = PeerAiD(
        student, peer, ATTACK, lr_at=lambda e: CFG.lr * lr_factor(e, CFG), bn_batches=bn_batches,
        swa_from=2, **PUBLISHED["cifar10"],
    )  # fmt: skip
    return Parts(student, m, ToyBatches(), make_optimizer(student, CFG))


class Snapshots:
    """A saver that keeps a deep copy of everything at each save, and asks for one save after
    the first batch of epoch 2 (a resume in the middle of the first averaged epoch)."""

    def __init__(self, parts: Parts) -> None:
        self.parts, self.steps, self.taken = parts, 0, []

    def due(self) -> bool:
        self.steps += 1
        return self.steps == 3

    def save(self, progress) -> str:
        p = self.parts
        self.taken.append(
            copy.deepcopy(
                {
                    "progress": progress,
                    "model": p.model.state_dict(),
                    "optimizer": p.optimizer.state_dict(),
                    "method": p.method.state_dict(),
                    "batches": (p.batches.epoch, p.batches.position),
                    "rng": torch.get_rng_state(),
                }
            )
        )
        return "a snapshot"


def run(parts: Parts, start=None, saver=None) -> None:
    fit(
        parts, CFG, section="distill", monitor=lambda e: None, on_epoch=lambda e, m: None,
        start=start, saver=saver,
    )  # fmt: skip


def everything(parts: Parts) -> dict:
    m = parts.method
    return copy.deepcopy(
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "peer": m.peer.state_dict(),
            "peer_optimizer": m.peer_optimizer.state_dict(),
            "swa": m.swa.state_dict(),
            "swa_n": m.swa_n,
        }
    )


def equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_continued_run_equals_an_uninterrupted_one_bit_for_bit():
    whole = build(0)
    saver = Snapshots(whole)
    run(whole, saver=saver)
    final = everything(whole)
    assert final["swa_n"] == 2  # averaged at the ends of epochs 2 and 3
    assert not equal(final["swa"], final["model"])
    where = [(s["progress"].epoch, s["progress"].batch) for s in saver.taken]
    assert where == [(1, 0), (1, 1), (2, 0), (3, 0)]  # epoch ends, and epoch 2 after batch 1
    for snap in saver.taken[:3]:
        parts = build(1)  # other weights, overwritten by the state
        parts.model.load_state_dict(snap["model"])
        parts.optimizer.load_state_dict(snap["optimizer"])
        parts.method.load_state_dict(snap["method"])
        parts.batches.epoch, parts.batches.position = snap["batches"]
        torch.set_rng_state(snap["rng"])
        run(parts, start=copy.deepcopy(snap["progress"]))
        assert equal(everything(parts), final), snap["progress"]


def test_bf16_autocast_keeps_fp32_losses():
    m = method(tiny(), tiny(), execution=Execution(precision="bf16"), **PUBLISHED["cifar100"])
    loss, logs = m.batch_loss(m.student, torch.rand(4, 3, 8, 8), Y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    m.after_step()
    assert all(torch.isfinite(v) for v in logs.values())
