"""Gradient-masking sanity checks of a robustness evaluation.

From the checklist of Carlini et al., "On Evaluating Adversarial Robustness" (2019), and
AutoAttack's own flags. Each check compares measured accuracies (in %) and returns a ``Check``:
passed True / False, or None when it could not run (e.g. no transfer source), with the values it
compared. A tolerance (% points) absorbs the noise of random starts on few images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.cw import cw_margin_loss
from bmtard.config import attack_table

WHITE_BOX = attack_table.WHITE_BOX


@dataclass(frozen=True)
class Check:
    """The outcome of one sanity check."""

    name: str
    passed: bool | None
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **self.values}


def eps_monotone(curve: dict[float, float], tol: float) -> Check:
    """Robust accuracy must not rise with eps (curve: eps in 1/255 -> accuracy %)."""
    eps = sorted(curve)
    steps = list(zip(eps, eps[1:], strict=False))
    rise = max((curve[b] - curve[a] for a, b in steps), default=0.0)
    values = {"max_rise": max(rise, 0.0)}
    if not steps:
        return Check("eps_monotone", None, "fewer than two eps values", values)
    rises = [
        f"{a:g}->{b:g}: {curve[a]:.2f}->{curve[b]:.2f}"
        for a, b in steps
        if curve[b] > curve[a] + tol
    ]
    if rises:
        return Check("eps_monotone", False, "accuracy rises with eps: " + ", ".join(rises), values)
    return Check("eps_monotone", True, "accuracy never rises with eps", values)


def large_eps(acc: float, eps: float, max_acc: float) -> Check:
    """At a very large eps, white-box accuracy must fall to about 0."""
    values = {"eps": eps, "accuracy": acc, "max_accuracy": max_acc}
    if acc > max_acc:
        return Check("large_eps", False, f"{acc:.2f}% still correct at eps {eps:g}/255", values)
    return Check("large_eps", True, f"{acc:.2f}% at eps {eps:g}/255", values)


def more_steps(strong: float, reported: dict[str, float], tol: float) -> Check:
    """A PGD with more steps and restarts must not leave more images correct than the reported
    PGD attacks (reported: name -> accuracy on the same images)."""
    best = min(reported.values()) if reported else None
    values = {"strong_pgd": strong, "reported_pgd": best}
    if best is None:
        return Check("more_steps", None, "no PGD attack was reported", values)
    if strong > best + tol:
        return Check(
            "more_steps", False, f"stronger PGD {strong:.2f}% > reported {best:.2f}%", values
        )
    return Check("more_steps", True, f"stronger PGD {strong:.2f}% <= {best:.2f}% + tol", values)


def autoattack_not_above(aa: float | None, white_box: dict[str, float], tol: float) -> Check:
    """AutoAttack accuracy must not exceed any single white-box attack's."""
    best = min(white_box.values()) if white_box else None
    values = {"autoattack": aa, "best_white_box": best}
    if aa is None or best is None:
        return Check("autoattack_vs_white_box", None, "AutoAttack or white-box not run", values)
    above = [k for k, v in white_box.items() if aa > v + tol]
    if above:
        return Check(
            "autoattack_vs_white_box",
            False,
            f"AutoAttack {aa:.2f}% above {', '.join(above)}",
            values,
        )
    return Check("autoattack_vs_white_box", True, "AutoAttack is the strongest", values)


def _not_below(
    name: str, what: str, acc: float | None, white_box: dict[str, float], tol: float
) -> Check:
    best = min(white_box.values()) if white_box else None
    values = {what: acc, "best_white_box": best}
    if acc is None or best is None:
        return Check(name, None, f"{what} or white-box attacks not run", values)
    if acc < best - tol:
        return Check(
            name,
            False,
            f"{what} {acc:.2f}% beats the best white-box {best:.2f}%: gradients are likely masked",
            values,
        )
    return Check(name, True, f"{what} {acc:.2f}% >= white-box {best:.2f}% - tol", values)


def black_box_not_below(square: float | None, white_box: dict[str, float], tol: float) -> Check:
    """The black-box Square attack must not beat the white-box attacks."""
    return _not_below("black_box_vs_white_box", "square", square, white_box, tol)


def transfer_not_below(transfer: float | None, white_box: dict[str, float], tol: float) -> Check:
    """PGD crafted on another model (the robust teacher) must not beat white-box attacks."""
    return _not_below("transfer_vs_white_box", "transfer", transfer, white_box, tol)


def gradients(model: nn.Module, x: Tensor, y: Tensor) -> Check:
    """Input gradients of the cross-entropy and of the CW margin must be finite, and the margin's
    must be non-zero, on every sampled image (x (N, C, H, W) in [0, 1], model in eval mode)."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    ce = F.cross_entropy(logits, y, reduction="sum")
    g_ce = torch.autograd.grad(ce, x, retain_graph=True)[0]
    # the margin max_{j != y} z_j - z_y, whose gradient vanishes only where the logits are
    # locally constant in the input (kappa large: the relu never cuts it off)
    g_margin = torch.autograd.grad(-cw_margin_loss(logits, y, kappa=1e9), x)[0]
    flat_ce, flat_m = g_ce.flatten(1), g_margin.flatten(1)
    nonfinite = int((~torch.isfinite(flat_ce).all(1) | ~torch.isfinite(flat_m).all(1)).sum())
    zero = int((flat_m.abs().sum(1) == 0).sum())
    values = {
        "samples": len(y),
        "zero_gradient": zero,
        "non_finite_gradient": nonfinite,
        "mean_abs_gradient": float(flat_m.abs().mean()),
    }
    if nonfinite or zero:
        return Check(
            "gradients",
            False,
            f"{zero} zero and {nonfinite} non-finite input gradients of {len(y)}",
            values,
        )
    return Check("gradients", True, f"finite, non-zero input gradients on {len(y)} images", values)


def autoattack_flags(messages: list[str] | None) -> Check:
    """The reference AutoAttack's own warnings (randomised or dynamic model, zero gradients,
    probabilities instead of logits, Square beating the white-box attacks)."""
    if messages is None:
        return Check("autoattack_flags", None, "AutoAttack not run", {"warnings": 0})
    if messages:
        return Check("autoattack_flags", False, "; ".join(messages), {"warnings": len(messages)})
    return Check("autoattack_flags", True, "no AutoAttack warnings", {"warnings": 0})


def summary(checks: list[Check]) -> dict[str, Any]:
    """Metrics form: each check's flag (true / false / null = not run) and measured values, and
    whether every check that ran passed."""
    ran = [c for c in checks if c.passed is not None]
    return {
        "passed": all(c.passed for c in ran),
        "n_failed": sum(1 for c in ran if not c.passed),
        **{c.name: c.as_dict() for c in checks},
    }
