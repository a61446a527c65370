"""The SLURM pipeline run of tests/test_slurm.py, started in the background when the session
starts (tests/conftest.py) and waited for by the test.

Why in the background: the run is about 4.5 minutes of mostly waiting. The SLURM executor plugin
polls the queue at intervals that grow by 10 s while no job finishes, and the run includes one
job that must run into its 1-minute time limit; its compute is well under a minute. Started with
the session, its waiting overlaps the other tests instead of adding to the suite's time.

The cluster is started here (tools/local_slurm.sh start, in ``CLUSTER``) and stopped when the
session ends (``.ci/run`` also stops one that a killed session left).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conftest import ROOT
from pipeline_helpers import BIN, copy_project, env

#: the test cluster's folder (not the script's default, so a user's own cluster is left alone)
CLUSTER = Path("/tmp/bmtard-slurm-test")
SCRIPT = ROOT / "tools" / "local_slurm.sh"
RULES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
#: the first attempt of distill stops in its second batch and waits there, as a job does whose
#: time runs out mid-batch; SLURM's SIGTERM at the 1-minute limit makes it save and stop
PAUSE = {"BMTARD_FAULT": "distill/batch:2", "BMTARD_FAULT_ACTION": "pause"}


@dataclass
class Run:
    """The background run: the project copy, the snakemake process, and what went wrong."""

    folder: Path
    repo: Path | None = None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    took: float | None = None
    error: str | None = None
    out: str = field(default="", repr=False)

    @property
    def marker(self) -> Path:
        return self.folder / "paused"


_run: list[Run] = []  # the one background run of this session (pytest hooks hold no state)


def cluster_env() -> dict[str, str]:
    """The settings the cluster's clients need (the wrappers first on PATH: they set SLURM_CONF
    for the srun inside each job)."""
    return {
        "SLURM_CONF": str(CLUSTER / "etc" / "slurm.conf"),
        "PATH": f"{CLUSTER / 'bin'}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
    }


def snakemake_command() -> list[str]:
    """The profile, with this node's sizes: 2 CPUs, not the paper's 8 CPUs, 32 GB and hours."""
    return [
        str(BIN / "snakemake"), "--profile", "profiles/slurm",
        "--slurm-no-account", "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
        "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=20",
        "--set-threads", *(f"{r}=1" for r in RULES),
        "--set-resources", "distill:runtime=1",  # minutes: the first attempt runs out of time
    ]  # fmt: skip


def begin() -> None:
    """Start the cluster and the pipeline through it (once; no-op without root)."""
    if _run or os.geteuid() != 0:
        return
    run = Run(Path(tempfile.mkdtemp(prefix="bmtard-slurm-test-")))
    _run.append(run)
    cluster = {**os.environ, "BMTARD_SLURM_DIR": str(CLUSTER), "BMTARD_SLURM_GPUS": "2"}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=cluster, capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        run.error = f"tools/local_slurm.sh start failed:\n{started.stderr[-3000:]}"
        return
    run.repo = copy_project(run.folder / "project", {"run.save_every_minutes": 0.0})
    run_env = {**env(), **cluster_env(), **PAUSE, "BMTARD_FAULT_ONCE": str(run.marker)}
    run.started = time.monotonic()
    run.proc = subprocess.Popen(
        snakemake_command(),
        cwd=run.repo,
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def result(timeout: float = 900) -> Run | None:
    """Wait for the background run (None: not started, e.g. not root)."""
    if not _run:
        return None
    run = _run[0]
    if run.proc is not None and run.took is None:
        try:
            run.out, _ = run.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.out, _ = run.proc.communicate()
            run.error = f"the SLURM pipeline ran for more than {timeout:.0f} s"
        run.took = time.monotonic() - run.started
    return run


def end() -> None:
    """Stop the pipeline (if still running) and the cluster."""
    if not _run:
        return
    run = _run[0]
    if run.proc is not None and run.proc.poll() is None:
        run.proc.terminate()
        try:
            run.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.proc.kill()
    cluster = {**os.environ, "BMTARD_SLURM_DIR": str(CLUSTER)}
    subprocess.run(["bash", str(SCRIPT), "stop"], env=cluster, capture_output=True, timeout=300)
