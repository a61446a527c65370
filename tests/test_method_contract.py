"""The method contract (bmtard/methods/contract.py), for every method the registry holds, with and
without IGDM where it composes, in fp32 and bf16: one test each, parametrized over
``registry.names()``, so a method added to the table and the registry is checked with no test
edited.

Each is built as the distill stage builds it (``build_method``, from the quick preset's
``distill`` section resolved on CIFAR-10, tiny widths, 2-step attacks) and trained by the real
loop (``bmtard.training.loop.fit``) for two epochs of two batches: the hooks come in the
contract's order, the logs are finite 0-dim float tensors, the student's parameters move, no
frozen teacher gets a gradient, and the method's state goes through ``state_dict`` /
``load_state_dict`` into a method built afresh (then ``start_epoch``, as on resume) with nothing
lost.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_params_fuzz import QUICK

from bmtard.config import method_table
from bmtard.config.params import parse_params
from bmtard.config.schema import OptimConfig
from bmtard.data.loader import Batches
from bmtard.methods import registry
from bmtard.methods.contract import Method
from bmtard.models import build_model
from bmtard.runtime.execution import Execution
from bmtard.training.distill import build_method
from bmtard.training.loop import Parts, fit, make_optimizer

from training_helpers import WIDTH, tiny_data

CPU = torch.device("cpu")
HOOKS = ("start_epoch", "batch_loss", "after_step", "end_epoch")
CASES = [
    pytest.param(name, alpha, precision, id=f"{name}{'+igdm' if alpha else ''}-{precision}")
    for name in registry.names()
    for alpha in ((0.0, 1.0) if method_table.method(name).igdm else (0.0,))
    for precision in ("fp32", "bf16")
]


def test_the_registry_holds_every_method_of_the_table_from_its_own_module():
    assert registry.names() == method_table.NAMES
    for name in method_table.NAMES:
        assert registry.builder(name).__module__ == registry.module_of(name)
    with pytest.raises(ValueError, match="unknown method 'kd'"):
        registry.builder("kd")


def _cfg(name: str, alpha: float):
    raw = copy.deepcopy(QUICK)
    d = raw["distill"]
    d["method"], d["width"], d["igdm"]["alpha"] = name, WIDTH, alpha
    d["attack"]["steps"], d["optim"]["batch_size"] = 2, 32
    d["checkpoint"] = "last"  # what every method allows (a weight average is written last)
    return parse_params(raw).distill.resolved("cifar10")


def _teachers(seed: int = 3) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {
        "clean": build_model("resnet18", 10, WIDTH).eval(),
        "robust": build_model("preact_resnet18", 10, WIDTH).eval(),
    }


def _build(name: str, alpha: float, precision: str, student, teachers, ex=None) -> Method:
    ex = ex or Execution(precision=precision)
    ex.student(student)
    roles = method_table.method(name).teachers
    return build_method(
        _cfg(name, alpha), {r: teachers[r] for r in roles}, ex, CPU, student, tiny_data(), 0
    )


class Recorded:
    """A method whose hooks and ``batch_loss`` calls are recorded in order (the rest passes)."""

    def __init__(self, method: Method) -> None:
        self.method, self.calls, self.logs = method, [], []

    def __getattr__(self, name):
        attr = getattr(self.method, name)
        if name not in HOOKS:
            return attr

        def recorded(*args, **kwargs):
            self.calls.append(name)
            out = attr(*args, **kwargs)
            if name == "batch_loss":
                self.logs.append(out)
            return out

        return recorded


def _state_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(("name", "alpha", "precision"), CASES)
def test_method_keeps_the_contract(name, alpha, precision):
    torch.manual_seed(0)
    student = build_model("resnet18", 10, WIDTH)
    teachers = _teachers()
    method = Recorded(_build(name, alpha, precision, student, teachers))
    frozen = {id(p) for r in method_table.method(name).teachers
              if r not in method_table.method(name).fine_tunes
              for p in teachers[r].parameters()}  # fmt: skip
    before = [p.detach().clone() for p in student.parameters()]
    optim = OptimConfig(epochs=2, batch_size=32, lr=0.05, milestones=[1])
    batches = Batches(tiny_data().train, 32, device=CPU, shuffle=True, augment=True, seed=0)
    fit(
        Parts(student, method, batches, make_optimizer(student, optim)), optim, section="t",
        monitor=lambda e: None, on_epoch=lambda e, m: None,
    )  # fmt: skip

    epoch = ["start_epoch", "batch_loss", "after_step", "batch_loss", "after_step", "end_epoch"]
    assert method.calls == epoch * 2
    for loss, logs in method.logs:
        assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
        assert logs and "loss" in logs
        for key, value in logs.items():
            assert value.dim() == 0 and value.is_floating_point(), key
            assert not value.requires_grad and torch.isfinite(value), key
    moved = [not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True)]
    assert any(moved)
    for r in method_table.method(name).teachers:
        for p in teachers[r].parameters():
            if id(p) in frozen:
                assert p.grad is None, f"the {r} teacher got a gradient"
    assert all(isinstance(v, float) for v in method.status().values())

    state = method.state_dict()
    fresh = _build(name, alpha, precision, build_model("resnet18", 10, WIDTH), _teachers())
    fresh.load_state_dict(copy.deepcopy(state))
    fresh.start_epoch(2)  # the loop's call on resume, also in the middle of an epoch
    assert _state_equal(fresh.state_dict(), state)
    assert fresh.status() == method.status()
