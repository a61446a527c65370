"""What only a CUDA device can show (``pytest -m cuda``; every test is skipped without CUDA):
the B-MTARD step in fp32 on CUDA against the CPU step, bf16 + channels_last, the attack's fast
path (each switch, and all of them with the twin as CUDA graphs) and a compiled student against
eager fp32, SyncBatchNorm over NCCL, a saved training state resumed on CUDA, a GPU slot claimed
with the real ``nvidia-smi -L``, and the fp32 evaluation of a fixed model on CUDA against the
CPU.

``bench/gpu_acceptance.py`` runs them and puts the numbers each test records (the gaps it
measured) in its report: ``record(...)`` appends them to the JSON-lines file named by
``BMTARD_ACCEPTANCE_RECORD``, before the test's assertions, so a failed test still reports what it
saw. The tolerances are stated in each test; where the CPU has a measured figure
(``tests/test_speed.py``) the same bound is used. The compiled student comes last: inductor takes
the longest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from test_resume import Crash, crash_at, distill, run_cfg
from test_speed import ATTACK, BALANCE, FACTORS, batches, gaps, models

from bmtard.config.schema import EvaluateConfig, SanityConfig, TrainAttackConfig
from bmtard.core import gpu_slots
from bmtard.evaluation.protocol import evaluate_model
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance
from bmtard.runtime.execution import Execution

from conftest import ROOT, TinyNet, synthetic

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

RECORD_VAR = "BMTARD_ACCEPTANCE_RECORD"
CUDA = torch.device("cuda")


@pytest.fixture
def record(request):
    """``record(**numbers)``: the test's measured numbers, for the acceptance report."""

    def write(**numbers) -> None:
        path = os.environ.get(RECORD_VAR)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.name, **numbers}) + "\n")

    return write


@contextlib.contextmanager
def strict_fp32():
    """fp32 as the CPU computes it: no TF32 in cuDNN's convolutions (on by default in torch) or
    in matrix products, deterministic cuDNN algorithms."""
    b = torch.backends
    saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic, b.cudnn.benchmark)
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
    b.cudnn.deterministic, b.cudnn.benchmark = True, False
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.deterministic = saved[:3]
        b.cudnn.benchmark = saved[3]


