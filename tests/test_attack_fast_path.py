"""The training attack's fast path (``run.attack_*``, ``run.teachers_bf16``;
bmtard/runtime/execution.py and attack_twin.py), on the CPU: each switch against the faithful
fp32 path, with the tolerance each is allowed, for the B-MTARD step and for every method of the
registry; the twin that the attack differentiates follows the student; the evaluation with
frozen parameters is the same bits (tests/test_methods_pipeline.py). Resume per setting:
tests/test_methods_resume.py."""

from __future__ import annotations

import copy

import pytest
import torch
from test_method_contract import _build, _teachers
from test_speed import FACTORS, batches, gaps, run_new

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import OptimConfig, RunConfig
from bmtard.core.errors import ParamsError
from bmtard.data.loader import Batches
from bmtard.methods import registry
from bmtard.models import build_model
from bmtard.runtime.attack_twin import make_twin
from bmtard.runtime.execution import ATTACK_SWITCHES, TEACHERS_SWITCH, Execution
from bmtard.training.loop import Parts, fit, make_optimizer

from training_helpers import WIDTH, tiny_data

CPU = torch.device("cpu")
#: each switch alone, as Execution's keyword, and all of them together (compile apart: below)
ALONE = {
    "attack_fold_bn": {"attack_fold_bn": True},
    "attack_bf16": {"attack_bf16": True},
    "attack_no_param_grads": {"attack_no_param_grads": True},
    "teachers_bf16": {"teachers_bf16": True},
}
ALL = {k: v for kw in ALONE.values() for k, v in kw.items()}


def test_the_switch_table_is_the_schemas():
    run = RunConfig()
    assert set(ALONE) | {"attack_compile"} == {*ATTACK_SWITCHES, TEACHERS_SWITCH}
    assert all(getattr(run, name) in (False, "eager") for name in (*ATTACK_SWITCHES,))
    with pytest.raises(ParamsError, match=r"run\.attack_compile = 'cudagraphs' needs a CUDA"):
        Execution.from_config(RunConfig(attack_compile="cudagraphs"), CPU)


