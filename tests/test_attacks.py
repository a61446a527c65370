"""Our white-box attacks: stay in the eps-ball and [0, 1], raise the loss, follow their settings."""

import pytest
import torch
import torch.nn.functional as F

from bmtard.attacks.cw import cw_inf, cw_margin_loss
from bmtard.attacks.fgsm import fgsm
from bmtard.attacks.pgd import pgd, pgd_ce

EPS = 8 / 255


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    x[:4] = 0.0  # corners of the box: the projection must keep [0, 1]
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,), generator=g)
    return x, y


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def assert_valid(x_adv, x, eps):
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


@pytest.mark.parametrize("init", ["uniform", "gaussian", "none"])
def test_pgd_stays_in_ball_and_box_and_raises_loss(tiny_net, batch, init):
    x, y = batch
    x_adv = pgd_ce(tiny_net, x, y, eps=EPS, step_size=2 / 255, steps=10, init=init)
    assert_valid(x_adv, x, EPS)
    assert ce(tiny_net, x_adv, y).sum() > ce(tiny_net, x, y).sum()


def test_more_steps_never_weaker_on_average(tiny_net, batch):
    x, y = batch
    l1 = ce(tiny_net, pgd_ce(tiny_net, x, y, eps=EPS, step_size=EPS / 4, steps=1, init="none"), y)
    l10 = ce(tiny_net, pgd_ce(tiny_net, x, y, eps=EPS, step_size=EPS / 4, steps=10, init="none"), y)
    assert l10.sum() > l1.sum()


def test_fgsm_is_one_full_sign_step(tiny_net, batch):
    x, y = batch
    x_ = x.clone().requires_grad_(True)
    F.cross_entropy(tiny_net(x_), y, reduction="sum").backward()
    expected = (x + EPS * x_.grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(tiny_net, x, y, eps=EPS), expected)


def test_gaussian_start_is_tiny_and_unclamped_before_first_step(tiny_net, batch):
    x, y = batch
    torch.manual_seed(3)
    start = x + 0.001 * torch.randn_like(x)  # what the official code feeds the first step
    torch.manual_seed(3)
    x_adv = pgd(
        tiny_net,
        x,
        lambda z: F.cross_entropy(z, y, reduction="sum"),
        eps=EPS,
        step_size=2 / 255,
        steps=1,
        init="gaussian",
    )
    s = start.clone().requires_grad_(True)
    F.cross_entropy(tiny_net(s), y, reduction="sum").backward()
    expected = torch.min(torch.max(start + 2 / 255 * s.grad.sign(), x - EPS), x + EPS).clamp(0, 1)
    assert torch.allclose(x_adv, expected)


def test_explicit_start_replaces_random_init(tiny_net, batch):
    x, y = batch
    delta = torch.full_like(x, EPS / 2)
    a = pgd_ce(tiny_net, x, y, eps=EPS, step_size=1 / 255, steps=3, delta0=delta)
    b = pgd_ce(tiny_net, x, y, eps=EPS, step_size=1 / 255, steps=3, delta0=delta)
    assert torch.equal(a, b)


def test_attack_leaves_model_mode_and_parameter_grads_alone(tiny_net, batch):
    x, y = batch
    tiny_net.train()
    pgd_ce(tiny_net, x, y, eps=EPS, step_size=2 / 255, steps=2)
    assert tiny_net.training
    assert all(p.grad is None for p in tiny_net.parameters())


def test_unknown_init_is_rejected(tiny_net, batch):
    with pytest.raises(ValueError, match="init"):
        pgd_ce(tiny_net, *batch, eps=EPS, step_size=1 / 255, steps=1, init="zeros")


def test_cw_margin_loss_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 4.0, 1.0]])
    y = torch.tensor([0, 2])
    # sample 0: z_y - max_other = 3 - 2.5 = 0.5; sample 1: 1 - 4 = -3
    assert cw_margin_loss(logits, y, kappa=0.0).item() == pytest.approx(-(0.5 + 0.0))
    assert cw_margin_loss(logits, y, kappa=50.0).item() == pytest.approx(-(50.5 + 47.0))


def test_cw_inf_lowers_the_margin(tiny_net, batch):
    x, y = batch
    x_adv = cw_inf(tiny_net, x, y, eps=EPS, step_size=2 / 255, steps=10)
    assert_valid(x_adv, x, EPS)
    with torch.no_grad():
        before = cw_margin_loss(tiny_net(x), y, 50.0)
        after = cw_margin_loss(tiny_net(x_adv), y, 50.0)
    assert after > before
