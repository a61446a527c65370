"""The stage scripts as a user runs them: bad input gives one line naming what to fix, exit code
2, no traceback, and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from conftest import ROOT, require_sample
from pipeline_helpers import TINY

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


def test_missing_teacher_checkpoint_is_named(tmp_path):
    data = {
        **QUICK["data"],
        "local_root": str(require_sample()),
        "train_limit": 20,
        "test_limit": 20,
    }
    params = {**QUICK, "data": data}
    assert stage(tmp_path, params, "stages.download", "--out", "data").returncode == 0
    params["robust_teacher"] = {**QUICK["robust_teacher"], "checkpoint": "nowhere/wrn.pt"}
    proc = stage(
        tmp_path,
        params,
        "stages.train_teacher",
        "--role",
        "robust",
        "--data",
        "data",
        "--out",
        "models/r.pt",
        "--live",
        "dvclive/r",
        "--tb",
        "runs/r",
    )
    assert "nowhere/wrn.pt: checkpoint not found" in one_line_error(proc)
    assert not (tmp_path / "models" / "r.pt").exists()


def test_tiny_test_preset_only_shrinks_the_quick_preset():
    """The end-to-end tests run the quick preset with smaller sizes; the method is unchanged."""
    size_words = ("limit", "width", "epochs", "steps", "n_images", "batch_size", "num_threads")
    for key in TINY:
        assert any(w in key.rsplit(".", 1)[1] for w in size_words), key
