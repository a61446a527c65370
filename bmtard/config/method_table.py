"""The student-training methods of the paper's comparison, declared once (spec section 9).

Every reader derives from ``METHODS``: the allowed values of ``distill.method``
(``bmtard.config.params``), which teachers the pipeline trains and loads for a method (the teacher
stages, the distillation and the evaluation), and each method's published settings, which fill the
``null`` values of ``distill.optim.epochs``, ``distill.optim.milestones`` and
``distill.attack.init``. Plain data, no torch: the configuration imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: teacher roles, as in the stage names (train_clean_teacher, train_robust_teacher)
CLEAN, ROBUST = "clean", "robust"
#: the schedule of B-MTARD, MTARD and RSLAD's official code: 300 epochs, lr x 0.1 after 215/260/285
DISTILL_EPOCHS, DISTILL_MILESTONES = 300, (215, 260, 285)


@dataclass(frozen=True)
class MethodSpec:
    """One way of training the student.

    teachers: the roles it learns from (none, the robust one, or both). epochs, milestones, init:
    its published schedule and training-attack start (``distill.optim``, ``distill.attack``
    take these where they are null). source: where the settings come from.
    """

    name: str  # the value of distill.method, and the method in records and tables
    label: str  # how tables and plots name it (the paper's)
    teachers: tuple[str, ...]
    epochs: int
    milestones: tuple[int, ...]
    init: str  # the training attack's start (bmtard.attacks.pgd INITS)
    # whether its official code follows the KL-helper convention that scales the KL terms by the
    # dataset's factor (x 10 on CIFAR-100: bmtard.config.dataset_table, distill.kl_scale null)
    kl_convention: bool
    source: str


METHODS = (
    MethodSpec(
        "sat", "SAT", (), DISTILL_EPOCHS, DISTILL_MILESTONES, "uniform", False,
        "PGD-AT (Madry et al.) of the student alone: CE on PGD-CE examples from a uniform start; "
        "the schedule is not given by the paper, the distillation one is used",
    ),
    MethodSpec(
        "trades", "TRADES", (), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", False,
        "TRADES (Zhang et al.) of the student alone, beta distill.trades_beta, the TRADES code's "
        "KL attack from the 0.001-Gaussian start; the distillation schedule",
    ),
    MethodSpec(
        "ard", "ARD", (ROBUST,), 200, (100, 150), "uniform_unclamped", False,
        "ARD's main.py: robust teacher on clean x, tau 30, alpha 1, train-mode PGD-CE from an "
        "unclamped uniform start, 200 epochs with lr steps at 100 and 150; its nn.KLDivLoss has "
        "no CIFAR-100 factor",
    ),
    MethodSpec(
        "rslad", "RSLAD", (ROBUST,), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "RSLAD's code: robust teacher on clean x at tau 1, KL attack, weights 5/6 and 1/6",
    ),
    MethodSpec(
        "mtard", "MTARD", (CLEAN, ROBUST), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "MTARD's ECCV code: both teachers at tau 1, w_adv = 1 - w_nat (distill.balance's "
        "w_adv_init and weight_lr)",
    ),
    MethodSpec(
        "bmtard", "B-MTARD", (CLEAN, ROBUST), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "B-MTARD's official code: Entropy-Based Balance and Normalization Loss Balance",
    ),
)  # fmt: skip

NAMES = tuple(m.name for m in METHODS)
BY_NAME = {m.name: m for m in METHODS}


def method(name: str) -> MethodSpec:
    """The spec of ``name`` (one of ``NAMES``)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: allowed are {', '.join(NAMES)}") from None


def needs(methods: str | list[str] | tuple[str, ...], role: str) -> bool:
    """Whether any of ``methods`` learns from the ``role`` teacher (clean | robust)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    return any(role in method(n).teachers for n in names)
