"""GPU slots: each running GPU job gets a GPU of its own (CUDA_VISIBLE_DEVICES), simulated
without GPUs: BMTARD_GPUS names the slots, and jobs record when they held which one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmtard.core import gpu_slots
from bmtard.core.errors import ParamsError

from conftest import ROOT
from pipeline_helpers import env as pipeline_env

# A job: claim a slot as a GPU stage does, hold it, record (CUDA_VISIBLE_DEVICES, start, end).
JOB = """
import json, sys, time
from bmtard.core import gpu_slots
import os
slot = gpu_slots.claim_for_stage("auto")
start = time.time()
time.sleep(float(sys.argv[2]))
end = time.time()
with open(sys.argv[1], "w") as f:
    json.dump({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": end}, f)
"""


def _env(tmp_path: Path, gpus: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(BMTARD_GPUS=gpus, BMTARD_GPU_LOCKS=str(tmp_path / "locks"), PYTHONPATH=str(ROOT))
    return env


def _job(tmp_path: Path, i: int, hold: float, env: dict[str, str]) -> subprocess.Popen:
    # Written once: rewriting it for each launch truncates it under a job that is still reading
    # it, and Python runs the empty file, exits 0 and records nothing.
    script = tmp_path / "job.py"
    if not script.exists():
        script.write_text(JOB)
    out = tmp_path / f"job{i}.json"
    return subprocess.Popen([sys.executable, str(script), str(out), str(hold)], env=env)


def _never_shared(records: list[dict]) -> None:
    """No two records hold the same GPU at overlapping times."""
    by_gpu: dict[str, list[tuple[float, float]]] = {}
    for r in records:
        assert r["gpu"] is not None
        by_gpu.setdefault(r["gpu"], []).append((r["start"], r["end"]))
    for gpu, spans in by_gpu.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"GPU {gpu} held by two jobs at once"


def test_machine_gpus_from_the_variable_or_nvidia_smi(monkeypatch, tmp_path):
    assert gpu_slots.machine_gpus({"BMTARD_GPUS": "0, 2,3"}) == ["0", "2", "3"]
    assert gpu_slots.machine_gpus({"BMTARD_GPUS": ""}) == []
    with pytest.raises(ParamsError, match=r"^BMTARD_GPUS = 'a,b': comma-separated GPU indices"):
        gpu_slots.machine_gpus({"BMTARD_GPUS": "a,b"})
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: a)'\necho 'GPU 1: NVIDIA H100 (UUID: b)'\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert gpu_slots.machine_gpus({}) == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu_slots.machine_gpus({}) == []


@pytest.mark.parametrize(
    "env, device",
    [
        ({"CUDA_VISIBLE_DEVICES": "3"}, "auto"),  # the scheduler chose (SLURM --gpus)
        ({}, "cuda:1"),  # the user chose
        ({}, "cpu"),
        ({"BMTARD_GPUS": ""}, "auto"),  # no GPU here
    ],
)
def test_nothing_is_claimed_when_the_choice_is_made(tmp_path, env, device):
    env = {"BMTARD_GPUS": "0,1", "BMTARD_GPU_LOCKS": str(tmp_path), **env}
    before = dict(env)
    assert gpu_slots.claim_for_stage(device, env) is None
    assert env == before


def test_a_claim_sets_the_device_and_holds_it_until_released(tmp_path):
    env = {"BMTARD_GPUS": "4,5", "BMTARD_GPU_LOCKS": str(tmp_path)}
    first = gpu_slots.claim_for_stage("auto", env)
    assert first is not None and env["CUDA_VISIBLE_DEVICES"] == "4"
    second = gpu_slots.claim(["4", "5"], tmp_path)
    assert second.gpu == "5"
    with pytest.raises(TimeoutError, match="no free GPU among 4,5"):
        gpu_slots.claim(["4", "5"], tmp_path, wait_seconds=0.3)
    first.release()
    assert gpu_slots.claim(["4", "5"], tmp_path, wait_seconds=0).gpu == "4"


def test_concurrent_jobs_never_share_a_gpu(tmp_path):
    """Seven jobs at once on 3 GPUs (more jobs than GPUs, as `dvc queue start -j 7` would run):
    each GPU is held by one job at a time; the others wait, and all finish."""
    env = _env(tmp_path, "0,1,2")
    jobs = [_job(tmp_path, i, 0.3, env) for i in range(7)]
    assert [j.wait(timeout=120) for j in jobs] == [0] * 7
    records = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(7)]
    _never_shared(records)
    assert {r["gpu"] for r in records} == {"0", "1", "2"}


def test_a_killed_job_frees_its_gpu(tmp_path):
    env = _env(tmp_path, "0")
    holder = _job(tmp_path, 0, 60, env)
    deadline = time.monotonic() + 30
    while not list((tmp_path / "locks").glob("gpu-0.lock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the holder has the lock now (it sleeps for a minute)
    with pytest.raises(TimeoutError):
        gpu_slots.claim(["0"], tmp_path / "locks", wait_seconds=0.5)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert gpu_slots.claim(["0"], tmp_path / "locks", wait_seconds=5).gpu == "0"


SNAKEFILE = """
rule all:
    input: expand("job{i}.json", i=range(6))

rule job:
    output: "job{i}.json"
    resources: gpu=1
    shell: "{python} job.py {output} 0.4"
"""


@pytest.mark.parametrize("granted", [2, 6])
def test_snakemake_gpu_jobs_never_share_a_gpu(tmp_path, granted):
    """`snakemake --cores 6 --resources gpu=N` on a 2-GPU machine: with N = 2 Snakemake runs two
    GPU jobs at a time and each has its own GPU; with N = 6 (more than the machine has) the
    slots still keep each GPU to one job."""
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "Snakefile").write_text(SNAKEFILE.replace("{python}", sys.executable))
    snakemake = str(Path(sys.executable).parent / "snakemake")
    cmd = [snakemake, "--cores", "6", "--resources", f"gpu={granted}", "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path, "0,1"), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(6)]
    _never_shared(records)
    assert {r["gpu"] for r in records} == {"0", "1"}


DVC_YAML = """
stages:
  job:
    cmd: {python} {job} {records}/job-${{x}}.json 3.0
    params: [x]
    outs: [done.txt]
"""


def test_dvc_queue_jobs_never_share_a_gpu(tmp_path):
    """`dvc queue start -j 3` (here `dvc exp run --run-all -j 3`, which also waits) running three
    queued experiments on a 2-GPU machine: the slots keep each GPU to one job at a time."""
    repo, records = tmp_path / "repo", tmp_path / "records"
    repo.mkdir()
    records.mkdir()
    (tmp_path / "job.py").write_text(JOB + "open('done.txt', 'w').write('done')\n")
    dvc_yaml = DVC_YAML.format(python=sys.executable, job=tmp_path / "job.py", records=records)
    (repo / "dvc.yaml").write_text(dvc_yaml)
    (repo / "params.yaml").write_text("x: 0\n")
    slots = _env(tmp_path, "0,1")
    env = {**pipeline_env(), **{k: slots[k] for k in ("BMTARD_GPUS", "BMTARD_GPU_LOCKS")}}
    env["PYTHONPATH"] = str(ROOT)  # the job imports bmtard; dvc's queue workers need dvc on PATH
    dvc = str(Path(sys.executable).parent / "dvc")

    def run(*cmd: str) -> None:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "init")
    for x in (1, 2, 3):
        run(dvc, "exp", "run", "--queue", "-S", f"x={x}")
    run(dvc, "exp", "run", "--run-all", "-j", "3")
    found = [json.loads((records / f"job-{x}.json").read_text()) for x in (1, 2, 3)]
    _never_shared(found)
    assert {r["gpu"] for r in found} == {"0", "1"}  # they did run at once
