"""The fast step keeps the numerics: with fp32 on a CPU the new B-MTARD step (balance on the
device, no .item(), teachers in inference mode) gives the official-structure step's τ, w, losses
and weights bit for bit; bf16 trains and stays close to fp32; channels_last stays within float
rounding; the loader draws an epoch exactly as a batch-by-batch loop would; threads follow what
the engine or the scheduler granted."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from bmtard.config.schema import BalanceConfig, RunConfig, TrainAttackConfig
from bmtard.core.errors import ParamsError
from bmtard.data.loader import Batches, random_crop_flip, to_tensor
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance
from bmtard.methods.reference import FloatBalance, official_step
from bmtard.models import build_model
from bmtard.runtime.device import threads_given
from bmtard.runtime.execution import Execution

from training_helpers import random_split

ATTACK = TrainAttackConfig(steps=2)
BALANCE = BalanceConfig(tau_lr=0.05, weight_lr=0.1)  # large rates: τ and w move every step


def models(width: float = 0.0625):
    """A tiny student and two tiny teachers of different confidence (τ then moves)."""
    torch.manual_seed(0)
    student = build_model("resnet18", 10, width)
    t_adv = build_model("preact_resnet18", 10, width).eval()
    t_nat = build_model("resnet18", 10, width).eval()
    with torch.no_grad():
        t_nat.linear.weight.mul_(20.0)
    for t in (t_adv, t_nat):
        t.requires_grad_(False)
    return student, t_adv, t_nat


def batches(n_steps: int):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.rand(12, 3, 32, 32, generator=gen), torch.randint(0, 10, (12,), generator=gen))
        for _ in range(n_steps)
    ]


def run_new(ex: Execution, data, factors, width: float = 0.0625):
    student, t_adv, t_nat = models(width)
    ex.student(student)
    method = BMTARD(
        ex.teacher(t_adv), ex.teacher(t_nat), ATTACK, Balance.from_config(BALANCE), "mean", ex
    )
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    trace = []
    torch.manual_seed(7)  # the PGD noise
    for (x, y), factor in zip(data, factors, strict=True):
        method.rate_factor = factor  # as start_epoch sets it from the schedule
        loss, logs = method.batch_loss(student, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trace.append({**{k: float(v) for k, v in logs.items()}, **method.status()})
    return trace, student


def run_reference(data, factors):
    student, t_adv, t_nat = models()
    balance = FloatBalance.from_config(BALANCE)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    trace = []
    torch.manual_seed(7)
    for (x, y), factor in zip(data, factors, strict=True):
        logs = official_step(student, t_adv, t_nat, x, y, opt, balance, ATTACK, factor)
        b = balance
        trace.append(
            {**logs, "tau_adv": b.tau_adv, "tau_nat": b.tau_nat, "w_adv": b.w_adv, "w_nat": b.w_nat}
        )
    return trace, student


FACTORS = [1.0, 1.0, 1.0, 0.1, 0.1, 0.01]  # the lr decays after two milestones


def test_fp32_step_equals_the_official_structure_bit_for_bit():
    data = batches(len(FACTORS))
    new, s_new = run_new(Execution(), data, FACTORS)
    ref, s_ref = run_reference(data, FACTORS)
    assert new == ref  # every loss, τ and w of every step, exactly
    assert len({t["tau_nat"] for t in ref}) > 2 and len({t["w_adv"] for t in ref}) > 2  # moved
    for k, v in s_ref.state_dict().items():
        assert torch.equal(s_new.state_dict()[k], v), k


def gaps(a: list[dict], b: list[dict]) -> dict[str, float]:
    return {k: max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True)) for k in a[0]}


def test_bf16_trains_and_stays_close_to_fp32():
    """CPU autocast runs bf16 too. Measured here over 6 steps: τ identical (its sign steps do
    not flip), w within 9.1e-5 (1.8e-4 relative), losses within 0.5 % of fp32's."""
    data = batches(len(FACTORS))
    fp32, _ = run_new(Execution(), data, FACTORS)
    bf16, student = run_new(Execution(precision="bf16"), data, FACTORS)
    g = gaps(fp32, bf16)
    assert g["tau_adv"] == 0 and g["tau_nat"] == 0, g
    assert g["w_adv"] < 1e-3 and g["w_nat"] < 1e-3, g
    for k in ("loss", "loss_adv", "loss_nat"):
        assert g[k] < 0.02 * max(t[k] for t in fp32), (k, g)
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights fp32
    assert bf16[-1]["loss"] != fp32[-1]["loss"]  # bf16 really ran


def test_channels_last_stays_close_to_nchw():
    """Another memory layout changes the order of the sums: on this CPU the BatchNorm gradients
    of channels_last are 1e-4 from float64's (relative to their largest element) where NCHW's are
    5e-6, and the sign steps of PGD carry such differences on. Measured over 6 steps: τ identical,
    w within 3.3e-4, losses within 0.5 % (relative). Width 1/8: every strided 1x1 convolution
    has a multiple of 8 input channels (see the next test)."""
    data = batches(len(FACTORS))
    fp32, _ = run_new(Execution(), data, FACTORS, width=0.125)
    cl, student = run_new(Execution(channels_last=True), data, FACTORS, width=0.125)
    assert student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    g = gaps(fp32, cl)
    assert g["tau_adv"] == 0 and g["tau_nat"] == 0, g
    assert g["w_adv"] < 2e-3 and g["w_nat"] < 2e-3, g
    for k in ("loss", "loss_adv", "loss_nat"):
        assert g[k] < 0.02 * max(t[k] for t in fp32), (k, g)


