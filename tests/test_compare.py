"""python -m bmtard.experiments.compare: runs of either engine gathered into one table and one
picture."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from bmtard.config import attack_table
from bmtard.experiments.compare import main, rows, to_markdown, write_comparison
from bmtard.experiments.reported import REPORTED
from bmtard.experiments.runs import COLUMNS, gather, parse_exp_show
from bmtard.experiments.seeds import groups, summary_rows
from bmtard.experiments.tradeoff import points

from conftest import ROOT

PARAMS = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())


def _metrics(clean: float, aa: float | None, passed: bool | None = True) -> dict:
    acc = {"clean": clean, "fgsm": clean - 20, "pgd_sat": clean - 30, "pgd_trades": clean - 29,
           "cw_inf": clean - 32}  # fmt: skip
    if aa is not None:
        acc["autoattack"] = aa
    out = {**acc, "epoch": 2}  # as the evaluate stage writes it
    if aa is not None:
        out["w_robust"] = (clean + aa) / 2
    if passed is not None:
        out["sanity"] = "passed" if passed else "failed"
    return out


def _params(method: str, seed: int = 0, **dotted) -> dict:
    p = json.loads(json.dumps(PARAMS))
    p["distill"]["method"], p["run"]["seed"] = method, seed
    for key, value in dotted.items():
        section, *path, last = key.split("__")
        node = p[section]
        for part in path:
            node = node[part]
        node[last] = value
    return p


def _finished(folder, method, seed, metrics, **dotted) -> None:
    (folder / "metrics").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(_params(method, seed, **dotted)))
    (folder / "metrics" / "evaluate.json").write_text(json.dumps(metrics))


def test_columns_follow_the_protocol_table():
    assert [h for h, _ in COLUMNS] == ["Clean", *(a.column for a in attack_table.ATTACKS)]
    assert [h for h, _ in COLUMNS] == [
        "Clean",
        "FGSM",
        "PGD-SAT",
        "PGD-TRADES",
        "CW∞",
        "AA",
    ]  # fmt: skip  (the paper's order)


def test_workspace_and_grid_runs_in_one_table(tmp_path):
    _finished(tmp_path, "bmtard", 0, _metrics(80.0, 40.0))
    _finished(tmp_path / "results" / "method-sat_seed-1", "sat", 1, _metrics(70.0, 45.0, False))
    (tmp_path / "results" / "method-ard_seed-0").mkdir()  # not finished: left out
    runs = gather(tmp_path, use_dvc=False)
    assert [(r.name, r.engine, r.label, r.seed, r.sanity) for r in runs] == [
        ("workspace", "workspace", "B-MTARD", 0, "passed"),
        ("method-sat_seed-1", "snakemake", "SAT", 1, "failed"),
    ]
    table = rows(runs)
    assert list(table[0]) == [
        "Experiment", "Engine", "Method", "Teachers", "Student", "Dataset", "Seed",
        "Clean", "FGSM", "PGD-SAT", "PGD-TRADES", "CW∞", "AA", "W-Robust", "Sanity",
        "Train min", "Train img/s", "Peak GB", "GPU-h", "Eval min", "Device",
    ]  # fmt: skip
    assert table[1]["W-Robust"] == 57.5 and table[1]["AA"] == 45.0
    md = to_markdown(table).splitlines()
    assert md[0].startswith("| Experiment | Engine | Method |") and md[0].endswith(
        "| Sanity | Train min | Train img/s | Peak GB | GPU-h | Eval min | Device |"
    )
    assert md[3] == (
        "| method-sat_seed-1 | snakemake | SAT | none | resnet18 | cifar10 | 1 | 70.00 | 50.00 "
        "| 40.00 | 41.00 | 38.00 | 45.00 | 57.50 | failed | — | — | — | — | — | — |"
    )


def test_missing_attacks_and_checks_are_marked_not_invented(tmp_path):
    _finished(tmp_path, "rslad", 0, _metrics(60.0, None, passed=None))
    (row,) = rows(gather(tmp_path, use_dvc=False))
    assert row["AA"] is None and row["W-Robust"] is None and row["Sanity"] == "not run"
    assert "| 60.00 | 40.00 | 30.00 | 31.00 | 28.00 | — | — | not run |" in to_markdown([row])
    assert points(gather(tmp_path, use_dvc=False))[0]["source"].startswith("reported")


def test_dvc_experiments_are_read_from_exp_show_json():
    shown = [
        {"rev": "workspace", "name": None, "data": {}, "experiments": None},
        {
            "rev": "abc",
            "name": "main",
            "data": {},
            "experiments": [
                {"revs": [{"rev": "e1", "name": "quick-vole", "data": {
                    "params": {"params.yaml": {"data": _params("sat", 3)}},
                    "metrics": {"metrics/evaluate.json": {"data": _metrics(70.0, 41.0)}},
                }}]},
                {"revs": [{"rev": "e2", "name": "queued-one", "data": {}}]},
            ],
        },
    ]  # fmt: skip
    (run,) = parse_exp_show(shown)
    assert (run.name, run.engine, run.method, run.seed, run.accuracy["autoattack"]) == (
        "quick-vole", "dvc", "sat", 3, 41.0,
    )  # fmt: skip


def test_the_committed_baseline_is_a_row_named_as_dvc_names_it():
    """After a commit and an experiment, ``dvc exp show`` has the workspace, the baseline (by its
    branch, or its short commit when detached) and the experiment: the comparison has the
    baseline and the experiment from DVC (the workspace comes from its files)."""

    def row(method, clean, aa):
        return {
            "params": {"params.yaml": {"data": _params(method)}},
            "metrics": {"metrics/evaluate.json": {"data": _metrics(clean, aa)}},
        }

    shown = [
        {"rev": "workspace", "name": None, "data": row("bmtard", 60.0, 30.0), "experiments": None},
        {"rev": "abc1234def", "name": "main", "data": row("bmtard", 60.0, 30.0), "experiments": [
            {"revs": [{"rev": "e1", "name": "quick-vole", "data": row("rslad", 58.0, 31.0)}]},
        ]},
        {"rev": "0123456789", "name": None, "data": row("sat", 50.0, 20.0), "experiments": None},
        {"rev": "fedcba9876", "name": None, "data": {}, "experiments": None},  # no metrics yet
    ]  # fmt: skip
    runs = parse_exp_show(shown)
    assert [(r.name, r.method, r.w_robust) for r in runs] == [
        ("main", "bmtard", 45.0), ("quick-vole", "rslad", 44.5), ("0123456", "sat", 35.0),
    ]  # fmt: skip


def test_metrics_written_before_the_split_still_read(tmp_path):
    old = {
        "accuracy": {"clean": 60.0, "fgsm": 40.0, "autoattack": 30.0, "worst_case": 29.0},
        "weighted_robust": {"autoattack": 45.0, "fgsm": 50.0},
        "sanity": {"passed": False, "n_failed": 1},
    }
    _finished(tmp_path, "sat", 0, old)
    (run,) = gather(tmp_path, use_dvc=False)
    assert (run.w_robust, run.sanity, run.accuracy["fgsm"]) == (45.0, "failed", 40.0)


def test_files_and_picture(tmp_path):
    _finished(tmp_path, "bmtard", 0, _metrics(85.0, 45.0))
    _finished(tmp_path / "results" / "a", "sat", 0, _metrics(80.0, 44.0))
    out = tmp_path / "comparison"
    written = write_comparison(gather(tmp_path, use_dvc=False), out)
    assert [p.name for p in written] == [
        "comparison.csv", "comparison.md", "comparison.html", "summary.csv", "tradeoff.csv",
        "tradeoff-cifar10.png",
    ]  # fmt: skip
    png = (out / "tradeoff-cifar10.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    with open(out / "tradeoff.csv") as f:
        pts = list(csv.DictReader(f))
    runs = [p for p in pts if p["source"] == "run"]
    assert [(p["name"], p["method"], float(p["clean"])) for p in runs] == [
        ("workspace", "B-MTARD", 85.0),
        ("a", "SAT", 80.0),
    ]
    ref = [p for p in pts if p["source"] != "run"]
    assert len(ref) == sum(r.dataset == "cifar10" for r in REPORTED)
    assert all(p["name"].endswith("(reported)") for p in ref)
    assert ("B-MTARD (reported)", 88.2, 47.44) in [
        (p["name"], float(p["clean"]), float(p["autoattack"])) for p in ref
    ]


def test_nothing_to_compare_is_one_line(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "--no-dvc", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: no finished experiment")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("bad", ["{", "[1, 2"])
def test_an_unreadable_run_is_skipped_with_a_warning(tmp_path, bad, caplog):
    _finished(tmp_path / "results" / "good", "sat", 0, _metrics(70.0, 40.0))
    _finished(tmp_path / "results" / "bad", "sat", 0, _metrics(70.0, 40.0))
    (tmp_path / "results" / "bad" / "metrics" / "evaluate.json").write_text(bad)
    runs = gather(tmp_path, use_dvc=False)
    assert [r.name for r in runs] == ["good"]
    assert "skipped" in caplog.text


def test_seeds_are_aggregated_per_setting_with_mean_std_and_n(tmp_path):
    """Runs that differ only in run.seed form one setting: each column's mean, sample standard
    deviation and number of runs; a column a run lacks counts fewer runs; the workspace that
    repeats a grid run is counted once; settings of one method apart by a parameter are named by
    it; IGDM on is a method of its own in the tables."""
    results = tmp_path / "results"
    _finished(results / "b0", "bmtard", 0, _metrics(60.0, 30.0))
    _finished(results / "b1", "bmtard", 1, _metrics(62.0, 34.0))
    _finished(results / "b2", "bmtard", 2, _metrics(64.0, None))  # no AutoAttack
    _finished(tmp_path, "bmtard", 2, _metrics(64.0, None))  # the workspace: b2 again
    _finished(results / "t0", "bmtard", 0, _metrics(50.0, 20.0), distill__balance__tau_lr=0.002)
    _finished(results / "i0", "bmtard", 0, _metrics(55.0, 25.0), distill__igdm__alpha=1.0)
    found = groups(gather(tmp_path, use_dvc=False))
    assert [(g.label, g.seeds) for g in found] == [  # in the order first seen
        ("B-MTARD (distill.balance.tau_lr=0.001)", [0, 1, 2]),
        ("B-MTARD+IGDM", [0]),
        ("B-MTARD (distill.balance.tau_lr=0.002)", [0]),
    ]  # fmt: skip
    row = summary_rows(found)[0]
    assert row["Seeds"] == "0,1,2" and row["Sanity"] == "3 passed"
    assert row["Clean"] == "62.00 ± 2.00 (3)"  # sample std of 60, 62, 64
    assert row["AA"] == "32.00 ± 2.83 (2)"  # sqrt(8): the third run has no AutoAttack
    assert row["W-Robust"] == "46.50 ± 2.12 (2)"
    assert summary_rows(found)[2]["Clean"] == "50.00 (1)"
    out = tmp_path / "comparison"
    write_comparison(gather(tmp_path, use_dvc=False), out)
    with open(out / "summary.csv") as f:
        first = next(csv.DictReader(f))
    assert (float(first["Clean mean"]), float(first["Clean std"]), first["AA n"]) == (62, 2, "2")
    assert (
        "| B-MTARD (distill.balance.tau_lr=0.001) | clean: resnet56×0.25 (trained) · robust: "
        "wrn34_10×0.1 (trained) | resnet18 | cifar10 | 0,1,2 |"
        in (out / "comparison.md").read_text()
    )


def test_runs_of_other_teachers_are_other_settings_with_a_teachers_column(tmp_path):
    """A grid over the clean teacher: B-MTARD from each teacher is a setting of its own (seeds
    grouped within a teacher), named by its teachers in a column rather than in its label; SAT,
    which learns from no teacher, is one setting whatever its clean teacher would have been; the
    picture draws them (one marker per teacher setting)."""
    results = tmp_path / "results"
    for seed, clean in ((0, 40.0), (1, 42.0)):
        _finished(results / f"b-null-{seed}", "bmtard", seed, _metrics(clean, 10.0))
        _finished(
            results / f"b-rn18-{seed}", "bmtard", seed, _metrics(clean + 10, 12.0),
            clean_teacher__published="AutoAttack_ResNet18",
        )  # fmt: skip
        _finished(
            results / f"sat-{seed}", "sat", seed, _metrics(41.0, 22.0),
            clean_teacher__published="AutoAttack_ResNet18" if seed else None,
        )  # fmt: skip
    runs = gather(tmp_path, use_dvc=False)
    found = groups(runs)
    assert [(g.label, g.teachers, g.seeds) for g in found] == [
        ("B-MTARD", "clean: resnet56×0.25 (trained) · robust: wrn34_10×0.1 (trained)", [0, 1]),
        ("B-MTARD", "clean: AutoAttack_ResNet18 · robust: wrn34_10×0.1 (trained)", [0, 1]),
        ("SAT", "none", [0, 1]),
    ]
    assert [g.stat("clean").mean for g in found] == [41.0, 51.0, 41.0]
    assert rows(runs)[2]["Teachers"] == found[1].teachers  # b-null-0, b-null-1, b-rn18-0
    written = write_comparison(runs, tmp_path / "comparison")
    assert tmp_path / "comparison" / "tradeoff-cifar10.png" in written
    summary = (tmp_path / "comparison" / "comparison.md").read_text()
    assert "| B-MTARD | clean: AutoAttack_ResNet18 · robust: wrn34_10×0.1 (trained) |" in summary


def test_what_each_run_cost_per_run_and_over_seeds(tmp_path):
    """The cost files beside a run give its cost columns (a run without them: blank), their mean
    and spread over seeds, the cost picture, and the HTML page of the Snakemake report."""
    from test_cost import _costs

    results = tmp_path / "results"
    for seed, minutes in ((0, 10.0), (1, 14.0)):
        _finished(results / f"b{seed}", "bmtard", seed, _metrics(60.0 + seed, 30.0))
        _costs(results / f"b{seed}", train_s=minutes * 60)
    _finished(results / "s0", "sat", 0, _metrics(55.0, 28.0))  # costs not recorded
    runs = gather(tmp_path, use_dvc=False)
    table = {r["Experiment"]: r for r in rows(runs)}
    assert (table["b0"]["Train min"], table["b1"]["Train min"]) == (10.0, 14.0)
    assert (table["b0"]["Peak GB"], table["b0"]["Eval min"], table["b0"]["GPU-h"]) == (
        2.0, 2.0, pytest.approx(1 / 6),
    )  # fmt: skip
    assert table["b0"]["Device"] == "NVIDIA H100" and table["s0"]["Device"] == "—"
    assert table["s0"]["Train min"] is None
    summary = summary_rows(groups(runs))
    assert summary[0]["Train min"] == "12.00 ± 2.83 (2)" and summary[1]["Train min"] == "—"
    out = tmp_path / "comparison"
    written = write_comparison(runs, out)
    assert out / "cost-cifar10.png" in written
    assert (out / "cost-cifar10.png").read_bytes().startswith(b"\x89PNG")
    page = (out / "comparison.html").read_text()
    assert page.count("<table>") == 2 and "<th>Train min</th>" in page and "12.00 ± 2.83" in page
    md = (out / "comparison.md").read_text()
    assert "| Train min | Train img/s | Peak GB | GPU-h | Eval min | Device |" in md


def test_no_cost_picture_without_costs(tmp_path):
    _finished(tmp_path, "sat", 0, _metrics(55.0, 28.0))
    written = write_comparison(gather(tmp_path, use_dvc=False), tmp_path / "c")
    assert not [p for p in written if p.name.startswith("cost-")]


def test_a_dvc_rows_cost_comes_from_its_commit():
    shown = [{"rev": "workspace", "data": {}, "experiments": [{"revs": [{
        "rev": "abc123", "name": "exp-1", "data": {
            "params": {"params.yaml": {"data": _params("sat")}},
            "metrics": {"metrics/evaluate.json": {"data": _metrics(50.0, 25.0)}},
        }}]}]}]  # fmt: skip
    asked = []
    (run,) = parse_exp_show(shown, lambda rev: asked.append(rev) or {"train_minutes": 3.0})
    assert asked == ["abc123"] and run.cost == {"train_minutes": 3.0}
    (run,) = parse_exp_show(shown)
    assert run.cost == {}
