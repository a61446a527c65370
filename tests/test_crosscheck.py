"""Our FGSM, PGD and CW-inf against an independent implementation (torchattacks), and AutoAttack
(the reference pyautoattack code) against our attacks, on one small trained model.

The model is a small conv net trained for a few hundred SGD steps on 500 images of the offline
CIFAR-10 sample, in eval mode. The attacked points are the first 64 of those training images (the
net fits them better than held-out ones, so more of them are correctly classified and there is
more to attack). 64 is a power of two on purpose: torchattacks averages the cross-entropy over the
batch where we sum it, and with N = 2**6 the mean's gradient is the sum's times an exact power of
two, so every gradient sign is the same bit for bit. At the eps used here every attack leaves some
points robust and breaks others (asserted), so equal results are not equal by saturation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from bmtard.attacks.autoattack import autoattack
from bmtard.attacks.cw import cw_margin_loss
from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import DataConfig
from bmtard.data.datasets import prepare
from bmtard.data.loader import to_tensor
from bmtard.data.splits import load_split
from bmtard.evaluation.protocol import protocol_attack

from conftest import SAMPLE

N_POINTS = 64
EPSILONS = (2, 4)  # in 1/255, as the protocol takes them
AA_EPS = 2  # AutoAttack costs ~13 s here on 2 CPU threads, so it runs at one eps only
KAPPA = 50.0
# The protocol's settings, written out independently of bmtard.evaluation.protocol: (step, steps).
PGD_SETTINGS = {"pgd_sat": (2 / 255, 20), "pgd_trades": (0.003, 20)}
CW_STEP, CW_STEPS = 2 / 255, 30

# PGD tolerance. The two projections round differently: we take min(max(a, x - eps), x + eps),
# torchattacks x + clamp(a - x, -eps, eps), and a - x is not exact in float32 when a and x are
# not within a factor of two (e.g. x near 0), so iterates may differ by a few ulps. That (or, for
# CW, the rounding of the positive factor in CWObjective) can flip the sign of a near-zero
# gradient component at a later step; that image then "diverges": a pixel differs by a whole
# step or more (>= 0.003, far above PIXEL_TOL). Measured with torch 2.14.1 on CPU, 2 threads,
# this model and these 64 points, random-start seeds 0-39 at eps 2, 4 and 8/255 (120 runs per
# attack):
#   PGD_SAT, PGD_TRADES: no image diverged in any run; max |difference| 3.7e-8 (a few ulps);
#   CW_inf: one image diverged in 6 of 120 runs, never two; otherwise max |difference| 3.7e-8;
#   predictions: never differed, for any attack.
# With 1 thread (seeds 0-9): no image diverged for any attack.
# (With 60 points instead of 64, PGD_SAT / PGD_TRADES too had one diverged image in 7 of 120
# runs: the power-of-two batch matters, see the module docstring.)
# Allowed per run: at most MAX_DIVERGED images (3%) diverged, at most MAX_PRED_DIFF predictions
# (1.6%) differing, accuracies within MAX_PRED_DIFF images.
PIXEL_TOL = 1e-6
MAX_DIVERGED = 2
MAX_PRED_DIFF = 1


class SmallNet(nn.Module):
    """Three conv layers and a linear head: (N, 3, 32, 32) in [0, 1] -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[nn.Module, Tensor, Tensor]:
    """(model in eval mode with frozen weights, x (64, 3, 32, 32) in [0, 1], y (64,))."""
    root = SAMPLE
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("crosscheck-data")
    cfg = DataConfig(local_root=str(root), verify_md5=False, train_limit=500, test_limit=10)
    prepare(cfg, out)
    train = load_split(out / "train.npz")
    x = to_tensor(torch.from_numpy(train.images))
    y = torch.from_numpy(train.labels)
    torch.manual_seed(0)
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(800):
        idx = torch.randint(0, len(y), (32,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model, x[:N_POINTS].contiguous(), y[:N_POINTS].clone()


def correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def assert_nontrivial(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> None:
    """Some points robust, some broken: 0 < robust < clean (counts of correct predictions)."""
    clean = int(correct(model, x, y).sum())
    robust = int(correct(model, x_adv, y).sum())
    assert 0 < robust < clean, f"robust {robust}, clean {clean}: the comparison would be trivial"


def assert_close_runs(model: nn.Module, ours: Tensor, ref: Tensor, y: Tensor) -> None:
    """Adversarial images equal up to float rounding (PIXEL_TOL) on all but MAX_DIVERGED images,
    predictions equal on all but MAX_PRED_DIFF, accuracies within MAX_PRED_DIFF images."""
    per_image = (ours - ref).abs().flatten(1).amax(1)
    diverged = int((per_image > PIXEL_TOL).sum())
    assert diverged <= MAX_DIVERGED, f"{diverged} images differ (max {per_image.max().item():.3g})"
    c_ours, c_ref = correct(model, ours, y), correct(model, ref, y)
    assert int((c_ours != c_ref).sum()) <= MAX_PRED_DIFF
    assert abs(int(c_ours.sum()) - int(c_ref.sum())) <= MAX_PRED_DIFF


def our_attack(name: str, eps: int, model: nn.Module, x: Tensor, y: Tensor, seed: int) -> Tensor:
    torch.manual_seed(seed)
    return protocol_attack(name, eps, KAPPA)(model, x, y)


def ref_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: int, step: float, steps: int, seed: int
) -> Tensor:
    torch.manual_seed(seed)
    attack = torchattacks.PGD(model, eps=eps / 255, alpha=step, steps=steps, random_start=True)
    return attack(x, y)


@pytest.mark.parametrize("eps", EPSILONS)
def test_uniform_start_is_drawn_like_torchattacks(trained, eps):
    """Same seed -> the same start clip(x + U(-eps, eps), 0, 1) (0 steps: the start itself), so the
    PGD comparisons below start from the same point without passing delta0."""
    model, x, y = trained
    torch.manual_seed(5)
    ours = pgd_ce(model, x, y, eps=eps / 255, step_size=2 / 255, steps=0, init="uniform")
    ref = ref_pgd(model, x, y, eps, 2 / 255, 0, seed=5)
    assert torch.equal(ours, ref)
    # a real random start inside the ball, not x itself
    assert (ours - x).abs().max().item() > eps / 255 / 2
    assert (ours - x).abs().max().item() <= eps / 255 + 1e-7


@pytest.mark.parametrize("eps", EPSILONS)
def test_fgsm_matches_torchattacks(trained, eps):
    """Tolerance 0: both compute clip(x + eps * sign(grad), 0, 1); only a flipped gradient sign
    could make them differ, and with 64 points the signs agree exactly (module docstring).
    Measured: identical at eps 2 and 4/255."""
    model, x, y = trained
    ours = protocol_attack("fgsm", eps)(model, x, y)
    ref = torchattacks.FGSM(model, eps=eps / 255)(x, y)
    assert_nontrivial(model, x, ours, y)
    assert torch.equal(ours, ref)
    assert torch.equal(correct(model, ours, y), correct(model, ref, y))


@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("name", sorted(PGD_SETTINGS))
def test_pgd_matches_torchattacks(trained, name, eps):
    """Our PGD_SAT / PGD_TRADES (CE, uniform start) vs torchattacks.PGD with the protocol's step
    and steps, from the same seeded start; tolerance and measurements above PIXEL_TOL."""
    model, x, y = trained
    step, steps = PGD_SETTINGS[name]
    ours = our_attack(name, eps, model, x, y, seed=1)
    ref = ref_pgd(model, x, y, eps, step, steps, seed=1)
    assert_nontrivial(model, x, ours, y)
    assert_close_runs(model, ours, ref, y)


class CWObjective(nn.Module):
    """A 2-class "model" whose CE with target 0 is a strictly increasing function of our CW-inf
    objective, so torchattacks.PGD on it ascends the same objective as our cw_inf.

    Per sample i, our cw_inf maximises m_i(x) = -relu(z_y - max_{j != y} z_j + kappa) (the summed
    loss is separable, so each sample's gradient is grad m_i). The wrapper returns the logits
    [0, m_i(x) + kappa] and torchattacks is given label 0 for every sample, so its loss is
    mean_i CE_i with CE_i = log(1 + exp(m_i + kappa)) = softplus(m_i + kappa); then
    grad_x CE_i = sigmoid(m_i + kappa) * grad_x m_i / N, a positive multiple of grad_x m_i, and
    sign(grad) -- all PGD uses -- is the same (up to float rounding of the positive factor).
    The shift by kappa is a constant, a precaution: where the margin is above -kappa the factor
    is sigmoid(-margin) instead of sigmoid(-margin - 50) (e^-50 = 2e-22 smaller), so the reference
    gradients stay far from float32's denormal range, where small components would lose their
    sign. Where m_i is flat (margin below -kappa) both gradients are 0.
    The margin is computed here independently of bmtard.attacks.cw (gather / scatter).
    """

    def __init__(self, model: nn.Module, y: Tensor, kappa: float) -> None:
        super().__init__()
        self.model, self.y, self.kappa = model, y, kappa

    def objective(self, x: Tensor) -> Tensor:
        z = self.model(x)
        true = z.gather(1, self.y[:, None])[:, 0]
        best_other = z.scatter(1, self.y[:, None], float("-inf")).amax(1)
        return -F.relu(true - best_other + self.kappa)

    def forward(self, x: Tensor) -> Tensor:
        m = self.objective(x) + self.kappa
        return torch.stack([torch.zeros_like(m), m], dim=1)


@pytest.mark.parametrize("eps", EPSILONS)
def test_cw_inf_matches_torchattacks_pgd_on_the_same_objective(trained, eps):
    """Our CW_inf (kappa 50, PGD-30, step 2/255, uniform start) vs torchattacks.PGD with the same
    settings and seeded start on CWObjective; tolerance and measurements above PIXEL_TOL."""
    model, x, y = trained
    wrapped = CWObjective(model, y, KAPPA)
    with torch.no_grad():  # the wrapper's objective is ours, sample by sample
        ours_sum = cw_margin_loss(model(x), y, KAPPA)
        assert torch.allclose(wrapped.objective(x).sum(), ours_sum, rtol=1e-5)
        assert torch.equal(wrapped(x)[:, 1], wrapped.objective(x) + KAPPA)
    ours = our_attack("cw_inf", eps, model, x, y, seed=2)
    ref = ref_pgd(wrapped, x, torch.zeros_like(y), eps, CW_STEP, CW_STEPS, seed=2)
    assert_nontrivial(model, x, ours, y)
    assert_close_runs(model, ours, ref, y)
    # the attack raised our objective where it could
    with torch.no_grad():
        assert cw_margin_loss(model(ours), y, KAPPA) > ours_sum


def test_autoattack_is_never_above_our_attacks(trained):
    """AutoAttack standard (pyautoattack, via bmtard.attacks.autoattack) on the same 64 points:
    its robust accuracy is <= FGSM's, PGD_SAT's, PGD_TRADES's and CW_inf's, and its adversarial
    images are in the eps-ball (float tolerance 1e-6; measured overshoot 2.9e-8) and in [0, 1].
    Measured at eps 2/255 (2 threads): correct of 64: clean 44, FGSM 22, PGD_SAT 23, PGD_TRADES 22,
    CW_inf 22, AutoAttack 21."""
    model, x, y = trained
    eps = AA_EPS / 255
    x_aa = autoattack(model, x, y, eps=eps, version="standard", seed=0)
    assert x_aa.shape == x.shape
    assert (x_aa - x).abs().max().item() <= eps + 1e-6
    assert x_aa.min().item() >= 0.0 and x_aa.max().item() <= 1.0
    clean = correct(model, x, y)
    robust_aa = correct(model, x_aa, y)
    assert_nontrivial(model, x, x_aa, y)
    assert not (robust_aa & ~clean).any()  # AA never "repairs" a misclassified point
    for name in ("fgsm", "pgd_sat", "pgd_trades", "cw_inf"):
        robust = correct(model, our_attack(name, AA_EPS, model, x, y, seed=3), y)
        assert 0 < int(robust.sum()) < int(clean.sum()), name
        assert int(robust_aa.sum()) <= int(robust.sum()), name
