"""The protocol's attacks are declared once (bmtard/config/attack_table.py) and every reader derives
from that table; the attack functions it yields carry exactly the protocol's settings."""

from __future__ import annotations

import functools

import pytest

from bmtard.attacks.autoattack import AutoAttackRun
from bmtard.attacks.cw import cw_inf
from bmtard.attacks.fgsm import fgsm
from bmtard.attacks.pgd import pgd_ce
from bmtard.config import attack_table
from bmtard.config.attack_table import ATTACKS, NAMES, pixels
from bmtard.config.schema import EVAL_ATTACKS, EvaluateConfig
from bmtard.evaluation import sanity
from bmtard.evaluation.protocol import protocol_attack

# the protocol written out by hand (spec section 6.2), at eps 8/255 in pixel units
E = 8 / 255
EXPECTED = {
    "fgsm": (fgsm, {"eps": E}),
    "pgd_sat": (pgd_ce, {"eps": E, "step_size": 2 / 255, "steps": 20, "init": "uniform"}),
    "pgd_trades": (pgd_ce, {"eps": E, "step_size": 0.003, "steps": 20, "init": "uniform"}),
    "cw_inf": (cw_inf, {"eps": E, "step_size": 2 / 255, "steps": 30, "kappa": 50.0}),
    "autoattack": (AutoAttackRun, {"eps": E, "version": "standard", "seed": 0}),
}


@pytest.mark.parametrize("name", NAMES)
def test_each_attack_has_the_protocols_settings_exactly(name):
    attack = protocol_attack(name, 8.0)
    func, keywords = EXPECTED[name]
    if isinstance(attack, AutoAttackRun):  # its own callable, which keeps the flags
        assert attack == AutoAttackRun(**keywords)  # == on floats: bit for bit
        return
    assert isinstance(attack, functools.partial)
    assert attack.func is func and attack.keywords == keywords  # == on floats: bit for bit


def test_the_attacks_with_a_part_of_their_own_are_named_by_role():
    from bmtard.config.attack_table import ROLES, the, with_role

    assert with_role("more_steps") == ("pgd_sat", "pgd_trades")
    assert (the("transfer"), the("teacher_check")) == ("pgd_sat", "pgd_trades")
    assert (the("ensemble"), the("w_robust")) == ("autoattack", "autoattack")
    assert {r for a in ATTACKS for r in a.roles} == set(ROLES)
    with pytest.raises(ValueError, match="role 'x'"):
        with_role("x")


def test_readers_derive_from_the_table():
    assert NAMES == tuple(EXPECTED) == EVAL_ATTACKS
    assert EvaluateConfig().attacks == list(NAMES)
    assert sanity.WHITE_BOX == ("fgsm", "pgd_sat", "pgd_trades", "cw_inf")
    assert [a.column for a in ATTACKS] == ["FGSM", "PGD-SAT", "PGD-TRADES", "CW∞", "AA"]


def test_the_one_unit_conversion():
    assert pixels(255) == 1.0 and pixels(2) == 2 / 255
    assert pixels(0.765) == 0.003  # PGD_TRADES' step, the official monitor's


def test_an_unknown_attack_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed are fgsm, pgd_sat, pgd_trades, cw_inf"):
        protocol_attack("pgd_100", 8.0)


def test_specs_are_well_formed():
    for a in attack_table.ATTACKS:
        assert a.loss in ("ce", "cw", "autoattack") and a.start in ("uniform", "none")
        assert a.white_box == (a.loss != "autoattack")
        assert a.step_size is None or a.step_size > 0