def _with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorms with running statistics and affine parameters away from their start."""
    gen = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model


def _logits_and_gradient(model, x):
    x = x.detach().clone().requires_grad_(True)
    z = model(x)
    (g,) = torch.autograd.grad(z.logsumexp(1).sum(), x)
    return z.detach(), g


@pytest.mark.parametrize(
    ("arch", "folded", "grad_bound"),
    [
        ("resnet18", 20, 1e-5),
        ("mobilenet_v2", 57, 1e-5),
        ("preact_resnet18", 8, 1e-5),
        ("wrn34_10", 16, 1e-2),
    ],
)
def test_folded_batchnorm_gives_the_logits_and_input_gradients_within_rounding(
    arch, folded, grad_bound
):
    """Each BatchNorm after a convolution is folded into it (a pre-activation block's BatchNorm,
    before its convolution, stays). Logits within 1e-5 of the largest (measured 2e-7 to 6e-7);
    input gradients within ``grad_bound`` in norm (measured 4e-7 to 5e-7, and 1.5e-3 on the
    34-layer WRN, where a unit at a ReLU's kink switches side: the largest single change is
    0.8 % of the largest gradient); the signs that PGD steps by agree on 99.9 % at least
    (measured: every one)."""
    torch.manual_seed(0)
    student = _with_statistics(build_model(arch, 10, 0.25)).eval()
    twin = make_twin(student, fold=True, param_grads=False)
    assert len(twin.folds) == folded
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in twin.module.modules())
    plain = make_twin(student, fold=False, param_grads=False).module  # the modules it calls
    total = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert left == total - folded
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    z, g = _logits_and_gradient(student, x)
    z2, g2 = _logits_and_gradient(twin.module, x)
    assert not torch.equal(z, z2)  # really folded: the sums are others
    assert (z - z2).abs().max() <= 1e-5 * z.abs().max()
    assert (g - g2).norm() <= grad_bound * g.norm()
    assert (g.sign() == g2.sign()).float().mean() >= 0.999


def test_the_twin_reads_the_students_storage_and_follows_it():
    """Unfolded, the twin is the student bit for bit, with no parameter asking for a gradient;
    after an optimizer step and a train-mode forward (new running statistics) it is the student
    still, folded or not; an attack through it leaves the student without gradients."""
    torch.manual_seed(0)
    student = build_model("resnet18", 10, WIDTH)
    ex = Execution(attack_no_param_grads=True, attack_fold_bn=True)
    x = torch.rand(6, 3, 32, 32)
    y = torch.randint(0, 10, (6,))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    for _ in range(2):
        student.eval()
        folded = ex.attack_model(student)
        student.train()
        plain = ex.attack_model(student)  # train mode: BatchNorm on batch statistics, not folded
        assert plain is not folded and not any(p.requires_grad for p in plain.parameters())
        assert torch.equal(plain(x), student(x))  # the same arithmetic on the same tensors
        student.eval()
        folded = ex.attack_model(student)  # refreshed from the new weights and statistics
        assert (folded(x) - student(x)).abs().max() <= 1e-5 * student(x).abs().max()
        x_adv = pgd_ce(folded, x, y, eps=8 / 255, step_size=2 / 255, steps=2)
        assert all(p.grad is None for p in student.parameters())  # the attack's only
        student.train()
        loss = torch.nn.functional.cross_entropy(student(x_adv), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert len(ex.twins) == 2  # one per (student, folded): built once each


def test_each_switch_against_fp32_on_the_b_mtard_step():
    """6 steps across two lr decays (tests/test_speed.py's): no parameter gradients gives fp32's
    τ, w and losses bit for bit; folding within 1e-4 of w and 0.5 % of the losses (measured:
    identical here, the sign steps agree); bf16 in the attack or the teachers, alone or all
    together: τ identical, w within 1e-3, losses within 2 % (measured: w 2.4e-4 at most, the
    losses 0.5 % at most)."""
    data = batches(len(FACTORS))
    fp32, _ = run_new(Execution(), data, FACTORS)
    for name, kw in [*ALONE.items(), ("all", ALL)]:
        got, student = run_new(Execution(**kw), data, FACTORS)
        g = gaps(fp32, got)
        if name == "attack_no_param_grads":
            assert got == fp32, name
            continue
        assert g["tau_adv"] == 0 and g["tau_nat"] == 0, (name, g)
        bound = 1e-4 if name == "attack_fold_bn" else 1e-3
        assert g["w_adv"] < bound and g["w_nat"] < bound, (name, g)
        for k in ("loss", "loss_adv", "loss_nat"):
            share = 0.005 if name == "attack_fold_bn" else 0.02
            assert g[k] < share * max(t[k] for t in fp32), (name, k, g)
        assert all(p.dtype == torch.float32 for p in student.parameters())
        if name != "attack_fold_bn":
            assert got != fp32, name  # bf16 really ran


def _train(name: str, ex_kwargs: dict, student_seed: int = 0):
    """A method of the registry built as the distill stage builds it (the contract test's
    helper) and trained for two epochs of two batches; returns each step's logs and the
    student's final weights."""
    torch.manual_seed(student_seed)
    student = build_model("resnet18", 10, WIDTH)
    method = _build(name, 0.0, "fp32", student, _teachers(), Execution(**ex_kwargs))
    optim = OptimConfig(epochs=2, batch_size=32, lr=0.05, milestones=[1])
    batches = Batches(tiny_data().train, 32, device=CPU, shuffle=True, augment=True, seed=0)
    logs: list[dict[str, float]] = []
    original = method.batch_loss

    def recorded(model, x, y):
        loss, out = original(model, x, y)
        logs.append({k: float(v) for k, v in out.items()})
        return loss, out

    method.batch_loss = recorded
    torch.manual_seed(11)
    fit(
        Parts(student, method, batches, make_optimizer(student, optim)), optim, section="t",
        monitor=lambda e: None, on_epoch=lambda e, m: None,
    )  # fmt: skip
    return logs, copy.deepcopy(student.state_dict())


def _loss_gap(a: list[dict], b: list[dict]) -> float:
    """The largest relative gap between two runs' losses, step by step."""
    pairs = zip(a, b, strict=True)
    return max(abs(x["loss"] - y["loss"]) / max(abs(x["loss"]), 1e-3) for x, y in pairs)


@pytest.mark.parametrize("name", registry.names())
def test_every_methods_attack_takes_the_switches(name):
    """Every method's attack runs through ``Execution.attacking`` (or ``attack_model``), four
    steps of the real loop. No parameter gradients: fp32's training bit for bit. BatchNorm
    folded: every step's loss within 1 % (measured: 0.8 % for SAT, identical for most; ARD's
    attack in train mode is never folded). Every switch on: within 3 % (measured: 1.7 % at
    most, ARD's)."""
    ref_logs, ref = _train(name, {})
    logs, weights = _train(name, {"attack_no_param_grads": True})
    assert logs == ref_logs, name
    assert all(torch.equal(weights[k], ref[k]) for k in ref), name
    logs, _ = _train(name, ALONE["attack_fold_bn"])
    assert _loss_gap(ref_logs, logs) <= 0.01, name
    logs, _ = _train(name, ALL)
    assert 0 < _loss_gap(ref_logs, logs) <= 0.03, name  # bf16 ran, and stays close


def test_compiled_twin_traces_once_and_follows_eager(monkeypatch):
    """``run.attack_compile``: the twin is compiled once and traced once (one graph: eval mode,
    one batch size), which the 12 attack steps of the 6 training steps replay; the steps stay
    within the folded path's bounds of eager. Dynamo's tracing and AOTAutograd are real; the backend
    (inductor on the device) is aot_eager here: inductor takes a minute per graph on a CPU
    (bench/bench_step.py --switches times it)."""
    compiled = []
    original = torch.nn.Module.compile

    def aot_eager(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        kwargs.pop("mode", None)
        return original(self, *args, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    torch._dynamo.reset()
    data = batches(len(FACTORS))
    fp32, _ = run_new(Execution(), data, FACTORS)
    ex = Execution(attack_compile="inductor", attack_fold_bn=True)
    got, _ = run_new(ex, data, FACTORS)
    assert compiled == ["GraphModule"]  # the twin alone, once
    stats = torch._dynamo.utils.counters["stats"]
    assert (stats["unique_graphs"], torch._dynamo.utils.counters["frames"]["total"]) == (1, 1)
    g = gaps(fp32, got)
    assert g["tau_adv"] == 0 and g["w_adv"] < 1e-4 and g["loss"] < 0.005 * fp32[0]["loss"], g
