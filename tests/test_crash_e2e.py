"""Crashes through the real engines: SIGKILL the engine and its stage at chosen points (early,
mid-epoch, during the state write, during the evaluation), run the same command again, and
compare with an uninterrupted run: the same checkpoint bytes, the same metrics, the same curves.

The kill comes from ``bmtard.core.faults`` (``BMTARD_FAULT=<stage>/<point>:<n>``): SIGKILL to the
whole process group, i.e. the engine (started in a session of its own) dies with its stage, as
when a node goes down. Also checked: one engine refuses to run while the other holds the
project; a failed rerun never deletes another stage's outputs, and the last good outputs stay
recoverable.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from pathlib import Path

import pytest

from pipeline_helpers import (
    BIN,
    copy_project,
    dvc_ran,
    env,
    read_params,
    set_key,
    timeless,
    write_params,
)

pytestmark = pytest.mark.slow

DVC = [str(BIN / "dvc"), "repro"]
SNAKEMAKE = [str(BIN / "snakemake"), "--cores", "4", "--resources", "gpu=1"]
# several batches per epoch, a state after every batch, a quick evaluation in several batches
CRASHY = {
    "run.save_every_minutes": 0.0,
    "clean_teacher.optim.epochs": 2,
    "clean_teacher.optim.batch_size": 32,
    "robust_teacher.optim.epochs": 2,
    "robust_teacher.optim.batch_size": 32,
    "distill.optim.epochs": 2,
    "distill.optim.batch_size": 32,
    "evaluate.attacks": ["fgsm", "pgd_sat"],
    "evaluate.batch_size": 5,
    "evaluate.sanity.enabled": False,
}
MODELS = ["models/clean_teacher.pt", "models/robust_teacher.pt", "models/student.pt"]
# (stage, point, n): 4 batches per epoch, a state write after each batch and at each epoch end
KILLS = [
    ("train_clean_teacher", "batch", 2),  # early, before the second state write
    ("train_robust_teacher", "state_write", 5),  # half-way through the end-of-epoch-1 state
    ("distill", "batch", 6),  # mid-epoch 2
    ("evaluate", "eval_batch", 3),  # the second attack's first batch is saved, then the kill
]


def engine(repo: Path, cmd: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """Run an engine in a session of its own (a fault kills that whole session)."""
    e = env()
    if fault:
        e["BMTARD_FAULT"] = fault
    return subprocess.run(
        cmd, cwd=repo, env=e, capture_output=True, text=True, timeout=900, start_new_session=True
    )


def results(repo: Path) -> dict:
    """What a run produced: checkpoint bytes, metrics, and every curve's (step, value) rows."""
    out = {m: (repo / m).read_bytes() for m in MODELS}
    out["metrics"] = json.loads((repo / "metrics" / "evaluate.json").read_text())
    out["details"] = json.loads(
        timeless("details.json", (repo / "metrics/details.json").read_bytes())
    )
    for tsv in sorted(repo.glob("dvclive/*/plots/metrics/*.tsv")):
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        out[str(tsv.relative_to(repo))] = [(r["step"], r[tsv.stem]) for r in rows]
    for summary in sorted(repo.glob("dvclive/*/metrics.json")):
        out[str(summary.relative_to(repo))] = json.loads(summary.read_text())
    return out