def run_step(student_ex, teacher_ex, data, device, *, width=0.0625, attack=ATTACK, seed=7):
    """B-MTARD over ``data`` on ``device``: the per-step trace (losses, τ, w), the student, and
    the seconds of the first step (compilation, where there is one) and of the rest."""
    student, t_adv, t_nat = (m.to(device) for m in models(width))
    student_ex.student(student)
    method = BMTARD(
        teacher_ex.teacher(t_adv), teacher_ex.teacher(t_nat), attack,
        Balance.from_config(BALANCE, device), "mean", student_ex,
    )  # fmt: skip
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    trace, seconds = [], []
    torch.manual_seed(seed)  # the PGD noise (every device's generator)
    for (x, y), factor in zip(data, FACTORS[: len(data)], strict=True):
        start = time.perf_counter()
        method.rate_factor = factor  # as start_epoch sets it from the schedule
        loss, logs = method.batch_loss(student, x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trace.append({**{k: float(v) for k, v in logs.items()}, **method.status()})
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return trace, student.cpu(), seconds


def relative_gaps(a: list[dict], b: list[dict]) -> dict[str, float]:
    """Per key, the largest |a - b| over the steps: absolute for τ and w, relative to the
    largest |a| for the losses."""
    out = gaps(a, b)
    for k in out:
        if k.startswith("loss"):
            out[k] /= max(abs(t[k]) for t in a) or 1.0
    return out


def weight_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest parameter difference, relative to that parameter's largest magnitude."""
    worst = 0.0
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        if p.is_floating_point():
            scale = p.abs().max().item() or 1.0
            worst = max(worst, (p - q).abs().max().item() / scale)
    return worst


def test_fp32_step_on_cuda_follows_the_cpu_step(record):
    """Tolerance: τ identical, w within 1e-4, losses within 1e-3 (relative), weights within 1e-3
    (relative) over 6 steps that cross two lr decays. Not exact: cuDNN and oneDNN sum in other
    orders, and a PGD sign step flips where a gradient is near 0. The attack starts at x (no
    random start: the two devices' generators draw different numbers)."""
    data = batches(len(FACTORS))
    attack = TrainAttackConfig(steps=2, init="none")
    with strict_fp32():
        cpu, s_cpu, _ = run_step(Execution(), Execution(), data, torch.device("cpu"), attack=attack)
        ex = Execution(device_type="cuda")
        gpu, s_gpu, sec = run_step(ex, ex, data, CUDA, attack=attack)
    g, w = relative_gaps(cpu, gpu), weight_gap(s_cpu, s_gpu)
    record(gaps=g, weight_gap=w, seconds_per_step=sec)
    assert g["tau_adv"] == 0 and g["tau_nat"] == 0, g
    assert g["w_adv"] < 1e-4 and g["w_nat"] < 1e-4, g
    assert all(g[k] < 1e-3 for k in ("loss", "loss_adv", "loss_nat")), g
    assert w < 1e-3, w


def test_bf16_channels_last_stays_close_to_fp32_on_cuda(record):
    """The fast path against fp32 (TF32 off), both on CUDA, over 6 steps: τ identical, w within
    1e-3, losses within 2 % of the largest (the CPU's bounds for bf16, tests/test_speed.py)."""
    data = batches(len(FACTORS))
    with strict_fp32():
        ex = Execution(device_type="cuda")
        fp32, _, _ = run_step(ex, ex, data, CUDA, width=0.125)
        fast = Execution("bf16", channels_last=True, device_type="cuda")
        bf16, student, sec = run_step(fast, fast, data, CUDA, width=0.125)
    g = relative_gaps(fp32, bf16)
    record(gaps=g, seconds_per_step=sec)
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights
    assert bf16[-1]["loss"] != fp32[-1]["loss"]  # bf16 really ran
    assert g["tau_adv"] == 0 and g["tau_nat"] == 0, g
    assert g["w_adv"] < 1e-3 and g["w_nat"] < 1e-3, g
    assert all(g[k] < 0.02 for k in ("loss", "loss_adv", "loss_nat")), g


SYNC_BN = """
import copy, json, sys, tempfile, torch, torch.distributed as dist, torch.nn.functional as F
from bmtard.models import build_model
store = tempfile.mktemp()
dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
t = torch.ones(3, device="cuda"); dist.all_reduce(t)
torch.manual_seed(0)
plain = build_model("resnet18", 10, 0.125).cuda().train()
synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
ddp = torch.nn.parallel.DistributedDataParallel(synced, device_ids=[0], broadcast_buffers=False)
x, y = torch.rand(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
za, zb = plain(x), ddp(x)
F.cross_entropy(za, y).backward(); F.cross_entropy(zb, y).backward()
gap = max((p.grad - q.grad).abs().max().item() for p, q in
          zip(plain.parameters(), synced.parameters()))
print(json.dumps({
    "all_reduce": t.tolist(),
    "sync_layers": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()),
    "same_keys": list(plain.state_dict()) == list(synced.state_dict()),
    "logit_gap": (za - zb).abs().max().item(), "grad_gap": gap,
    "stats_gap": max((a - b).abs().max().item() for a, b in
                     zip(plain.state_dict().values(), synced.state_dict().values())
                     if a.is_floating_point()),
}))
dist.destroy_process_group()
"""


def test_sync_batch_norm_conversion_over_nccl(record):
    """What ``bmtard.core.distributed.wrap`` does on CUDA, in one process over NCCL (in a
    subprocess with its own time limit: an NCCL hang costs this test alone): the BatchNorm layers
    become SyncBatchNorm with the same state_dict keys, NCCL's all_reduce works, and under DDP
    the forward, gradients and running statistics equal plain BatchNorm's within 1e-5 (one
    process: SyncBatchNorm normalises with the local statistics). The several-GPU check is the
    acceptance script's ddp part."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SYNC_BN], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    record(**out)
    assert out["all_reduce"] == [1.0, 1.0, 1.0]
    assert out["sync_layers"] > 0 and out["same_keys"]
    assert out["logit_gap"] < 1e-5 and out["grad_gap"] < 1e-5 and out["stats_gap"] < 1e-5, out


def student_gap(a, b) -> float:
    """The largest difference between two saved students' weights and buffers."""
    x = torch.load(a, weights_only=True)["state_dict"]
    y = torch.load(b, weights_only=True)["state_dict"]
    return max((x[k].double() - y[k].double()).abs().max().item() for k in x)


def test_saved_state_resumes_on_cuda(tmp_path, monkeypatch, record):
    """The distillation of tests/test_resume.py on CUDA (cuDNN deterministic, as
    run.deterministic sets it), killed after its 6th step and run again: it resumes from the saved
    state (CUDA's random state included) and ends as close to an uninterrupted run as a second
    uninterrupted run does (docs/known-limits.md): byte for byte where those two agree byte for
    byte, else within 10 times their gap."""
    run = run_cfg(device="cuda")
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    for name in ("a", "b"):
        monkeypatch.chdir(tmp_path / name)
        distill(tmp_path / name / "run", run=run)
    monkeypatch.chdir(tmp_path / "c")
    crash_at(monkeypatch, "batch", 6)
    with pytest.raises(Crash):
        distill(tmp_path / "c" / "run", run=run)
    assert list((tmp_path / "c").glob(".cache/train/*/*.pt"))  # a state was saved
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path / "c")
    distill(tmp_path / "c" / "run", run=run)
    a, b, c = (tmp_path / name / "run" / "student.pt" for name in ("a", "b", "c"))
    repeat, resumed = student_gap(a, b), student_gap(a, c)
    same = {"repeat": a.read_bytes() == b.read_bytes(), "resumed": a.read_bytes() == c.read_bytes()}
    record(identical_bytes=same, repeat_gap=repeat, resumed_gap=resumed)
    if same["repeat"]:
        assert same["resumed"], f"largest weight difference {resumed}"
    assert resumed <= 10 * repeat, (resumed, repeat)


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="no nvidia-smi")
def test_gpu_slot_is_claimed_from_the_real_nvidia_smi(tmp_path, record):
    """``bmtard.core.gpu_slots`` reads the GPUs from ``nvidia-smi -L`` (no BMTARD_GPUS): as many
    as CUDA sees when CUDA_VISIBLE_DEVICES is unset; a stage claims the first, sees it alone, and
    a second claim on a machine whose GPUs are all held waits (here: times out)."""
    env = {gpu_slots.LOCKS_VAR: str(tmp_path)}
    gpus = gpu_slots.machine_gpus(env)
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    record(gpus=gpus, nvidia_smi=listing.stdout.strip().splitlines())
    assert gpus and gpus == [str(i) for i in range(len(gpus))]
    if os.environ.get(gpu_slots.VISIBLE_VAR) is None:
        assert len(gpus) == torch.cuda.device_count()
    slots, shown = [], []
    for _ in gpus:  # one stage after another, each with its own environment
        stage_env = dict(env)
        slots.append(gpu_slots.claim_for_stage("auto", stage_env))
        shown.append(stage_env[gpu_slots.VISIBLE_VAR])
    assert [s.gpu for s in slots] == gpus and shown == gpus
    with pytest.raises(TimeoutError):
        gpu_slots.claim(gpus, tmp_path, wait_seconds=0.3)
    for s in slots:
        s.release()
    assert gpu_slots.claim(gpus, tmp_path, wait_seconds=0).gpu == gpus[0]


