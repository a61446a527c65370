"""The evaluation protocol's attacks, declared once (spec section 6.2).

Every reader derives from ``ATTACKS``: the allowed values of ``evaluate.attacks``
(``bmtard.config.params``), the attack functions of the evaluation (``bmtard.evaluation.protocol``,
a loop over this table), the white-box set of the sanity checks (``bmtard.evaluation.sanity``), the
attacks with a part of their own (``roles``: ``ROLES``), and the order and headers of result
columns. Sizes are in 1/255, converted to pixel units in one place (``pixels``). Plain data,
no torch: the configuration imports it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the protocol at L-inf radius eps (given at evaluation time).

    loss: ``ce`` (cross-entropy with the true labels), ``cw`` (CW margin with kappa) or
    ``autoattack`` (the reference package's standard version). steps: gradient steps (1 for
    FGSM, whose step is eps itself: ``step_size`` None). start: ``uniform`` in the eps-ball or
    ``none``. white_box: a single gradient attack, which AutoAttack and black-box attacks must not
    beat (the sanity checks).
    """

    name: str  # the key in metrics and in evaluate.attacks
    column: str  # the header of result tables (the paper's)
    loss: str
    steps: int
    step_size: float | None  # 1/255; None = eps
    start: str
    white_box: bool
    roles: tuple[str, ...] = ()  # its parts beyond a column of the table (ROLES)


#: what an attack of the table may be used for besides its own column
ROLES = {
    "more_steps": "a reported PGD: a PGD with more steps and restarts must not do better (sanity)",
    "transfer": "crafted on the robust teacher and shown to the student (the transfer check)",
    "teacher_check": "the teachers' robust accuracy in the evaluation (beside their clean one)",
    "ensemble": "the strongest attack: it must not do worse than a white-box one (sanity), and "
    "its reference code's own flags are a sanity check",
    "w_robust": "W-Robust = (clean + this attack) / 2, the headline of the comparison",
}

ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec("fgsm", "FGSM", "ce", 1, None, "none", True),
    AttackSpec("pgd_sat", "PGD-SAT", "ce", 20, 2.0, "uniform", True, ("more_steps", "transfer")),
    AttackSpec(  # 0.765/255 = 0.003 pixels, the official monitor's step
        "pgd_trades", "PGD-TRADES", "ce", 20, 0.765, "uniform", True,
        ("more_steps", "teacher_check"),
    ),
    AttackSpec("cw_inf", "CW∞", "cw", 30, 2.0, "uniform", True),
    AttackSpec("autoattack", "AA", "autoattack", 0, None, "none", False, ("ensemble", "w_robust")),
)  # fmt: skip

BY_NAME: dict[str, AttackSpec] = {a.name: a for a in ATTACKS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
WHITE_BOX: tuple[str, ...] = tuple(a.name for a in ATTACKS if a.white_box)


def with_role(role: str) -> tuple[str, ...]:
    """The names of the attacks that have ``role`` (one of ``ROLES``), in the table's order."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: allowed are {', '.join(ROLES)}")
    return tuple(a.name for a in ATTACKS if role in a.roles)


def the(role: str) -> str:
    """The one attack that has ``role`` (a role held by exactly one attack)."""
    (name,) = with_role(role)
    return name


def pixels(size: float) -> float:
    """A size in 1/255 as a fraction of the pixel range [0, 1]: the one conversion."""
    return size / 255
