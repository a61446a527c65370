"""The benchmark script runs (tiny models, one step per case) and reports consistent figures.
It measures speed; this test never judges a speed, only that the script keeps working."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import bench_step


def test_bench_runs_every_case_and_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--width", "0.0625", "--batch", "4", "--steps", "1"]
    assert bench_step.main([*argv, "--warmup", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    cases = [r["case"] for r in record["results"]]
    assert cases == [
        "B-MTARD step (fp32)",
        "B-MTARD official structure (fp32)",
        "TRADES step (fp32)",
        "PGD-20 eval batch (fp32)",
    ]
    new, official, trades, pgd = record["results"]
    assert record["ratio"] == pytest.approx(new["images_per_s"] / official["images_per_s"])
    assert new["gflop_per_image"] == official["gflop_per_image"] > 0  # the same work
    for r in record["results"]:
        assert r["images_per_s"] == pytest.approx(4000 / r["ms_per_step"])
        assert r["peak_fraction"] is None  # no known peak for a CPU
        assert r["peak_mib"] > 0
    steps = math.ceil(300 * 50_000 / 4)
    assert new["projected_hours"] == pytest.approx(steps * new["ms_per_step"] / 3.6e6)
    assert "B-MTARD step / official structure" in capsys.readouterr().out


def test_flop_count_matches_the_formula_of_a_linear_layer():
    layer = torch.nn.Linear(16, 8)
    x = torch.rand(4, 16, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    # forward 2*4*16*8; backward: input grad and weight grad, as much again each
    assert bench_step.flops_of(step) == 3 * 2 * 4 * 16 * 8


def test_bench_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        bench_step.main(["--cases", "bmtard,nope"])
    assert e.value.code == 2
    assert "--cases: unknown nope" in capsys.readouterr().err
