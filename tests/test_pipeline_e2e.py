"""The whole pipeline through DVC and through Snakemake, in temporary copies of the repository.

A tiny variant of the quick preset (tests/pipeline_helpers.py: TINY) keeps each full run short.
Checked: both engines produce every declared output and the same metrics; a second run does
nothing; a distill-only change reruns distill and evaluate only; a robust-teacher change reruns
that teacher, distill and evaluate; results can be handed from one engine to the other.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
import time

import pytest
import yaml

from browser import network_requests, offline_chromium
from conftest import ROOT
from pipeline_helpers import (
    BIN,
    copy_project,
    dvc_ran,
    git,
    read_params,
    run,
    set_key,
    snakemake_ran,
    timeless,
    write_params,
)

pytestmark = pytest.mark.slow

DVC = str(BIN / "dvc")
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "4", "--resources", "gpu=1"]
#: README's readable view of the experiments (tests/test_layout.py checks README holds it)
EXP_SHOW_ARGS = ["--drop", r"Created|.*[./]", "--keep", "distill.method|run.seed"]
README_EXP_SHOW = [DVC, "exp", "show", *EXP_SHOW_ARGS]
STAGES = ["download", "train_clean_teacher", "train_robust_teacher", "distill", "evaluate"]
DECLARED = [
    o
    for s in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
    for kind in ("outs", "metrics", "plots")
    for e in s.get(kind, [])
    for o in (e if isinstance(e, dict) else [e])
]
ATTACKS = ["clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack"]


def change(repo, key, value):
    params = read_params(repo)
    set_key(params, key, value)
    write_params(repo, params)


def check_outputs(repo):
    for out in DECLARED:
        assert (repo / out).exists(), out
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    # the metrics are what runs are compared by (dvc exp show), the rest is in details.json
    assert list(metrics) == [*ATTACKS, "w_robust", "sanity", "epoch"]
    details = json.loads((repo / "metrics" / "details.json").read_text())
    acc = details["accuracy"]
    assert list(acc) == [*ATTACKS, "worst_case"]
    for name, value in acc.items():
        assert 0.0 <= value <= 100.0, name
        assert metrics.get(name, value) == value
    assert metrics["w_robust"] == pytest.approx((acc["clean"] + acc["autoattack"]) / 2)
    assert metrics["sanity"] in ("passed", "failed") and metrics["epoch"] == 1
    for a in ATTACKS[1:]:
        wr = details["weighted_robust"][a]
        assert wr == pytest.approx((acc["clean"] + acc[a]) / 2)
    assert list(details["eps_curve"]) == ["0", "2", "4", "8", "16"]
    assert set(details["sanity"]) >= {"passed", "eps_monotone", "transfer_vs_white_box"}
    assert details["sanity"]["passed"] == (metrics["sanity"] == "passed")
    assert details["sanity"]["transfer_vs_white_box"]["passed"] is not None  # robust teacher
    assert set(details["teachers"]) == {"clean", "robust"}
    assert set(details["teachers"]["robust"]) == {"clean", "pgd_trades"}
    card = json.loads((repo / "models" / "student.card.json").read_text())
    assert (card["architecture"], card["dataset"], card["eps"]) == ("resnet18", "cifar10", "8/255")
    assert card["clean_acc"] == metrics["clean"]
    assert set(card["teachers"]) == {"clean", "robust"}
    # what each stage cost: beside each model, the card and details.json gather them
    cost = card["cost"]
    assert details["cost"] == cost and set(cost) == {"training", "teachers", "evaluation"}
    assert set(cost["teachers"]) == {"clean", "robust"}
    for spent in (cost["training"], cost["evaluation"], *cost["teachers"].values()):
        assert spent["seconds"] > 0 and spent["images"] > 0 and spent["starts"] == 1, spent
        assert spent["memory"] == "process RSS" and spent["peak_memory_mb"] > 100
        assert "thread" in spent["device"] and spent["gpu_seconds"] == 0
    assert cost["evaluation"] == json.loads((repo / "metrics" / "cost.json").read_text())
    trained = json.loads((repo / "models" / "student.cost.json").read_text())
    assert cost["training"] == trained and trained["stage"] == "distill"
    per_class = (repo / "metrics" / "per_class.csv").read_text()
    assert per_class.startswith("class,clean,robust\nairplane,")
    # per-epoch curves of the balancing
    tsv = repo / "dvclive" / "distill" / "plots" / "metrics"
    for name in (
        "tau_adv",
        "tau_nat",
        "w_adv",
        "w_nat",
        "loss_adv",
        "loss_nat",
        "lr",
        "clean_acc",
        "pgd_acc",
    ):
        assert (tsv / f"{name}.tsv").is_file(), name
    assert list((repo / "runs" / "distill").glob("events.out.tfevents.*"))
    return metrics


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    repo = copy_project(tmp_path_factory.mktemp("dvc"))
    proc = run(repo, DVC, "repro")
    assert dvc_ran(proc.stdout) == STAGES
    return repo


@pytest.fixture(scope="module")
def snake_repo(tmp_path_factory):
    repo = copy_project(tmp_path_factory.mktemp("snake"))
    proc = run(repo, *SNAKEMAKE)
    assert sorted(snakemake_ran(proc.stderr + proc.stdout)) == sorted(STAGES)
    return repo


def test_dvc_repro_produces_every_output(dvc_repo):
    check_outputs(dvc_repo)
    assert not (dvc_repo / "logs").exists()  # the log files are Snakemake's only


def _rendered_plots(page, wait_s: float) -> tuple[int, int, list[str]]:
    """DVC's plots page opened offline: (plots on it, plots Vega drew within ``wait_s``
    seconds, network requests made)."""
    from selenium.webdriver.common.by import By

    with offline_chromium() as driver:
        driver.get(page.as_uri())
        total = page.read_text().count("vegaEmbed('#")  # a plot's div calls it

        def drawn() -> int:  # Vega draws a plot as a canvas (or an svg) of class marks
            return len(driver.find_elements(By.CSS_SELECTOR, "canvas.marks, svg.marks"))

        end = time.monotonic() + wait_s
        while drawn() < total and time.monotonic() < end:
            time.sleep(0.25)
        return total, drawn(), network_requests(driver)


def test_dvc_plots_render_offline_after_offline_plots(dvc_repo, tmp_path):
    """`dvc plots show` writes a page that loads Vega from a CDN: offline it draws nothing;
    after `python -m bmtard offline-plots` the same command draws every plot offline."""
    repo = dvc_repo
    run(repo, DVC, "plots", "show", "-o", str(tmp_path / "cdn"))
    total, drawn, _ = _rendered_plots(tmp_path / "cdn" / "index.html", wait_s=3)
    assert total >= 5 and drawn == 0  # the CDN's scripts could not load
    proc = run(repo, str(BIN / "python"), "-m", "bmtard", "offline-plots")
    assert "dvc plots show now renders without a network" in proc.stdout
    assert "offline-plots.html" in (repo / ".dvc" / "config.local").read_text()
    assert git(repo, "status", "--porcelain", ".dvc").stdout == ""  # nothing to commit
    run(repo, DVC, "plots", "show", "-o", str(tmp_path / "offline"))
    page = tmp_path / "offline" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    assert _rendered_plots(page, wait_s=20) == (total, total, [])


def test_snakemake_produces_every_output_and_a_log_per_rule(snake_repo):
    check_outputs(snake_repo)
    for stage in STAGES:
        assert (snake_repo / "logs" / f"{stage}.log").is_file()


def test_both_engines_give_identical_metrics(dvc_repo, snake_repo):
    """Same params and seed on the CPU: the same numbers, whichever engine ran the stages."""
    for name in ("evaluate.json", "details.json"):
        a = timeless(name, (dvc_repo / "metrics" / name).read_bytes())
        b = timeless(name, (snake_repo / "metrics" / name).read_bytes())
        assert a == b, name


# AutoAttack runs its full FAB-T and 5000-query Square on every point a tiny, barely trained model
# keeps (tens of seconds on a CPU); after the first full run the rerun checks leave it out.
WITHOUT_AA = ATTACKS[1:-1]


def test_dvc_reruns_only_what_changed(dvc_repo):
    repo = dvc_repo
    assert dvc_ran(run(repo, DVC, "repro").stdout) == []
    change(repo, "evaluate.attacks", WITHOUT_AA)
    assert dvc_ran(run(repo, DVC, "repro").stdout) == ["evaluate"]
    # a distill parameter reruns distill and evaluate only (test_dvc_experiments_record_params_...)
    change(repo, "robust_teacher.trades_beta", 5.0)
    assert dvc_ran(run(repo, DVC, "repro").stdout) == [
        "train_robust_teacher",
        "distill",
        "evaluate",
    ]
    assert dvc_ran(run(repo, DVC, "repro").stdout) == []


def test_snakemake_reruns_only_what_changed(snake_repo):
    repo = snake_repo
    noop = run(repo, *SNAKEMAKE)
    assert snakemake_ran(noop.stderr + noop.stdout) == []
    change(repo, "evaluate.attacks", WITHOUT_AA)
    proc = run(repo, *SNAKEMAKE)
    assert snakemake_ran(proc.stderr + proc.stdout) == ["evaluate"]
    change(repo, "robust_teacher.trades_beta", 5.0)
    proc = run(repo, *SNAKEMAKE)
    assert sorted(snakemake_ran(proc.stderr + proc.stdout)) == [
        "distill",
        "evaluate",
        "train_robust_teacher",
    ]
    # editing code a stage runs reruns it (and what depends on it), and no stage upstream of it
    (repo / "bmtard" / "methods" / "balance.py").write_text(
        (repo / "bmtard" / "methods" / "balance.py").read_text() + "\n# edited\n"
    )
    proc = run(repo, *SNAKEMAKE)
    assert sorted(snakemake_ran(proc.stderr + proc.stdout)) == ["distill", "evaluate"]


def test_handover_from_snakemake_to_dvc_and_back(snake_repo):
    """After Snakemake, `dvc commit -f` records its outputs so that `dvc repro` runs nothing;
    after a DVC run, `snakemake --touch` does the same for Snakemake."""
    repo = snake_repo
    run(repo, DVC, "commit", "-f")
    assert dvc_ran(run(repo, DVC, "repro").stdout) == []
    change(repo, "evaluate.cw_kappa", 10.0)
    assert dvc_ran(run(repo, DVC, "repro").stdout) == ["evaluate"]
    run(repo, *SNAKEMAKE, "--touch")
    proc = run(repo, *SNAKEMAKE)
    assert snakemake_ran(proc.stderr + proc.stdout) == []


def test_dvc_experiments_record_params_and_accuracies(dvc_repo):
    repo = dvc_repo
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    proc = run(repo, DVC, "exp", "run", "-S", "distill.balance.weight_lr=0.05")
    assert dvc_ran(proc.stdout) == ["distill", "evaluate"]
    shown = json.loads(run(repo, DVC, "exp", "show", "--json").stdout)
    base = shown[0]["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert list(base) == ["clean", *WITHOUT_AA, "sanity", "epoch"]  # no AutoAttack: no W-Robust
    exp = [e for e in shown if e.get("experiments")][0]["experiments"][0]["revs"][0]
    metrics = exp["data"]["metrics"]["metrics/evaluate.json"]["data"]
    assert list(metrics) == ["clean", *WITHOUT_AA, "sanity", "epoch"]
    assert exp["data"]["params"]["params.yaml"]["data"]["distill"]["balance"]["weight_lr"] == 0.05
    plots = run(repo, DVC, "plots", "show", "--json").stdout
    assert "dvclive/distill/plots/metrics/tau_nat.tsv" in plots
    # dvc exp show: the metrics are the evaluation's headline only (no dvclive summaries)
    header = run(repo, DVC, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
    metrics_at = header.index("clean")
    assert header[metrics_at : metrics_at + len(WITHOUT_AA) + 3] == list(metrics), header
    assert not [c for c in header if c.startswith(("step", "train_", "loss", "tau_", "eps_curve"))]
    # the workspace, the baseline and the experiment; the comparison: the workspace from its
    # files, the baseline named as dvc exp show names it, the experiment
    branch = git(repo, "branch", "--show-current").stdout.strip()
    compare = run(repo, sys.executable, "-m", "bmtard", "compare", "--out", "cmp")
    names = [row["Experiment"] for row in csv.DictReader(open(repo / "cmp" / "comparison.csv"))]
    assert names == ["workspace", branch, exp["name"]], compare.stdout
    # README's short view fits a 160-column terminal
    view = run(repo, *README_EXP_SHOW, env_extra={"COLUMNS": "160"}).stdout
    assert view.strip() and max(len(line) for line in view.splitlines()) <= 160, view
    assert "…" not in view and exp["name"] in view and "distill.method" in view


def test_bad_params_stop_before_any_work(tmp_path):
    """An invalid value stops `dvc repro` and `snakemake` with one line naming the key."""
    repo = copy_project(tmp_path / "bad", {"distill.optim.epochs": 0})
    proc = run(repo, DVC, "repro", check=False)
    assert proc.returncode != 0
    assert "distill.optim.epochs = 0: must be >= 1" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (repo / "data" / "train.npz").exists()
    proc = run(repo, *SNAKEMAKE, check=False)
    assert proc.returncode != 0
    assert "distill.optim.epochs = 0: must be >= 1" in proc.stderr + proc.stdout
    assert not (repo / "data" / "train.npz").exists()


def _method_switch(repo, engine, teacher_jobs: list[str]) -> str:
    """distill.method bmtard -> rslad, up to distill (the grid tests evaluate rslad students):
    the teacher stages in ``teacher_jobs`` rerun, and keep the finished teachers (DVC: in place;
    Snakemake, which deletes outputs before a rerun: put back from their last good copies)
    instead of training them again. The rslad student is trained from the robust teacher only.
    Returns the engine's output. (A method without a teacher from scratch: the grid tests.)"""
    from bmtard.core.io import sha256_file
    from bmtard.models.checkpoint import saved_record

    teachers = [repo / "models" / f"{role}_teacher.pt" for role in ("clean", "robust")]
    before = [sha256_file(p) for p in teachers]
    change(repo, "distill.method", "rslad")
    ran, out = engine()
    assert sorted(ran) == sorted(["distill", *teacher_jobs])
    assert [sha256_file(p) for p in teachers] == before
    student = saved_record(repo / "models" / "student.pt")
    assert student.method == "rslad" and list(student.teachers) == ["robust"]
    return out