def test_channels_last_refuses_what_onednn_gets_wrong_on_a_cpu():
    """oneDNN's AVX2 weight gradient of a strided 1x1 convolution in channels_last hung here
    for 4 input channels: the student at width 1/16 (4 -> 8 channels) is refused with one line
    naming the parameter; its teachers (no weight gradient) are not."""
    student, t_adv, _ = models(0.0625)
    with pytest.raises(ParamsError, match=r"run\.channels_last.*layer2\.0\.shortcut\.0"):
        Execution(channels_last=True).student(student)
    Execution(channels_last=True).teacher(t_adv)
    assert t_adv.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_teachers_are_frozen_bf16_when_asked():
    _, t_adv, _ = models()
    ex = Execution(precision="bf16")
    ex.teacher(t_adv)
    assert not t_adv.training and all(not p.requires_grad for p in t_adv.parameters())
    assert all(p.dtype == torch.bfloat16 for p in t_adv.parameters())
    z = ex.teacher_logits(t_adv, torch.rand(3, 3, 32, 32))
    assert z.dtype == torch.float32 and not z.is_inference()  # autograd may keep it


def test_epoch_draws_equal_a_batch_by_batch_loop():
    """The loader draws an epoch's order, crops and flips at its start (one copy to the device);
    they are exactly those of drawing batch by batch from the same generator."""
    split = random_split(50, 3)
    b = Batches(split, 16, device=torch.device("cpu"), shuffle=True, augment=True, seed=4)
    b.set_epoch(3)
    got = list(b)
    gen = torch.Generator().manual_seed(4 * 1_000_003 + 3)
    order = torch.randperm(50, generator=gen)
    images, labels = torch.from_numpy(split.images), torch.from_numpy(split.labels)
    for i, (x, y) in enumerate(got):
        idx = order[16 * i : 16 * (i + 1)]
        assert torch.equal(x, random_crop_flip(to_tensor(images[idx]), 4, gen))
        assert torch.equal(y, labels[idx])
    assert len(got) == 4 and len(got[-1][1]) == 2  # the partial last batch is kept


def test_resumed_epoch_yields_the_remaining_batches():
    split = random_split(50, 3)
    b = Batches(split, 16, device=torch.device("cpu"), shuffle=True, augment=True, seed=4)
    b.set_epoch(2)
    full = list(b)
    c = copy.deepcopy(b)
    c.load_state_dict({"epoch": 2, "position": 2})
    rest = list(c)
    assert len(rest) == 2
    for (x, y), (x2, y2) in zip(full[2:], rest, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize(
    ("num_threads", "env", "want"),
    [
        (3, {"SLURM_CPUS_PER_TASK": "5", "OMP_NUM_THREADS": "7"}, 3),  # the parameter wins
        (0, {"SLURM_CPUS_PER_TASK": "5", "OMP_NUM_THREADS": "7"}, 5),  # then SLURM's grant
        (0, {"OMP_NUM_THREADS": "7"}, 7),  # then Snakemake's {threads}
        (0, {}, None),  # then the CPUs this process may run on
    ],
)
def test_threads_follow_what_was_granted(monkeypatch, num_threads, env, want):
    for var in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    got = threads_given(RunConfig(num_threads=num_threads))
    assert got == (want if want is not None else len(os.sched_getaffinity(0)))


def test_compiled_models_stop_compiling_after_the_first_epoch(monkeypatch):
    """``run.compile``: each model's forward is compiled in place, and the student's switches
    between eval (PGD) and train mode, and the partial last batch, compile once each: a second
    epoch compiles nothing. Dynamo's tracing is real; the backend (inductor on the device,
    minutes per graph on this CPU) is replaced by one that counts the graphs it is given."""
    import torch._dynamo

    graphs: list[int] = []

    def counting(gm, example_inputs):
        graphs.append(1)
        return gm.forward

    original = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self: original(self, backend=counting, dynamic=False)
    )
    torch._dynamo.reset()
    ex = Execution(compile=True)
    student, t_adv, t_nat = models()
    ex.student(student)
    method = BMTARD(
        ex.teacher(t_adv), ex.teacher(t_nat), ATTACK, Balance.from_config(BALANCE), execution=ex
    )
    gen = torch.Generator().manual_seed(0)
    epoch = [(torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,))) for n in (8, 3)]
    per_epoch = []
    for _ in range(2):
        for x, y in epoch:
            method.batch_loss(student, x, y)[0].backward()
        per_epoch.append(len(graphs))
    torch._dynamo.reset()
    assert per_epoch[0] > 0 and per_epoch[1] == per_epoch[0], per_epoch
    assert torch._dynamo.config.cache_size_limit >= 8
