"""A 2-method x 1-seed grid (SAT, RSLAD) through each engine on the tiny preset: the robust
teacher is trained once, the clean one never (neither method learns from it), each experiment
has its own outputs, and python -m bmtard.experiments.compare gathers them.

The grids also carry the two datasets beyond CIFAR-10 through the engines, from small fixtures in
their real on-disk layouts with the models left to the dataset (``arch: null``): Tiny-ImageNet
(64 x 64, 200 classes) through Snakemake and CIFAR-100 (WRN-70-16 robust teacher) through DVC."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from bmtard.models.checkpoint import load_model

from dataset_fixtures import write_cifar100, write_tiny_imagenet
from pipeline_helpers import BIN, REPORT_RULES, copy_project, dvc_ran, git, run, snakemake_ran

pytestmark = pytest.mark.slow

DVC = str(BIN / "dvc")
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "4", "--resources", "gpu=1"]
GRID = {"distill.method": ["sat", "rslad"], "run.seed": [0]}
NAMES = ["method-sat_seed-0", "method-rslad_seed-0"]
# AutoAttack on a barely trained tiny student takes minutes on a CPU: left out here
FAST = {"evaluate.attacks": ["fgsm", "pgd_sat"], "evaluate.sanity.enabled": False}
# the models the dataset's (bmtard.config.dataset_table), the KL scale its convention
BY_DATASET = {"robust_teacher.arch": None, "distill.arch": None, "distill.kl_scale": None}


def _on(dataset: str, folder) -> dict:
    """Overrides that point the tiny preset at a fixture of ``dataset``."""
    return {**FAST, **BY_DATASET, "data.dataset": dataset, "data.local_root": str(folder)}


def _compare(repo, *flags) -> list[dict]:
    proc = run(repo, str(BIN / "python"), "-m", "bmtard.experiments.compare", *flags)
    assert "| Experiment |" in proc.stdout
    return json.loads(json.dumps(list(_csv(repo / "comparison" / "comparison.csv"))))


def _csv(path):
    import csv

    with open(path) as f:
        yield from csv.DictReader(f)


def _no_teacher_file(path) -> bool:
    from bmtard.models.checkpoint import saved_record

    return saved_record(path) is None and b"no teacher was trained" in path.read_bytes()


def _planned(output: str) -> list[tuple[str, str | None]]:
    """The (rule, experiment) of each job a Snakemake dry run plans, but `all` and the report's
    (which follow every finished run)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head and head.group(1) not in ("all", *REPORT_RULES):
            exp = re.search(r"wildcards: exp=(\S+)", block)
            jobs.append((head.group(1), exp and exp.group(1)))
    return sorted(jobs)


def test_snakemake_grid(tmp_path):
    folder = write_tiny_imagenet(tmp_path / "raw")
    repo = copy_project(tmp_path / "snake", _on("tiny_imagenet", folder))
    (repo / "grid.yaml").write_text(yaml.safe_dump({"grid": GRID}))
    proc = run(repo, *SNAKEMAKE, "--configfile", "grid.yaml")
    ran = snakemake_ran(proc.stderr + proc.stdout)
    assert sorted(ran) == sorted(
        ["download", "train_clean_teacher", "train_robust_teacher"]
        + ["grid_params", "distill_grid", "evaluate_grid"] * 2
    )
    logs = {r: (repo / "logs" / f"train_{r}_teacher.log").read_text() for r in ("clean", "robust")}
    assert "robust_teacher: 100 train images" in logs["robust"]  # its one job trained it
    assert "clean_teacher: 100 train images" not in logs["clean"]
    assert _no_teacher_file(repo / "models" / "clean_teacher.pt")
    _, robust = load_model(repo / "models" / "robust_teacher.pt")
    assert (robust.spec.arch, robust.spec.num_classes) == ("wrn34_10", 200)
    for name, method in zip(NAMES, ("sat", "rslad"), strict=True):
        exp = repo / "results" / name
        card = json.loads((exp / "models" / "student.card.json").read_text())
        assert card["training"]["method"] == method
        assert (card["dataset"], card["architecture"]) == ("tiny_imagenet", "mobilenet_v2")
        assert list(card["training"].get("teachers", {})) == ([] if method == "sat" else ["robust"])
        assert yaml.safe_load((exp / "params.yaml").read_text())["distill"]["method"] == method
        assert (exp / "metrics" / "evaluate.json").is_file()
        assert list((exp / "runs" / "distill").glob("events.out.tfevents.*"))
    assert not (repo / "models" / "student.pt").exists()  # the grid only
    again = run(repo, *SNAKEMAKE, "--configfile", "grid.yaml")
    assert snakemake_ran(again.stderr + again.stdout) == []
    # a grid that grows plans only the new experiments: methods with the same teachers' needs
    # change no teacher job (ard, trades), and the clean teacher that bmtard is the first to need
    # reruns no finished experiment of a method that does not learn from it (sat, rslad)
    grown = {**GRID, "distill.method": ["sat", "rslad", "ard", "trades", "bmtard"]}
    (repo / "grown.yaml").write_text(yaml.safe_dump({"grid": grown}))
    plan = run(repo, *SNAKEMAKE, "--configfile", "grown.yaml", "-n")
    assert _planned(plan.stdout + plan.stderr) == sorted(
        [("train_clean_teacher", None)]
        + [
            (rule, f"method-{m}_seed-0")
            for rule in ("distill_grid", "evaluate_grid", "grid_params")
            for m in ("ard", "trades", "bmtard")
        ]
    )
    table = _compare(repo, "--no-dvc")
    assert [(r["Experiment"], r["Engine"], r["Method"], r["Dataset"]) for r in table] == [
        ("method-rslad_seed-0", "snakemake", "RSLAD", "tiny_imagenet"),
        ("method-sat_seed-0", "snakemake", "SAT", "tiny_imagenet"),
    ]