def test_dvc_method_switch_trains_no_teacher_again(dvc_repo):
    """DVC reruns both teacher stages: their command names the method."""

    def engine():
        proc = run(dvc_repo, DVC, "repro", "distill")
        return dvc_ran(proc.stdout), proc.stdout + proc.stderr

    both = ["train_clean_teacher", "train_robust_teacher"]
    assert _method_switch(dvc_repo, engine, both).count("is this run's finished result: kept") == 2


def test_snakemake_method_switch_trains_no_teacher_again(snake_repo):
    """Snakemake reruns only the clean teacher's job: its command names whether the method needs
    that teacher (method_table.need_only), and rslad needs the robust one as bmtard did."""

    def engine():
        proc = run(snake_repo, SNAKEMAKE[0], "distill", *SNAKEMAKE[1:])  # target before --resources
        logs = [snake_repo / "logs" / f"train_{r}_teacher.log" for r in ("clean", "robust")]
        return snakemake_ran(proc.stderr + proc.stdout), "".join(p.read_text() for p in logs)

    out = _method_switch(snake_repo, engine, ["train_clean_teacher"])
    assert out.count("is this run's finished result: put back") == 1


def test_readme_gives_the_readable_view_of_the_experiments():
    text = (ROOT / "README.md").read_text()
    assert "dvc exp show " + " ".join(shlex.quote(a) for a in EXP_SHOW_ARGS) in text


