"""The methods that train networks besides the student (CIARD's fine-tuned robust teacher and its
optimizer, PeerAiD's peer, its optimizer and the weight average) resume after a SIGKILL in the
middle of an epoch to the same checkpoint bytes and curves as an uninterrupted run (CPU)."""

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


def _params(method: str) -> dict:
    params = tiny_params()
    d = params["distill"]
    d["method"] = method
    for section, values in SETTINGS[method].items():
        d[section].update(values)
    return params


def _results(repo) -> dict:
    live = repo / "dvclive" / "distill"
    out = {"student": (repo / "models" / "student.pt").read_bytes()}
    out["summary"] = json.loads((live / "metrics.json").read_text())
    for tsv in sorted((live / "plots" / "metrics").glob("*.tsv")):
        out[tsv.name] = tsv.read_text()
    return out


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_a_killed_run_resumes_to_the_same_bytes(prepared, tmp_path, method):  # noqa: F811
    ref = copy_of(prepared, tmp_path / "ref")
    proc = stage(ref, _params(method), *DISTILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    networks = saved_networks(ref / "models" / "student.pt")
    assert set(networks) == ({"robust_teacher"} if method == "ciard" else {"peer", "swa"})
    repo = copy_of(prepared, tmp_path / "run")
    # killed after the 6th step (epoch 2, batch 2) before its save: the state after the 5th
    kill = {"BMTARD_FAULT": "distill/batch:6", "BMTARD_FAULT_SCOPE": "process"}
    proc = stage(repo, _params(method), *DISTILL, env=kill)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (repo / "models" / "student.pt").exists()
    proc = stage(repo, _params(method), *DISTILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the state at epoch 2, batch 1\n" in proc.stderr, proc.stderr[-3000:]
    assert _results(repo) == _results(ref)
