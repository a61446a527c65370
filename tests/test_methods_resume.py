"""The methods that train networks besides the student (CIARD's fine-tuned robust teacher and its
optimizer, PeerAiD's peer, its optimizer and the weight average), and B-MTARD with each switch of
the attack's fast path (``run.attack_*``, ``run.teachers_bf16``) and all of them, resume after a
SIGKILL in the middle of an epoch to the same checkpoint bytes and curves as an uninterrupted run
with the same settings (CPU)."""

from __future__ import annotations

import json

import pytest

from bmtard.models.checkpoint import saved_networks

from test_stages import DISTILL, copy_of, prepared, stage, tiny_params  # noqa: F401 (a fixture)

#: each method with the settings that make its extra networks do everything in a few epochs of
#: 4 batches: CIARD's teacher trains from epoch 2 (its lr and the student's on their cosine x exp,
#: not yet 0 in epoch 2 of 3) and its rates decay in epoch 2; PeerAiD averages at the end of both
#: epochs (each with a BatchNorm pass)
SETTINGS = {
    "ciard": {"ciard": {"teacher_from": 1}, "optim": {"epochs": 3, "milestones": [2]}},
    "peeraid": {"peeraid": {"swa_from": 1}},
}


#: B-MTARD's fast-path settings: each switch alone, and all of them (the compiled twin apart: its
#: inductor graphs take minutes on a CPU, and it is rebuilt from the student as every twin is)
SWITCHES = {
    "attack_fold_bn": {"attack_fold_bn": True},
    "attack_bf16": {"attack_bf16": True},
    "attack_no_param_grads": {"attack_no_param_grads": True},
    "teachers_bf16": {"teachers_bf16": True},
}
SWITCHES["all"] = {k: v for kw in SWITCHES.values() for k, v in kw.items()}


def _params(method: str, run: dict | None = None) -> dict:
    params = tiny_params()
    d = params["distill"]
    d["method"] = method
    for section, values in SETTINGS.get(method, {}).items():
        d[section].update(values)
    params["run"].update(run or {})
    return params


def _results(repo) -> dict:
    live = repo / "dvclive" / "distill"
    out = {"student": (repo / "models" / "student.pt").read_bytes()}
    out["summary"] = json.loads((live / "metrics.json").read_text())
    for tsv in sorted((live / "plots" / "metrics").glob("*.tsv")):
        out[tsv.name] = tsv.read_text()
    return out


def _killed_and_resumed(prepared, tmp_path, params: dict):  # noqa: F811
    """An uninterrupted run and one killed mid-epoch then resumed: both repositories."""
    ref = copy_of(prepared, tmp_path / "ref")
    proc = stage(ref, params, *DISTILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    repo = copy_of(prepared, tmp_path / "run")
    # killed after the 6th step (epoch 2, batch 2) before its save: the state after the 5th
    kill = {"BMTARD_FAULT": "distill/batch:6", "BMTARD_FAULT_SCOPE": "process"}
    proc = stage(repo, params, *DISTILL, env=kill)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (repo / "models" / "student.pt").exists()
    proc = stage(repo, params, *DISTILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the state at epoch 2, batch 1\n" in proc.stderr, proc.stderr[-3000:]
    return ref, repo


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_a_killed_run_resumes_to_the_same_bytes(prepared, tmp_path, method):  # noqa: F811
    ref, repo = _killed_and_resumed(prepared, tmp_path, _params(method))
    networks = saved_networks(ref / "models" / "student.pt")
    assert set(networks) == ({"robust_teacher"} if method == "ciard" else {"peer", "swa"})
    assert _results(repo) == _results(ref)


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_a_killed_run_with_a_fast_path_switch_resumes_to_the_same_bytes(
    prepared,  # noqa: F811
    tmp_path,
    switch,
):
    ref, repo = _killed_and_resumed(prepared, tmp_path, _params("bmtard", SWITCHES[switch]))
    assert _results(repo) == _results(ref)
