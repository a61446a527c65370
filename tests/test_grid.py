"""Experiment grids (bmtard/experiments/grid.py): combinations, names, what may vary, validation."""

from __future__ import annotations

import pytest
import yaml

from bmtard.core.errors import ParamsError
from bmtard.experiments.grid import apply, dvc_command, expand, experiment_params, methods

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
        "experiment method-kd: distill.method = 'kd': allowed are sat, trades, ard, rslad, "
        "mtard, bmtard, adaad, dgad, ciard, peeraid"
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