def fixed_model() -> torch.nn.Module:
    """A small conv net with BatchNorm trained on the CPU from seed 0 (300 steps on 8 x 8
    images): always the same weights, clean accuracy about 90 %."""
    split = synthetic(500, 0)
    x = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(split.labels)
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_fp32_evaluation_on_cuda_matches_the_cpu(record):
    """The evaluation protocol (fp32, eval mode) of one fixed model on 200 images at eps 4/255,
    as the evaluate stage runs it (torch's default: cuDNN may use TF32) and in strict fp32. Every
    attack but FGSM draws its random start on the device, and the two devices' generators
    differ; so the tolerance is: the clean and FGSM accuracies within 1 image (0.5 %), the
    others within 6 images (3 %); in strict fp32 the clean logits within 1e-4 of the CPU's."""
    model = fixed_model()
    test = synthetic(200, 1)
    cfg = EvaluateConfig(
        n_images=200, batch_size=100, eps=4.0, attacks=["fgsm", "pgd_sat", "pgd_trades", "cw_inf"],
        eps_curve=[0.0, 4.0], resume_dir=None, sanity=SanityConfig(enabled=False),
    )  # fmt: skip
    cpu = evaluate_model(model, test, cfg, torch.device("cpu")).accuracy
    gpu = evaluate_model(model.to(CUDA), test, cfg, CUDA).accuracy
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad(), strict_fp32():
        logit_gap = (model.cpu()(x) - model.to(CUDA)(x.to(CUDA)).cpu()).abs().max().item()
    record(cpu=cpu, cuda=gpu, strict_fp32_logit_gap=logit_gap)
    assert abs(cpu["clean"] - gpu["clean"]) <= 0.5 and abs(cpu["fgsm"] - gpu["fgsm"]) <= 0.5, gpu
    assert all(abs(cpu[k] - gpu[k]) <= 3.0 for k in cpu), (cpu, gpu)
    assert logit_gap < 1e-4, logit_gap