def _edit(repo, rel: str) -> None:
    path = repo / rel
    path.write_text(path.read_text() + "\n# edited\n")


def test_dvc_editing_another_methods_module_retrains_nothing(dvc_repo):
    """dvc.yaml lists code folders: an edit of methods/ciard.py reruns the stages that import
    from bmtard/methods (the teachers, the distillation), and each keeps its finished result,
    its bytes unchanged (it was keyed by the code its process imported, which does not include
    another method's module), so the evaluation after them does not rerun."""
    from bmtard.core.io import sha256_file

    run(dvc_repo, DVC, "repro")  # up to date first (a test before may have left a stage to run)
    models = [
        dvc_repo / "models" / f"{m}.pt" for m in ("clean_teacher", "robust_teacher", "student")
    ]
    before = [sha256_file(p) for p in models]
    _edit(dvc_repo, "bmtard/methods/ciard.py")
    proc = run(dvc_repo, DVC, "repro")
    assert dvc_ran(proc.stdout) == ["train_clean_teacher", "train_robust_teacher", "distill"]
    assert (proc.stdout + proc.stderr).count("is this run's finished result: kept") == 3
    assert [sha256_file(p) for p in models] == before


def test_snakemake_editing_another_methods_module_reruns_nothing(snake_repo):
    """The rules take the files each stage can import, the distillation's its own method's only:
    an edit of methods/ciard.py is no input of this run's (B-MTARD's) rules."""
    run(snake_repo, *SNAKEMAKE)  # up to date first (a test before may have left a job to run)
    _edit(snake_repo, "bmtard/methods/ciard.py")
    proc = run(snake_repo, *SNAKEMAKE)
    assert snakemake_ran(proc.stderr + proc.stdout) == []