def test_dvc_queue_grid(tmp_path):
    """The teachers of rslad first (the robust one trained, the clean one not), committed; then
    the grid queued and run: no experiment trains a teacher (the sat experiment reruns the
    teacher stages, whose command names the method: the robust teacher is kept, the clean one
    still not trained)."""
    folder, _, _ = write_cifar100(tmp_path / "raw")
    repo = copy_project(tmp_path / "dvc", {**_on("cifar100", folder), "distill.method": "rslad"})
    teachers = ["train_clean_teacher", "train_robust_teacher"]
    assert dvc_ran(run(repo, DVC, "repro", *teachers).stdout) == ["download", *teachers]
    assert _no_teacher_file(repo / "models" / "clean_teacher.pt")
    _, info = load_model(repo / "models" / "robust_teacher.pt")
    assert (info.spec.arch, info.spec.num_classes) == ("wrn70_16", 100)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "teachers")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train_robust_teacher"]
    robust = "models/robust_teacher.pt"
    trained = next(o["md5"] for o in lock["outs"] if o["path"] == robust)
    run(repo, DVC, "exp", "run", "--queue", "-S", "distill.method=sat,rslad", "-S", "run.seed=0")
    proc = run(repo, DVC, "exp", "run", "--run-all", "-j", "1")
    shown = json.loads(run(repo, DVC, "exp", "show", "--json").stdout)
    exps = [r for c in shown for e in c.get("experiments") or [] for r in e["revs"]]
    assert len(exps) == 2, proc.stdout + proc.stderr
    for exp in exps:
        assert exp["data"]["outs"][robust]["hash"] == trained, exp["name"]
        method = exp["data"]["params"]["params.yaml"]["data"]["distill"]["method"]
        log = run(repo, DVC, "queue", "logs", exp["name"]).stdout
        assert "Running stage 'distill'" in log  # the log is this experiment's run
        assert "teacher: 100 train images" not in log  # no teacher was trained
        if method == "sat":
            assert (
                "robust_teacher: models/robust_teacher.pt is this run's finished result: kept"
                in log
            )
            assert "clean_teacher: no teacher was trained" in log
        else:
            assert "Running stage 'train_" not in log, log[-3000:]
    table = _compare(repo)
    assert sorted((r["Engine"], r["Method"], r["Dataset"]) for r in table) == [
        ("dvc", "RSLAD", "cifar100"),
        ("dvc", "SAT", "cifar100"),
    ]


def _published_resnet56(repo) -> None:
    """A file laid out as MTARD's clean ResNet-56 is published (its state_dict with 'module.'
    before every key), at the place the teacher stage expects it (random weights: it measures
    far from the published 93 %, which the stage says in one warning)."""
    import torch

    from bmtard.config import teacher_table
    from bmtard.models import build_model

    torch.manual_seed(7)
    state = build_model("resnet56", 10, 1.0).state_dict()
    where = repo / teacher_table.default_path("cifar10", "MTARD_ResNet56")
    where.parent.mkdir(parents=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, where)


