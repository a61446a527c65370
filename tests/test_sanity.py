"""Sanity checks: each catches a model built to fool it, and an honest model passes them all.

The honest model is a linear classifier on small synthetic images (10 classes, 3x8x8), trained to
~90 % clean accuracy; at eps 4/255 about half of the test images stay robust, so every comparison
has something to compare. The fooling models wrap it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.config.schema import EvaluateConfig, SanityConfig
from bmtard.data.loader import to_tensor
from bmtard.data.splits import Split
from bmtard.evaluation import sanity
from bmtard.evaluation.protocol import evaluate_model

from conftest import synthetic, train_linear

CPU = torch.device("cpu")
WHITE_BOX = ["fgsm", "pgd_sat", "pgd_trades", "cw_inf"]


@pytest.fixture(scope="module")
def setup():
    train = synthetic(500, 1)
    test = synthetic(64, 2)
    return train_linear(train, 0), train_linear(train, 1), test


def config(attacks=WHITE_BOX, **sanity_overrides) -> EvaluateConfig:
    s = {
        "n_images": None,
        "strong_steps": 20,
        "strong_restarts": 2,
        "square_queries": 100,
        "gradient_samples": 32,
        **sanity_overrides,
    }
    return EvaluateConfig(
        n_images=64,
        batch_size=64,
        eps=4.0,
        attacks=list(attacks),
        resume_dir=None,
        sanity=SanityConfig(**s),
    )


def checks_of(model, test, cfg, transfer=None, on_batch=None) -> dict[str, sanity.Check]:
    torch.manual_seed(0)
    ev = evaluate_model(model, test, cfg, CPU, transfer_source=transfer, on_batch=on_batch)
    return {c.name: c for c in ev.checks}


class Lookup(nn.Module):
    """Remembers the clean test set: beyond L-inf distance ``radius`` of every clean image it
    answers with the remembered label of the nearest one; closer in, it is the base model."""

    def __init__(self, base: nn.Module, test: Split, radius: float) -> None:
        super().__init__()
        self.base = base
        self.x = to_tensor(torch.from_numpy(test.images))
        self.y = torch.from_numpy(test.labels)
        self.radius = radius
        self.always = False  # switched on by a test: answer from memory for every input

    def remembered(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = (x[:, None] - self.x[None]).abs().flatten(2).amax(2)  # (N, M)
        d, idx = dist.min(1)
        # constant in x, but still part of the graph (attacks differentiate it: zero gradient)
        return d, 20.0 * F.one_hot(self.y[idx], 10).float() + 0.0 * x.flatten(1)[:, :1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, memory = self.remembered(x)
        far = (d > self.radius) | self.always
        return torch.where(far[:, None], memory, self.base(x))


class Rounding(nn.Module):
    """Quantises its input to quarters before the base model: zero input gradients."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 4) / 4)


class SmallBatchLookup(Lookup):
    """The base model on full batches; remembered labels on smaller ones, which is how the
    reference AutoAttack queries the points still robust."""

    def __init__(self, base: nn.Module, test: Split, full: int) -> None:
        super().__init__(base, test, radius=1.0)
        self.full = full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.remembered(x)[1] if len(x) < self.full else self.base(x)