def test_attack_fast_path_follows_fp32_on_cuda(record):
    """The training attack's switches on CUDA (TF32 off) against fp32 eager over 6 steps, with
    the CPU's bounds (tests/test_attack_fast_path.py): no parameter gradients bit for bit;
    BatchNorm folded τ identical, w within 1e-4, losses within 0.5 %; the attack and the
    teachers in bf16, and everything on with the folded twin compiled as CUDA graphs
    (``run.attack_compile: cudagraphs``, the channels_last layout): τ identical, w within 1e-3,
    losses within 2 %. Width 1/8 (channels_last needs multiples of 8 only on a CPU; kept alike)."""
    torch._dynamo.reset()
    data = batches(len(FACTORS))
    on = {"attack_fold_bn": True, "attack_bf16": True, "attack_no_param_grads": True,
          "teachers_bf16": True}  # fmt: skip
    settings = {
        "attack_no_param_grads": {"attack_no_param_grads": True},
        "attack_fold_bn": {"attack_fold_bn": True},
        "attack_bf16": {"attack_bf16": True},
        "teachers_bf16": {"teachers_bf16": True},
        "all": {**on, "channels_last": True, "attack_compile": "cudagraphs"},
    }
    with strict_fp32():
        ref_ex = Execution(device_type="cuda")
        fp32, _, _ = run_step(ref_ex, ref_ex, data, CUDA, width=0.125)
        found = {}
        for name, kw in settings.items():
            ex = Execution(device_type="cuda", **kw)
            got, _, sec = run_step(ex, ex, data, CUDA, width=0.125)
            found[name] = (got, sec)
    torch._dynamo.reset()
    g = {name: relative_gaps(fp32, got) for name, (got, _) in found.items()}
    record(gaps=g, all_first_step_seconds=found["all"][1][0], all_later=found["all"][1][1:])
    assert found["attack_no_param_grads"][0] == fp32
    for name, gap in g.items():
        assert gap["tau_adv"] == 0 and gap["tau_nat"] == 0, (name, gap)
        bound, share = (1e-4, 0.005) if name in ("attack_fold_bn", "attack_no_param_grads") else (
            1e-3, 0.02)  # fmt: skip
        assert gap["w_adv"] < bound and gap["w_nat"] < bound, (name, gap)
        assert all(gap[k] < share for k in ("loss", "loss_adv", "loss_nat")), (name, gap)


def test_compiled_student_follows_eager_on_cuda(record):
    """``run.compile`` with inductor (the student's eval and train graphs, forward and backward)
    against eager, fp32 with TF32 off, over 3 steps: τ identical, w within 1e-4, losses within
    1e-3 (relative). Inductor fuses and reorders sums, so not bit for bit. The teachers stay
    eager (their compilation is timed by bench/bench_step.py --compile)."""
    torch._dynamo.reset()
    data = batches(3)
    with strict_fp32():
        ex = Execution(device_type="cuda")
        eager, _, _ = run_step(ex, ex, data, CUDA)
        compiled, _, sec = run_step(Execution(compile=True, device_type="cuda"), ex, data, CUDA)
    torch._dynamo.reset()
    g = relative_gaps(eager, compiled)
    record(gaps=g, first_step_seconds=sec[0], later_step_seconds=sec[1:])
    assert g["tau_adv"] == 0 and g["tau_nat"] == 0, g
    assert g["w_adv"] < 1e-4 and g["w_nat"] < 1e-4, g
    assert all(g[k] < 1e-3 for k in ("loss", "loss_adv", "loss_nat")), g