TEACHER_GRID = {"distill.method": ["mtard"], "run.seed": [0]}
IMPORTED = "clean_teacher-published-MTARD-ResNet56"  # the variant's name


def test_snakemake_grid_over_teachers_grows_without_rerunning(tmp_path):
    """A grid that has run takes a published clean teacher as a further part: the dry run plans
    only that teacher (imported once, in teacher-runs/) and the new experiment, which learns from
    it (its student's record names it) while the robust teacher stays the shared one; nothing of
    the finished experiment reruns, and the comparison tells the two apart by their teachers."""
    repo = copy_project(tmp_path / "snake", FAST)
    _published_resnet56(repo)
    (repo / "grid.yaml").write_text(yaml.safe_dump({"grid": TEACHER_GRID}))
    run(repo, *SNAKEMAKE, "--configfile", "grid.yaml")
    grown = [TEACHER_GRID, {**TEACHER_GRID, "clean_teacher.published": ["MTARD_ResNet56"]}]
    # in the order written: the new experiment's name ends with its teacher
    (repo / "grown.yaml").write_text(yaml.safe_dump({"grid": grown}, sort_keys=False))
    plan = run(repo, *SNAKEMAKE, "--configfile", "grown.yaml", "-n")
    new = f"method-mtard_seed-0_{IMPORTED}"
    assert _planned(plan.stdout + plan.stderr) == sorted(
        [("grid_teacher_params", None), ("train_clean_teacher_grid", None)]
        + [(rule, new) for rule in ("distill_grid", "evaluate_grid", "grid_params")]
    )
    proc = run(repo, *SNAKEMAKE, "--configfile", "grown.yaml")
    assert "MTARD_ResNet56 measures far from its published accuracy" in proc.stderr
    _, teacher = load_model(repo / "teacher-runs" / IMPORTED / "models" / "clean_teacher.pt")
    assert (teacher.spec.arch, teacher.record.published) == ("resnet56", "MTARD_ResNet56")
    card = json.loads((repo / "results" / new / "models" / "student.card.json").read_text())
    learned = card["training"]["teachers"]
    assert learned["clean"]["published"] == "MTARD_ResNet56"
    assert learned["clean"]["source"] == "teachers/cifar10/MTARD_ResNet56.pt"
    assert learned["robust"]["source"] == "trained"
    assert card["teachers"]["clean"]["published_clean"] == 93.18
    assert snakemake_ran(run(repo, *SNAKEMAKE, "--configfile", "grown.yaml").stderr) == []
    table = _compare(repo, "--no-dvc")
    assert sorted(r["Teachers"].split(" · ")[0] for r in table) == [
        "clean: MTARD_ResNet56",
        "clean: resnet56×0.125 (trained)",
    ]


def test_dvc_queue_experiment_imports_its_own_teacher(tmp_path):
    """DVC computes a queued experiment's teachers in that experiment: one that names a
    published clean teacher imports it from the project's teachers/ folder (git ignores it, so
    the queue's copy of the project lacks it) and learns from it; the baseline's trained teacher
    is not touched."""
    repo = copy_project(tmp_path / "dvc", {**FAST, "distill.method": "mtard"})
    _published_resnet56(repo)
    run(repo, DVC, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "baseline")
    trained = (repo / "models" / "clean_teacher.pt").read_bytes()
    run(repo, DVC, "exp", "run", "--queue", "-S", "clean_teacher.published=MTARD_ResNet56")
    proc = run(repo, DVC, "exp", "run", "--run-all", "-j", "1")
    shown = json.loads(run(repo, DVC, "exp", "show", "--json").stdout)
    (exp,) = [r for c in shown for e in c.get("experiments") or [] for r in e["revs"]]
    log = run(repo, DVC, "queue", "logs", exp["name"]).stdout
    assert "clean_teacher: imported teachers/cifar10/MTARD_ResNet56.pt" in log, proc.stdout[-2000:]
    assert "MTARD_ResNet56 measures far from its published accuracy" in log
    assert (repo / "models" / "clean_teacher.pt").read_bytes() == trained
    run(repo, DVC, "exp", "apply", exp["name"])
    _, info = load_model(repo / "models" / "student.pt")
    assert info.record.teachers["clean"]["published"] == "MTARD_ResNet56"
