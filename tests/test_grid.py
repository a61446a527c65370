"""Experiment grids (bmtard/experiments/grid.py): combinations, names, what may vary, validation."""

from __future__ import annotations

import pytest
import yaml

from bmtard.config import method_table
from bmtard.core.errors import ParamsError
from bmtard.experiments.grid import (
    apply,
    dvc_command,
    expand,
    experiment_params,
    methods,
    teacher_params,
    teacher_variant,
)

from conftest import ROOT

QUICK = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())


def test_every_combination_in_order_with_readable_names():
    exps = expand({"distill.method": ["sat", "bmtard"], "run.seed": [0, 1]})
    assert [e.name for e in exps] == [
        "method-sat_seed-0", "method-sat_seed-1", "method-bmtard_seed-0", "method-bmtard_seed-1",
    ]  # fmt: skip
    assert exps[1].overrides == {"distill.method": "sat", "run.seed": 1}
    assert methods(QUICK, exps) == ["sat", "bmtard"]
    assert methods(QUICK, expand({"run.seed": [0, 1]})) == [QUICK["distill"]["method"]]


def test_keys_that_end_alike_are_named_in_full():
    exps = expand({"distill.attack.eps": [4.0], "evaluate.eps": [8.0], "distill.arch": ["x/y"]})
    assert exps[0].name == "distill-attack-eps-4.0_evaluate-eps-8.0_distill-arch-x-y"


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"data.dataset": ["cifar100"]}, "grid key 'data.dataset': a grid varies distill.*, "),
        ({"data.val_limit": [100]}, "grid key 'data.val_limit': a grid varies"),
        ({"run.device": ["cpu"]}, "grid key 'run.device': a grid varies"),
        ({"run.seed": 3}, "grid key run.seed: expected a non-empty list of values"),
        ({"run.seed": []}, "grid key run.seed: expected a non-empty list of values"),
        ({"run.seed": [1, 1]}, "grid key run.seed: a value is listed twice"),
        ({"run.seed": [[1]]}, "grid key run.seed: [1] is not a number, string, boolean or null"),
        ({}, "grid = {}: expected a mapping of keys to lists of values"),
        ({"distill.arch": ["a/b", "a b"]}, "grid: two experiments would both be named 'arch-a-b'"),
        (["run.seed"], "grid = 'run.seed': expected a mapping"),
        ([{"run.seed": [0]}, {"run.seed": [0]}], "grid: experiment 'seed-0' is listed twice"),
        ([], "grid = []: expected a mapping"),
    ],
)
def test_bad_grids_are_one_line(grid, message):
    with pytest.raises(ParamsError) as e:
        expand(grid)
    assert str(e.value).startswith(message)


def test_each_experiment_is_validated_as_a_params_file():
    (good,) = expand({"distill.method": ["ard"]})
    merged, params = experiment_params(QUICK, good)
    assert params.distill.method == "ard" and merged["distill"]["method"] == "ard"
    assert QUICK["distill"]["method"] == "bmtard"  # the base is not changed
    (bad,) = expand({"distill.method": ["kd"]})
    with pytest.raises(ParamsError) as e:
        experiment_params(QUICK, bad)
    assert str(e.value) == (
        f"experiment method-kd: distill.method = 'kd': allowed are {', '.join(method_table.NAMES)}"
    )
    (igdm_on_sat,) = expand({"distill.method": ["sat"], "distill.igdm.alpha": [1.0]})
    with pytest.raises(ParamsError) as e:
        experiment_params(QUICK, igdm_on_sat)
    assert str(e.value) == (
        "experiment method-sat_alpha-1.0: distill.igdm.alpha = 1 with method sat: IGDM composes "
        "with ard, rslad, mtard, bmtard, adaad only (0 turns it off)"
    )
    with pytest.raises(ParamsError, match=r"^grid key distill\.optim\.nope: no such key"):
        apply(QUICK, {"distill.optim.nope": 1})


def test_a_list_of_grids_takes_their_experiments_together():
    """IGDM only where it composes: a list of products, not one product of every value."""
    exps = expand(
        [
            {"distill.method": ["sat"], "run.seed": [0]},
            {"distill.method": ["bmtard"], "distill.igdm.alpha": [0.0, 1.0], "run.seed": [0]},
        ]
    )
    assert [e.name for e in exps] == [
        "method-sat_seed-0", "method-bmtard_alpha-0.0_seed-0", "method-bmtard_alpha-1.0_seed-0",
    ]  # fmt: skip
    assert methods(QUICK, exps) == ["sat", "bmtard"]
    for exp in exps:
        experiment_params(QUICK, exp)  # each one valid


