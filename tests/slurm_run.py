"""The SLURM pipeline run of tests/test_slurm.py: start the cluster, run the pipeline through
the profile, wait for it, stop the cluster.

The run is 3.5 to 4.5 minutes of mostly waiting: the SLURM executor plugin polls the queue at
intervals that grow by 10 s while no job finishes, and one job must run into its 1-minute time
limit; its compute is about 2 CPU-minutes. The suite's other process runs other test files
meanwhile (pytest-xdist). The cluster lives in ``CLUSTER``; ``.ci/run`` also stops one that a
killed session left.
"""

from __future__ import annotations

import os
import shlex
import subprocess
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
    """What the SLURM pipeline run left: its project copy, exit code, output and the jobs."""

    folder: Path
    repo: Path | None = None
    returncode: int | None = None
    took: float | None = None
    error: str | None = None
    out: str = field(default="", repr=False)

    @property
    def marker(self) -> Path:
        return self.folder / "paused"

    @property
    def log(self) -> Path:
        return self.folder / "snakemake.log"

    @property
    def jobs(self) -> Path:
        return self.folder / "jobs.txt"


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


def run_pipeline(folder: Path, timeout: float = 900) -> Run:
    """Start the cluster and run the tiny pipeline through it (the cluster stays up: ``stop``)."""
    run = Run(folder)
    cluster = {**os.environ, "BMTARD_SLURM_DIR": str(CLUSTER), "BMTARD_SLURM_GPUS": "2"}
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=cluster, capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        run.error = f"tools/local_slurm.sh start failed:\n{started.stderr[-3000:]}"
        return run
    run.repo = copy_project(folder / "project", {"run.save_every_minutes": 0.0})
    run_env = {**env(), **cluster_env(), **PAUSE, "BMTARD_FAULT_ONCE": str(run.marker)}
    # the jobs as slurmctld saw them, taken as soon as snakemake ends (it forgets them MinJobAge
    # after they ended)
    after = f"rc=$?; scontrol show job -o > {shlex.quote(str(run.jobs))}; exit $rc"
    script = f"{shlex.join(snakemake_command())}; {after}"
    start = time.monotonic()
    with open(run.log, "w") as log:
        try:
            proc = subprocess.run(
                ["bash", "-c", script], cwd=run.repo, env=run_env, stdout=log,
                stderr=subprocess.STDOUT, timeout=timeout,
            )  # fmt: skip
            run.returncode = proc.returncode
        except subprocess.TimeoutExpired:
            run.error = f"the SLURM pipeline ran for more than {timeout:.0f} s"
    run.took = time.monotonic() - start
    run.out = run.log.read_text()
    return run


def stop() -> None:
    """Stop the cluster (its jobs first)."""
    cluster = {**os.environ, "BMTARD_SLURM_DIR": str(CLUSTER)}
    subprocess.run(["bash", str(SCRIPT), "stop"], env=cluster, capture_output=True, timeout=300)