def leftovers(repo: Path) -> list[Path]:
    """Saved training or evaluation state, and hidden temporaries: none after a finished run."""
    return sorted(
        [*repo.glob(".cache/train/*/*.pt"), *repo.glob(".cache/evaluate/*.json")]
        + [p for p in repo.rglob(".*.tmp") if ".dvc" not in p.parts]
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    repo = copy_project(tmp_path_factory.mktemp("ref"), CRASHY)
    proc = engine(repo, DVC)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert leftovers(repo) == []
    return results(repo)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


def saved_state(repo: Path, stage: str) -> list[Path]:
    """The saved state a stage killed mid-way leaves (how we know which stage was killed: the
    engine's own output may die in its buffers)."""
    if stage == "evaluate":
        return list(repo.glob(".cache/evaluate/*.json"))
    section = stage.removeprefix("train_")  # the state folder is named by the params section
    return list(repo.glob(f".cache/train/{section}/*.pt"))


def test_dvc_repro_resumes_after_kills_to_identical_results(tmp_path, reference):
    repo = copy_project(tmp_path / "dvc", CRASHY)
    for stage, point, n in KILLS:
        proc = engine(repo, DVC, f"{stage}/{point}:{n}")
        assert killed(proc), (stage, proc.returncode, proc.stderr[-3000:])
        assert saved_state(repo, stage), stage  # killed inside that stage
    proc = engine(repo, DVC)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert dvc_ran(proc.stdout) == ["evaluate"]
    assert "resuming evaluation" in proc.stdout + proc.stderr
    assert results(repo) == reference
    assert leftovers(repo) == []
    # a resumed stage's cost sums its starts (bmtard/core/cost.py)
    for model in MODELS:
        spent = json.loads((repo / model.replace(".pt", ".cost.json")).read_text())
        assert spent["starts"] == 2 and spent["seconds"] > 0, (model, spent)
    assert dvc_ran(engine(repo, DVC).stdout) == []  # DVC records the resumed stages as done


@pytest.fixture(scope="module")
def snake_resumed(tmp_path_factory):
    """A Snakemake run killed inside each stage in turn, then finished with --rerun-incomplete."""
    repo = copy_project(tmp_path_factory.mktemp("snake"), CRASHY)
    for i, (stage, point, n) in enumerate(KILLS):
        # the teachers are independent: Snakemake may start either first; the kills are in order
        cmd = [*SNAKEMAKE, "--prioritize", "models/clean_teacher.pt"]
        cmd = cmd if i == 0 else [*cmd, "--rerun-incomplete"]
        proc = engine(repo, cmd, f"{stage}/{point}:{n}")
        assert killed(proc), (stage, proc.returncode, proc.stderr[-3000:])
        assert saved_state(repo, stage), stage
        if stage == "distill":  # its curves folder exists in part: Snakemake asks for the flag
            plain = engine(repo, SNAKEMAKE)
            assert plain.returncode != 0 and "--rerun-incomplete" in plain.stdout + plain.stderr
    proc = engine(repo, [*SNAKEMAKE, "--rerun-incomplete"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return repo


def test_snakemake_resumes_after_kills_to_identical_results(snake_resumed, reference):
    assert results(snake_resumed) == reference
    assert leftovers(snake_resumed) == []


def test_one_engine_at_a_time(snake_resumed):
    """While a Snakemake run holds the project, `dvc repro` (which would rerun everything here:
    this folder has no dvc.lock) stops at its first stage with one line and changes nothing;
    while a stage (e.g. DVC's) runs, Snakemake refuses to start and leaves no lock behind."""
    repo = snake_resumed
    before = {p: p.read_bytes() for p in sorted((repo / "data").glob("*"))}
    holder = subprocess.Popen(
        [str(BIN / "python"), "-c",
         "import sys, time; from bmtard.core import project_lock as p; "
         "f = p.hold_for_run(sys.argv[1]); print('held', flush=True); time.sleep(600)",
         "snakemake"],
        cwd=repo, env=env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = engine(repo, DVC)
        assert proc.returncode != 0
        assert (
            "error: stage download: this project is in use by snakemake (pid "
            f"{holder.pid}); wait for it to end or stop it"
        ) in proc.stderr
        assert "Traceback" not in proc.stderr
        assert {p: p.read_bytes() for p in sorted((repo / "data").glob("*"))} == before
    finally:
        holder.kill()
        holder.wait()
    holder = subprocess.Popen(
        [str(BIN / "python"), "-c",
         "from bmtard.core import project_lock as p; import time; "
         "f = p.enter_stage('stage distill'); print('held', flush=True); time.sleep(600)"],
        cwd=repo, env=env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        # some work to do (else Snakemake stops before its onstart hook)
        proc = engine(repo, [*SNAKEMAKE, "--forcerun", "evaluate"])
        assert proc.returncode != 0
        assert f"this project is in use by stage distill (pid {holder.pid})" in proc.stderr
        assert not list((repo / ".snakemake" / "locks").glob("*"))
        assert {p: p.read_bytes() for p in sorted((repo / "data").glob("*"))} == before
    finally:
        holder.kill()
        holder.wait()
    proc = engine(repo, [SNAKEMAKE[0], "download", *SNAKEMAKE[1:]])  # the lock died with its holder
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_failed_rerun_keeps_earlier_outputs_and_the_last_good_model(snake_resumed):
    """Snakemake deletes a job's outputs before running it; when the rerun then fails, the last
    good model is still in .cache/train/last-good, and no other stage's output is touched."""
    repo = snake_resumed
    before = {m: (repo / m).read_bytes() for m in MODELS}
    params = read_params(repo)
    set_key(params, "distill.optim.lr", 0.05)
    write_params(repo, params)
    proc = engine(repo, SNAKEMAKE, "distill/batch:3")  # the rerun dies
    assert killed(proc)
    assert not (repo / "models" / "student.pt").exists()  # Snakemake deleted it first
    kept = repo / ".cache" / "train" / "last-good" / "models" / "student.pt"
    assert kept.read_bytes() == before["models/student.pt"]
    for m in MODELS[:2]:
        assert (repo / m).read_bytes() == before[m]
