"""Several processes in one training stage (``run.processes``; bmtard.core.distributed,
bmtard.core.launch): the shares of a batch, one balance state on every rank, the single-process
trajectory, and the distill stage as two torchrun workers (gloo, CPU) that stop together and
resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from bmtard.config.params import parse_params
from bmtard.core import distributed, gpu_slots
from bmtard.core.errors import ParamsError
from bmtard.models.checkpoint import saved_record

from conftest import ROOT
from ddp_trajectory import trajectory
from pipeline_helpers import copy_project, run
from test_stages import (  # noqa: F401 (prepared: the fixture)
    DISTILL,
    copy_of,
    prepared,
    sigterm_distill,
    stage,
    tiny_params,
)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.mark.parametrize("n", [1, 7, 8, 81])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_batch_once_in_order_and_scale_to_its_mean(n, size):
    shards = [distributed.shard(n, r, size) for r in range(size)]
    rows = [i for s in shards for i in range(n)[s]]
    assert rows == list(range(n))
    lengths = [s.stop - s.start for s in shards]
    assert max(lengths) - min(lengths) <= 1
    # DDP averages the ranks' gradients: the scaled batch means average to the global mean
    values = torch.arange(n, dtype=torch.float64) ** 2
    means = [values[s].mean() if s.stop > s.start else torch.zeros(()) for s in shards]
    scaled = [m * distributed.loss_scale(k, n, size) for m, k in zip(means, lengths, strict=True)]
    assert torch.allclose(sum(scaled) / size, values.mean(), rtol=1e-12)


def test_one_process_leaves_everything_untouched():
    model = torch.nn.Linear(2, 2)
    values = (torch.tensor(1.5), torch.tensor(2.5))
    assert distributed.world() == 1 and distributed.is_main()
    assert distributed.wrap(model, torch.device("cpu")) is model
    out = distributed.batch_mean(3, *values)
    assert all(a is b for a, b in zip(out, values, strict=True))
    assert distributed.any_rank(True, False) == (True, False)
    assert distributed.sums({"loss": 2.0}, 4) == ({"loss": 2.0}, 4)
    assert distributed.on_main(lambda: 7) == 7


def test_processes_must_divide_every_training_batch_size():
    params = tiny_params()  # batch sizes of 10
    params["run"]["processes"] = 2
    assert parse_params(params).run.processes == 2
    params["run"]["processes"] = 3
    with pytest.raises(ParamsError, match=r"^run.processes = 3 must divide clean_teacher"):
        parse_params(params)
    params["run"]["processes"] = 0
    with pytest.raises(ParamsError, match=r"run.processes"):
        parse_params(params)


def test_a_stage_of_two_processes_claims_two_gpus_all_or_none(tmp_path):
    """Two jobs that want two GPUs each on three GPUs: the second waits (holding none) until the
    first releases; asking for more GPUs than the machine has is one line."""
    first = gpu_slots.claim(["0", "1", "2"], tmp_path, count=2)
    assert first.gpu == "0,1"
    with pytest.raises(TimeoutError):
        gpu_slots.claim(["0", "1", "2"], tmp_path, wait_seconds=0.3, count=2)
    assert gpu_slots.claim(["0", "1", "2"], tmp_path, wait_seconds=0).gpu == "2"  # none held
    first.release()
    assert gpu_slots.claim(["0", "1", "2"], tmp_path, wait_seconds=0, count=2).gpu == "0,1"
    with pytest.raises(ParamsError, match="run.processes = 4 wants 4 GPUs; this machine has 3"):
        gpu_slots.claim(["0", "1", "2"], tmp_path, count=4)
    env = {"BMTARD_GPUS": "0,1,2,3", "BMTARD_GPU_LOCKS": str(tmp_path / "stage")}
    slot = gpu_slots.claim_for_stage("auto", env, count=2)
    assert slot.gpu == "0,1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_repeated_stop_signal_is_the_same_request_until_the_window_ends():
    """SLURM (and srun, and torchrun) may each send the stop: the signals that follow within
    REPEAT_SECONDS do not end the process; one after that does (Ctrl-C pressed again)."""
    script = (
        "import os, signal, sys, time\n"
        "from bmtard.core import stop as s\n"
        "s.REPEAT_SECONDS = 0.5\n"
        "with s.graceful_stop() as req:\n"
        "    for _ in range(3):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.1)\n"
        "    print('alive', bool(req), req.name, flush=True)\n"
        "    time.sleep(0.6)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "    print('not reached', flush=True)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.splitlines() == ["alive True SIGTERM"]
    assert proc.returncode == -signal.SIGTERM


def test_two_workers_share_one_balance_state_and_follow_the_single_process_run(tmp_path):
    """B-MTARD on 64 images, global batch 16, 12 steps: as two torchrun workers (gloo) the
    temperatures, weights and parameters are identical on both ranks at every step; against one
    process with the same global batch the trajectory stays within the stated tolerance. It is
    not exact on a CPU: there each rank normalises its 8 images with their own BatchNorm
    statistics (SyncBatchNorm, used on CUDA, refuses CPU tensors), and the ranks draw other
    random starts for the attack than one process does."""
    script = ROOT / "tests" / "ddp_trajectory.py"
    proc = subprocess.run(
        [*TORCHRUN, "--nproc_per_node=2", str(script), str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"trajectory-{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["steps"]) == 12
    assert ranks[0]["steps"] == ranks[1]["steps"]  # bit for bit
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]
    single, _ = trajectory()
    two = torch.tensor(ranks[0]["steps"], dtype=torch.float64)
    one = torch.tensor(single, dtype=torch.float64)
    spread = one.max(0).values - one.min(0).values
    assert spread[1] >= 0.3 and spread[0] >= 0.05 and spread[2] >= 0.003  # the balance moved
    tau, w = (two - one)[:, :2].abs(), (two - one)[:, 2:].abs()
    # measured here: the temperatures equal at every step (their sign steps agree although
    # tau_adv turns four times), the weights at most 0.0009 apart while they move by 0.005
    assert tau.max() <= 0.05 + 1e-12  # at most one sign step (tau_lr) apart
    assert w.max() <= 0.002, w.max()


def test_distill_stage_as_two_workers_stops_together_resumes_and_writes_once(prepared, tmp_path):  # noqa: F811
    """The distill stage with run.processes: 2 on the CPU: SIGTERM to the stage stops both
    workers at one batch with the state saved by rank 0 (exit code 143); the same command then
    resumes and finishes, and the outputs and the log are rank 0's alone."""
    repo = copy_of(prepared, tmp_path)
    params = tiny_params(run={"processes": 2})
    returncode, err = sigterm_distill(repo, params, timeout=240)
    assert returncode == 143, err[-3000:]
    stopped = [ln for ln in err.splitlines() if ln.startswith("stopped: ")]
    assert len(stopped) == 2, err[-3000:]  # rank 0: where; the stage: that both stopped
    assert "stopped by SIGTERM" in stopped[0] and "is saved" in stopped[0]
    assert stopped[1].startswith("stopped: distill: stopped by SIGTERM; the workers stopped at")
    assert "Traceback" not in err
    assert not (repo / "models" / "student.pt").exists()
    proc = stage(repo, params, *DISTILL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    assert proc.stderr.count("distill epoch 2/2:") == 1  # rank 1 logs warnings only
    record = saved_record(repo / "models" / "student.pt")
    assert record.run["processes"] == 2 and record.epoch in (1, 2)
    metrics = json.loads((repo / "dvclive" / "distill" / "metrics.json").read_text())
    assert metrics["step"] == 2


def test_snakemake_gives_a_training_job_one_gpu_per_process(tmp_path):
    """With run.processes: 2 the training rules ask for gpu=2 (SLURM: --gpus=2), evaluate for 1."""
    repo = copy_project(tmp_path / "p", {"run.processes": 2})
    out = run(repo, "snakemake", "-n", "--cores", "4", "--resources", "gpu=2").stdout
    jobs = dict(re.findall(r"rule (\w+):.*?resources: ([^\n]*)", out, flags=re.S))
    for rule in ("train_clean_teacher", "train_robust_teacher", "distill"):
        assert "gpu=2" in jobs[rule], jobs
    assert "gpu=1" in jobs["evaluate"], jobs
