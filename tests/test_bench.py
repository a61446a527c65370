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
    argv += ["--cases", "bmtard,official,trades,pgd20"]
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


TINY = ["--device", "cpu", "--width", "0.0625", "--steps", "1", "--warmup", "0"]
TINY += ["--teacher-adv", "preact_resnet18", "--teacher-nat", "resnet18"]


def test_bench_gives_every_batch_size_both_orders_and_a_profile(tmp_path, capsys):
    """--batch 2,4 --order both: the pair is timed ours, official, official, ours at each batch
    size, with a ratio per order; --profile lists the ops with the most self time."""
    out = tmp_path / "bench.json"
    argv = [*TINY, "--batch", "2,4", "--cases", "bmtard,official", "--order", "both"]
    assert bench_step.main([*argv, "--profile", "3", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert [(r["case"], r["batch"]) for r in record["results"]] == [
        ("B-MTARD step (fp32)", 2),
        ("B-MTARD official structure (fp32)", 2),
        ("B-MTARD step (fp32)", 4),
        ("B-MTARD official structure (fp32)", 4),
    ]
    assert record["ratio"] is None and [q["batch"] for q in record["ratios"]] == [2, 4]
    pairs = [record["results"][:2], record["results"][2:]]
    for q, (new, official) in zip(record["ratios"], pairs, strict=True):
        assert q["ours_over_official"] == pytest.approx(
            new["images_per_s"] / official["images_per_s"]
        )
        assert q["ours_first"] > 0 and q["official_first"] > 0
    for r in record["results"]:
        assert len(r["profile"]) == 3 and all(0 < p["share"] <= 1 for p in r["profile"])
        assert sum(p["calls"] for p in r["profile"]) > 0
    text = capsys.readouterr().out
    assert (
        "at batch 2" in text and "ours first" in text and "the ops with the most self time" in text
    )


def test_bench_measures_the_newer_methods_with_their_flops(tmp_path):
    """The steps of AdaAD, AdaAD+IGDM, DGAD, CIARD and PeerAiD, built as the distill stage
    builds them, with FLOPs counted through every network they run (AdaAD's attack goes through
    the robust teacher: more work than B-MTARD's; IGDM adds to it) and each method's epochs."""
    out = tmp_path / "bench.json"
    cases = "bmtard,adaad,adaad_igdm,dgad,ciard,peeraid"
    assert bench_step.main([*TINY, "--batch", "4", "--cases", cases, "--json", str(out)]) == 0
    rows = {r["case"].split(" step")[0]: r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == ["B-MTARD", "AdaAD", "AdaAD+IGDM", "DGAD", "CIARD", "PeerAiD"]
    flops = {k: r["gflop_per_image"] for k, r in rows.items()}
    assert all(v > 0 for v in flops.values()), flops
    assert flops["AdaAD"] > flops["B-MTARD"] and flops["AdaAD+IGDM"] > flops["AdaAD"], flops
    assert flops["DGAD"] >= flops["AdaAD"] and flops["CIARD"] > flops["B-MTARD"], flops
    assert [rows[k]["projected_what"] for k in ("AdaAD", "DGAD", "CIARD", "PeerAiD")] == [
        "200 epochs", "200 epochs", "300 epochs", "300 epochs",
    ]  # fmt: skip


def test_teacher_forwards_under_inference_mode_are_counted():
    """A frozen teacher runs under torch.inference_mode, which dispatch modes do not see: the
    count runs it as no_grad, the same arithmetic."""
    layer, x, real = torch.nn.Linear(16, 8), torch.rand(4, 16), torch.inference_mode

    def step() -> None:
        with torch.inference_mode():
            layer(x)

    assert bench_step.flops_of(step) == 2 * 4 * 16 * 8
    assert torch.inference_mode is real  # put back