def test_the_shipped_grid_covers_every_method_and_seeds_the_new_ones():
    from bmtard.config import method_table

    grid = yaml.safe_load((ROOT / "presets" / "grid.yaml").read_text())["grid"]
    exps = expand(grid)
    assert set(methods(QUICK, exps)) == set(method_table.NAMES)
    for exp in exps:
        experiment_params(QUICK, exp)
    seeds: dict[tuple[str, float], set[int]] = {}
    for exp in exps:
        o = exp.overrides
        seeds.setdefault((o["distill.method"], o.get("distill.igdm.alpha", 0.0)), set()).add(
            o["run.seed"]
        )
    for method in ("bmtard", "adaad"):
        for alpha in (0.0, 1.0):
            assert len(seeds[(method, alpha)]) >= 2, (method, alpha)


def test_the_same_grid_as_a_dvc_queue_command():
    assert dvc_command([{"distill.method": ["sat"]}, {"run.seed": [0, 1]}]) == (
        "dvc exp run --queue -S 'distill.method=sat'\ndvc exp run --queue -S 'run.seed=0,1'"
    )
    assert dvc_command({"distill.method": ["sat", "bmtard"], "run.seed": [0, 1]}) == (
        "dvc exp run --queue -S 'distill.method=sat,bmtard' -S 'run.seed=0,1'"
    )
    assert dvc_command({"evaluate.sanity.enabled": [True, False]}) == (
        "dvc exp run --queue -S 'evaluate.sanity.enabled=true,false'"
    )


def test_teacher_keys_are_named_in_full_and_null_is_a_value():
    exps = expand({"clean_teacher.published": [None, "AutoAttack_ResNet18"], "run.seed": [0]})
    assert [e.name for e in exps] == [
        "clean_teacher-published-null_seed-0",
        "clean_teacher-published-AutoAttack-ResNet18_seed-0",
    ]
    assert exps[0].overrides["clean_teacher.published"] is None
    both = expand({"clean_teacher.width": [0.5], "robust_teacher.width": [0.2]})
    assert both[0].name == "clean_teacher-width-0.5_robust_teacher-width-0.2"
    cmd = dvc_command({"clean_teacher.published": [None, "AutoAttack_ResNet18"]})
    assert cmd == "dvc exp run --queue -S 'clean_teacher.published=null,AutoAttack_ResNet18'"


def test_teacher_variants_are_shared_by_experiments_that_set_them_alike():
    """An experiment that sets a teacher's keys as params.yaml has them learns from params.yaml's
    teacher (variant None); others from a variant named by what they set otherwise, one per
    distinct setting, whose params are params.yaml with those values and nothing of the
    experiment's own."""
    exps = expand(
        {
            "distill.method": ["mtard", "bmtard"],
            "clean_teacher.published": [None, "AutoAttack_ResNet18"],
            "run.seed": [0, 1],
        }
    )
    variants = {e.name: teacher_variant(QUICK, e, "clean") for e in exps}
    assert set(variants.values()) == {None, "clean_teacher-published-AutoAttack-ResNet18"}
    assert sum(v is None for v in variants.values()) == 4
    assert all(teacher_variant(QUICK, e, "robust") is None for e in exps)
    imported = next(e for e in exps if variants[e.name] is not None and "bmtard" in e.name)
    params = teacher_params(QUICK, imported, "clean")
    assert params["clean_teacher"]["published"] == "AutoAttack_ResNet18"
    assert params["distill"] == QUICK["distill"] and params["run"] == QUICK["run"]
    # a value equal to params.yaml's is no variant: the same teacher, computed once
    same = expand({"clean_teacher.width": [QUICK["clean_teacher"]["width"], 0.5]})
    assert [teacher_variant(QUICK, e, "clean") for e in same] == [None, "clean_teacher-width-0.5"]


def test_a_teacher_grid_is_validated_per_experiment():
    exps = expand({"robust_teacher.published": ["Chen2021LTD_WRN34_20", "Gowal2020Uncovering"]})
    experiment_params(QUICK, exps[0])  # a CIFAR-10 teacher of the quick preset's CIFAR-10
    with pytest.raises(ParamsError) as err:
        experiment_params(QUICK, exps[1])
    assert str(err.value).startswith(
        "experiment robust_teacher-published-Gowal2020Uncovering: "
        "robust_teacher.published = 'Gowal2020Uncovering': not a published cifar10 teacher"
    )