class Noisy(nn.Module):
    """A randomised defence: Gaussian noise on every input."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + 0.05 * torch.randn_like(x))


# ---------------------------------------------------------------- the honest model passes


def test_honest_model_passes_every_check(setup):
    base, other, test = setup
    checks = checks_of(base, test, config([*WHITE_BOX, "autoattack"]), transfer=other)
    assert set(checks) == {
        "eps_monotone",
        "large_eps",
        "more_steps",
        "autoattack_vs_white_box",
        "black_box_vs_white_box",
        "transfer_vs_white_box",
        "gradients",
        "autoattack_flags",
    }
    failed = {n: c.detail for n, c in checks.items() if c.passed is not True}
    assert failed == {}
    # the comparisons were not trivial: some images robust, some not
    assert 10 < checks["more_steps"].values["reported_pgd"] < 90


def test_honest_eps_curve_is_monotone_and_reaches_zero(setup):
    base, _, test = setup
    ev = evaluate_model(base, test, config(), CPU)
    values = [ev.eps_curve[k] for k in ("0", "2", "4", "8", "16")]
    assert values == sorted(values, reverse=True)
    assert values[0] == ev.accuracy["clean"] and values[0] > values[-1]


# ---------------------------------------------------------------- each fooling model is caught


def test_lookup_beyond_radius_breaks_monotonicity_and_large_eps(setup):
    base, _, test = setup
    checks = checks_of(Lookup(base, test, radius=10 / 255), test, config())
    assert checks["eps_monotone"].passed is False  # accuracy jumps back up at eps 16
    assert checks["large_eps"].passed is False  # ~100 % at eps 64
    assert checks["large_eps"].values["accuracy"] > 90


def test_rounding_input_is_caught_by_gradients_black_box_and_transfer(setup):
    base, other, test = setup
    checks = checks_of(Rounding(base), test, config(), transfer=other)
    assert checks["gradients"].passed is False
    assert checks["gradients"].values["zero_gradient"] == 32
    assert checks["black_box_vs_white_box"].passed is False
    assert checks["transfer_vs_white_box"].passed is False


def test_model_that_turns_robust_under_a_long_attack_fails_more_steps(setup):
    """A stateful model that starts answering from memory once the evaluation has run for a
    while: the stronger PGD, which runs after the reported attacks, then does worse than them."""
    base, _, test = setup
    model = Lookup(base, test, radius=1.0)

    def switch(task: str, index: int) -> None:
        if task == "large_eps":
            model.always = True

    checks = checks_of(model, test, config(), on_batch=switch)
    assert checks["more_steps"].passed is False
    assert checks["more_steps"].values["strong_pgd"] == 100.0


def test_model_that_hides_from_autoattack_is_caught(setup):
    base, _, test = setup
    model = SmallBatchLookup(base, test, full=64)
    checks = checks_of(model, test, config([*WHITE_BOX, "autoattack"]))
    assert checks["autoattack_vs_white_box"].passed is False


def test_randomised_model_raises_autoattack_flags(setup):
    base, _, test = setup
    checks = checks_of(Noisy(base), test, config([*WHITE_BOX, "autoattack"]))
    assert checks["autoattack_flags"].passed is False
    assert checks["autoattack_flags"].values["warnings"] >= 1


def test_nan_gradients_are_caught():
    class NaNGrad(nn.Module):
        def forward(self, x):
            return torch.sqrt(x - 0.5).nan_to_num(0.0).flatten(1)[:, :10]  # NaN grad below 0.5

    x = torch.full((4, 3, 4, 4), 0.25)
    check = sanity.gradients(NaNGrad(), x, torch.zeros(4, dtype=torch.long))
    assert check.passed is False and check.values["non_finite_gradient"] == 4


# ---------------------------------------------------------------- the rules, by hand


def test_rules_with_hand_values():
    assert sanity.eps_monotone({0: 90, 2: 70, 4: 70.5, 8: 30}, tol=1.0).passed is True
    bad = sanity.eps_monotone({0: 90, 2: 70, 4: 75, 8: 30}, tol=1.0)
    assert bad.passed is False and bad.values["max_rise"] == 5 and "2->4" in bad.detail
    assert sanity.eps_monotone({8: 30}, tol=1.0).passed is None
    assert sanity.large_eps(2.5, 64, 2.0).passed is False
    assert sanity.large_eps(2.0, 64, 2.0).passed is True
    assert sanity.more_steps(50.0, {"pgd_sat": 49.5, "pgd_trades": 52}, 1.0).passed is True
    assert sanity.more_steps(51.0, {"pgd_sat": 49.5}, 1.0).passed is False
    assert sanity.more_steps(51.0, {}, 1.0).passed is None
    assert sanity.autoattack_not_above(45, {"fgsm": 60, "pgd_sat": 45.5}, 1.0).passed is True
    assert sanity.autoattack_not_above(47, {"pgd_sat": 45.5}, 1.0).passed is False
    assert sanity.autoattack_not_above(None, {"pgd_sat": 45.5}, 1.0).passed is None
    assert sanity.black_box_not_below(44.6, {"pgd_sat": 45.5}, 1.0).passed is True
    assert sanity.black_box_not_below(44.4, {"pgd_sat": 45.5}, 1.0).passed is False
    assert sanity.transfer_not_below(None, {"pgd_sat": 45.5}, 1.0).passed is None
    assert sanity.autoattack_flags([]).passed is True
    assert sanity.autoattack_flags(["it seems to be a randomized defense!"]).passed is False
    summary = sanity.summary(
        [sanity.large_eps(0, 64, 2), sanity.large_eps(5, 64, 2), sanity.autoattack_flags(None)]
    )
    assert summary["passed"] is False and summary["n_failed"] == 1
    assert summary["autoattack_flags"]["passed"] is None
