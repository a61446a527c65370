"""The pipeline on a real SLURM cluster through the Snakemake profile (profiles/slurm): a
one-node cluster on this machine (tools/local_slurm.sh: Debian's slurmctld, slurmd and munge,
two fake GPUs), the tiny pipeline through the profile, and a distill job killed by its time limit
that Snakemake submits again and that resumes from its saved training state.

The run is tests/slurm_run.py's. The profile's CPU, memory and runtime sizes are the paper's
(8 CPUs, 32 GB, hours); this node has 2 CPUs, so the run overrides them on the command line, as a
user of a small cluster would. Needs root (the daemons, fake device nodes, apt when the packages
are missing).
"""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

import slurm_run
from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def jobs(text: str) -> list[dict[str, str]]:
    """The jobs of ``scontrol show job -o`` output, as key=value fields."""
    lines = [line for line in text.splitlines() if "JobId=" in line]
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines]


def test_pipeline_through_the_slurm_profile_resumes_after_a_time_limit(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (daemons, device nodes, apt)")
    try:
        run = slurm_run.run_pipeline(tmp_path)
    finally:
        slurm_run.stop()
    assert run.error is None, f"{run.error}\n{run.out[-5000:]}"
    assert run.returncode == 0, run.out[-5000:]
    repo = run.repo
    assert run.marker.exists()  # the first attempt did stop mid-batch
    for stage in STAGES.values():  # every output of every stage
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                assert (repo / path).exists(), path
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert metrics["sanity"] == "passed"
    # the distill job ran out of time, was submitted again, and resumed from batch 2
    log = (repo / "logs" / "distill.log").read_text()
    assert "resuming from" in log and "the state at epoch 1, batch 2" in log, log[-2000:]
    assert "SLURM status is: 'TIMEOUT'" in run.out
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in jobs(run.jobs.read_text()):
        if job.get("WorkDir") != str(repo):
            continue
        rule = re.search(r"rule_([a-z_]+?)(_wildcards|$)", job.get("Comment", ""))
        assert rule, job
        by_rule.setdefault(rule.group(1), []).append(job)
    assert sorted(by_rule) == sorted(STAGES), sorted(by_rule)
    assert sorted(j["JobState"] for j in by_rule["distill"]) == ["COMPLETED", "TIMEOUT"]
    for rule, rule_jobs in by_rule.items():  # each GPU rule got one GPU (--gpus=1), none else
        gpu = STAGES[rule].get("meta", {}).get("gpu", 0)
        for job in rule_jobs:
            tres = job.get("TresPerJob", "")
            assert (tres in ("gres:gpu:1", "gres/gpu:1")) if gpu else ("gpu" not in tres), job
    print(f"SLURM pipeline: {run.took:.0f} s")
