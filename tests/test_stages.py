"""The stage scripts as a user runs them: bad input gives one line naming what to fix, exit code
2, no traceback, and nothing written."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from bmtard.config.params import parse_params
from bmtard.core.io import write_json
from bmtard.data.datasets import prepare
from bmtard.models.checkpoint import TrainingRecord, load_model, save_model

from conftest import ROOT, SAMPLE
from pipeline_helpers import TINY
from training_helpers import teachers

QUICK = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())


def stage(tmp_path, params: dict, *args: str, env: dict | None = None):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run(
        [sys.executable, "-m", *args, "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_offline_download_names_the_parameter_to_set(tmp_path):
    params = {**QUICK, "data": {**QUICK["data"], "local_root": None, "verify_md5": True}}
    dead = "http://127.0.0.1:9"  # no proxy listens there: the download fails at once, offline
    proc = stage(
        tmp_path,
        params,
        "stages.download",
        "--out",
        "data",
        env={"https_proxy": dead, "http_proxy": dead, "HTTPS_PROXY": dead},
    )
    msg = one_line_error(proc)
    assert "cannot download cifar10" in msg and "data.local_root" in msg
    assert not (tmp_path / "data" / "train.npz").exists()


def test_training_stage_without_data_says_to_run_download(tmp_path):
    proc = stage(
        tmp_path,
        QUICK,
        "stages.train_teacher",
        "--role",
        "clean",
        "--data",
        "data",
        "--out",
        "models/t.pt",
        "--live",
        "dvclive/t",
        "--tb",
        "runs/t",
    )
    assert "data/manifest.json: not found; run the download stage first" in one_line_error(proc)
    assert not (tmp_path / "models").exists()


def test_bad_parameter_stops_a_stage_before_any_work(tmp_path):
    params = {**QUICK, "evaluate": {**QUICK["evaluate"], "attacks": ["fgsm", "spsa"]}}
    proc = stage(tmp_path, params, "stages.download", "--out", "data")
    assert "evaluate.attacks[1] = 'spsa': allowed are fgsm" in one_line_error(proc)
    assert not (tmp_path / "data").exists()


def test_tiny_test_preset_only_shrinks_the_quick_preset():
    """The end-to-end tests run the quick preset with smaller sizes; the method is unchanged."""
    size_words = ("limit", "width", "epochs", "steps", "n_images", "batch_size", "num_threads")
    for key in TINY:
        assert any(w in key.rsplit(".", 1)[1] for w in size_words), key


# --------------------------------------------------------------------------- untrusted files, stops


class Marker:
    """Unpickling this creates ``path``: a stand-in for code run by a malicious checkpoint."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def tiny_params(**sections) -> dict:
    """The quick preset on 40 + 20 sample images, 2 short epochs, then ``sections``."""
    params = yaml.safe_load(yaml.safe_dump(QUICK))
    data = {"local_root": str(SAMPLE), "train_limit": 40, "test_limit": 20}
    params["data"].update(data)
    params["run"]["save_every_minutes"] = 0.0
    for section in ("clean_teacher", "robust_teacher", "distill"):
        params[section]["optim"].update(epochs=2, batch_size=10)
        params[section]["monitor"]["n_images"] = 10
    params["distill"]["width"] = 0.0625
    params["distill"]["attack"]["steps"] = 1
    for key, value in sections.items():
        params[key].update(value)
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A folder with the tiny data (made by the download stage's code) and two tiny teachers."""
    folder = tmp_path_factory.mktemp("stages")
    data = parse_params(tiny_params()).data
    write_json(folder / "data" / "manifest.json", prepare(data, folder / "data"))
    (folder / "models").mkdir()
    clean, robust = teachers(folder / "models")
    clean.rename(folder / "models" / "clean_teacher.pt")
    robust.rename(folder / "models" / "robust_teacher.pt")
    return folder


def copy_of(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path, dirs_exist_ok=True)
    return tmp_path


DISTILL = (
    "stages.distill", "--data", "data", "--clean-teacher", "models/clean_teacher.pt",
    "--robust-teacher", "models/robust_teacher.pt", "--out", "models/student.pt",
    "--live", "dvclive/distill", "--tb", "runs/distill",
)  # fmt: skip


def test_malicious_teacher_checkpoint_is_refused_and_never_runs(prepared, tmp_path):
    """As the robust_teacher.checkpoint parameter, as the distill stage's input, and given to
    the any-checkpoint command: refused with one line, and the marker file never appears."""
    repo = copy_of(prepared, tmp_path)
    marker = repo / "pwned"
    torch.save({"state_dict": Marker(marker)}, repo / "evil.pt")
    params = tiny_params(robust_teacher={"checkpoint": "evil.pt"})
    proc = stage(
        repo, params, "stages.train_teacher", "--role", "robust", "--data", "data",
        "--out", "models/new_robust.pt", "--live", "dvclive/r2", "--tb", "runs/r2",
    )  # fmt: skip
    line = one_line_error(proc)
    assert line.startswith("error: evil.pt: refused or unreadable as a weights-only checkpoint (")
    assert not (repo / "models" / "new_robust.pt").exists()
    shutil.copy(repo / "evil.pt", repo / "models" / "robust_teacher.pt")
    proc = stage(repo, tiny_params(), *DISTILL)
    assert "models/robust_teacher.pt: refused or unreadable" in one_line_error(proc)
    assert not (repo / "models" / "student.pt").exists()
    assert not (repo / "dvclive" / "distill").exists()  # nothing touched before the checks
    proc = subprocess.run(
        [sys.executable, "-m", "bmtard.evaluation.command", "--checkpoint", "evil.pt", "--data",
         "data/test.npz", "--out", "eval", "--device", "cpu"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
    )  # fmt: skip
    assert "evil.pt: refused or unreadable" in one_line_error(proc)
    assert not marker.exists()
    assert not (repo / "eval").exists()


def test_missing_teacher_checkpoint_is_named(prepared, tmp_path):
    repo = copy_of(prepared, tmp_path)
    params = tiny_params(robust_teacher={"checkpoint": "nowhere/wrn.pt"})
    proc = stage(
        repo, params, "stages.train_teacher", "--role", "robust", "--data", "data",
        "--out", "models/r.pt", "--live", "dvclive/r", "--tb", "runs/r",
    )  # fmt: skip
    assert "nowhere/wrn.pt: checkpoint not found" in one_line_error(proc)
    assert not (repo / "models" / "r.pt").exists()


def test_resume_dir_that_cannot_be_created_is_one_line(prepared, tmp_path):
    repo = copy_of(prepared, tmp_path)
    (repo / "a_file").write_text("x")
    shutil.copy(repo / "models" / "clean_teacher.pt", repo / "models" / "student.pt")
    params = tiny_params(evaluate={"resume_dir": "a_file/state"})
    proc = stage(
        repo, params, "stages.evaluate", "--data", "data", "--student", "models/student.pt",
        "--clean-teacher", "models/clean_teacher.pt", "--robust-teacher",
        "models/robust_teacher.pt", "--metrics", "metrics/e.json", "--details", "metrics/d.json",
        "--card", "models/s.card.json",
        "--plots", "metrics", "--cost", "metrics/c.json",
    )  # fmt: skip
    line = one_line_error(proc)
    assert line.startswith(
        "error: evaluate.resume_dir = 'a_file/state': cannot be created or written"
    )
    assert not (repo / "metrics").exists()


@pytest.mark.parametrize("role", ["robust", None])
def test_state_dir_that_cannot_be_created_stops_before_any_work(prepared, tmp_path, role):
    """run.state_dir under a file: one line before training (no curves, no model), by the distill
    stage and by a teacher stage."""
    repo = copy_of(prepared, tmp_path)
    params = tiny_params(run={"state_dir": "/dev/null/x"})
    args = DISTILL
    if role is not None:
        args = (
            "stages.train_teacher", "--role", role, "--data", "data", "--out", "models/t.pt",
            "--live", "dvclive/t", "--tb", "runs/t",
        )  # fmt: skip
    line = one_line_error(stage(repo, params, *args))
    assert line == (
        "error: run.state_dir = '/dev/null/x': cannot be created or written (Not a directory); "
        "choose another folder, or null to train without saving state"
    )
    assert not (repo / "dvclive").exists() and not (repo / "runs").exists()
    assert not (repo / "models" / "student.pt").exists() and not (repo / "models" / "t.pt").exists()


def test_a_diverging_teacher_stops_with_one_line_and_keeps_its_last_good_state(prepared, tmp_path):
    """lr 100: the loss leaves any sane range (10^4 at the third batch, 10^10 by the second epoch,
    never inf) and the stage stops as on a NaN, before the state is saved past that batch."""
    repo = copy_of(prepared, tmp_path)
    params = tiny_params()
    params["clean_teacher"]["optim"]["lr"] = 100.0
    args = (
        "stages.train_teacher", "--role", "clean", "--method", "bmtard", "--data", "data",
        "--out", "models/t.pt", "--live", "dvclive/t", "--tb", "runs/t",
    )  # fmt: skip
    line = one_line_error(stage(repo, params, *args))
    assert re.fullmatch(
        r"error: clean_teacher: epoch 1, batch \d: the loss diverged \([0-9.e+]+, above 2303 = "
        r"1000 x ln\(10 classes\), run\.divergence_factor\); the state at epoch 1, batch \d "
        r"\(\S+\) is kept; lower clean_teacher\.optim\.lr \(now 100\)",
        line,
    ), line
    assert not (repo / "models" / "t.pt").exists()
    assert list(repo.glob(".cache/train/clean_teacher/*.pt"))  # the last good state


def _as(path, out, **record) -> None:
    """Save the model in ``path`` again as ``out``, with ``record``."""
    model, info = load_model(path)
    save_model(out, info.spec, model.state_dict(), TrainingRecord(**record))


EVALUATE = (
    "stages.evaluate", "--data", "data", "--student", "models/student.pt",
    "--clean-teacher", "models/clean_teacher.pt", "--robust-teacher", "models/robust_teacher.pt",
    "--metrics", "metrics/e.json", "--details", "metrics/d.json", "--card", "models/s.card.json",
    "--plots", "metrics", "--cost", "metrics/c.json",
)  # fmt: skip


def test_files_are_what_they_claim(prepared, tmp_path):
    """The clean teacher's file given as the robust teacher, and a student made for 64 x 64
    images evaluated on 32 x 32 ones: one line each, nothing written."""
    repo = copy_of(prepared, tmp_path)
    models = repo / "models"
    _as(models / "clean_teacher.pt", models / "robust_teacher.pt", role="clean_teacher")
    line = one_line_error(stage(repo, tiny_params(), *DISTILL))
    assert line == (
        "error: models/robust_teacher.pt: holds the clean teacher (its record's role: "
        "clean_teacher), not the robust teacher; give the robust teacher's file"
    )
    assert not (models / "student.pt").exists() and not (repo / "dvclive").exists()
    student = {"stage": "distill", "role": "student", "dataset": "tiny_imagenet", "image_size": 64}
    _as(models / "clean_teacher.pt", models / "student.pt", **student)
    line = one_line_error(stage(repo, tiny_params(), *EVALUATE))
    assert line == (
        "error: models/student.pt: the student of 64x64 images, tiny_imagenet, and "
        "data/test.npz holds 32x32 images (cifar10)"
    )
    assert not (repo / "metrics").exists()


def test_a_teacher_stage_says_it_replaces_a_trained_teacher_and_keeps_it(prepared, tmp_path):
    """Run by hand with a method that learns from no clean teacher, the clean teacher's stage
    writes its placeholder in the trained teacher's place, says so, and keeps the trained one
    where a method that learns from it takes it back from."""
    repo = copy_of(prepared, tmp_path)
    trained = (repo / "models" / "clean_teacher.pt").read_bytes()
    args = (
        "stages.train_teacher", "--role", "clean", "--method", "sat", "--data", "data",
        "--out", "models/clean_teacher.pt", "--live", "dvclive/c", "--tb", "runs/c",
    )  # fmt: skip
    proc = stage(repo, tiny_params(), *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = ".cache/train/last-good/models/clean_teacher.pt"
    warned = [ln for ln in proc.stderr.splitlines() if " WARNING " in ln]
    assert len(warned) == 1 and warned[0].endswith(
        "clean_teacher: models/clean_teacher.pt held a trained model; it is replaced by a "
        "placeholder (distill.method sat learns from no clean teacher); the trained one is "
        f"kept in {kept}"
    ), proc.stderr[-2000:]
    assert b"no teacher was trained" in (repo / "models" / "clean_teacher.pt").read_bytes()
    assert (repo / kept).read_bytes() == trained


def sigterm_distill(repo, params: dict, timeout: float) -> tuple[int, str]:
    """Run the distill stage in ``repo`` with ``params``, SIGTERM it once its first training state
    is saved (training is under way), and return its exit code and stderr."""
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", *DISTILL, "--params", "params.yaml"],
        cwd=repo, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not list(repo.glob(".cache/train/distill/*.pt")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_sigterm_saves_the_state_and_the_rerun_finishes_identically(prepared, tmp_path):
    """What SLURM does at a time limit: SIGTERM, then (later) SIGKILL. The stage saves, says so
    in one line and exits with 143; the same command then finishes it, to the same bytes."""
    ref = copy_of(prepared, tmp_path / "ref")
    assert stage(ref, tiny_params(), *DISTILL).returncode == 0
    repo = copy_of(prepared, tmp_path / "run")
    returncode, err = sigterm_distill(repo, tiny_params(), timeout=120)
    assert returncode == 143, err[-2000:]
    stopped = [ln for ln in err.splitlines() if ln.startswith("stopped: ")]
    assert len(stopped) == 1 and "stopped by SIGTERM" in stopped[0], err[-2000:]
    assert "run the same command again to continue" in stopped[0]
    assert "Traceback" not in err
    assert list(repo.glob(".cache/train/distill/*.pt"))
    proc = stage(repo, tiny_params(), *DISTILL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stderr
    assert (repo / "models" / "student.pt").read_bytes() == (
        ref / "models" / "student.pt"
    ).read_bytes()
