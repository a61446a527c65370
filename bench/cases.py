"""The steps ``bench_step`` measures, each built as a closure that runs one step: the pipeline's
B-MTARD step, the same step structured as the official code, TRADES of the robust teacher, a
PGD-20 evaluation batch, and the step of any other distillation method of the pipeline
(``bmtard.training.distill.build_method``: AdaAD, AdaAD+IGDM, DGAD, CIARD, PeerAiD, ...).

Every builder takes the parsed arguments (``student``, ``teacher_adv``, ``teacher_nat``,
``width``, ``batch``), the device, a split of uint8 images (N, 32, 32, 3) and, where the step
has a fast path, the ``Execution`` (precision, layout, compilation) to run it with. Models are
built from seed 0, so two builds of a case hold the same weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config import method_table
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.schema import (
    BalanceConfig,
    DistillConfig,
    IGDMConfig,
    OptimConfig,
    TrainAttackConfig,
)
from bmtard.data.loader import Batches
from bmtard.data.splits import Split
from bmtard.data.stage_data import StageData
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance
from bmtard.methods.reference import FloatBalance, device_batches, official_loader, official_step
from bmtard.methods.trades import TRADES
from bmtard.models import build_model
from bmtard.runtime.execution import Execution
from bmtard.training.distill import build_method
from bmtard.training.loop import CHECK_EVERY, FiniteGuard

Step = Callable[[], None]
IGDM_SUFFIX = "_igdm"
#: the distillation methods a case may name (B-MTARD and TRADES have cases of their own), and
#: each IGDM composes with, as ``<method>_igdm``
METHODS = tuple(m for m in method_table.NAMES if m not in ("bmtard", "trades"))
METHODS_IGDM = tuple(f"{m.name}{IGDM_SUFFIX}" for m in method_table.METHODS if m.igdm)


def synthetic_split(n: int, seed: int = 0) -> Split:
    """n random CIFAR-sized uint8 images with random labels: speed does not depend on them."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Split(images, rng.integers(0, 10, n).astype(np.int64))


@dataclass
class Models:
    student: nn.Module
    teacher_adv: nn.Module
    teacher_nat: nn.Module


def build(args: argparse.Namespace, device: torch.device) -> Models:
    """The student and both teachers, from seed 0 (10 classes)."""
    torch.manual_seed(0)
    return Models(
        build_model(args.student, 10, args.width).to(device),
        build_model(args.teacher_adv, 10, args.width).to(device),
        build_model(args.teacher_nat, 10, args.width).to(device),
    )


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)


def cycle(batches: Batches) -> Iterator:
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def loop_step(model, method, split, args, device) -> Step:
    """One step of ``bmtard.training.loop.fit``'s loop: a batch from the device-resident loader,
    the method's loss, the finiteness record, SGD, the method's ``after_step`` (CIARD's teacher
    step, PeerAiD's peer step), the logged sums on the device, and the finiteness check (one
    sync) every ``CHECK_EVERY`` steps."""
    opt = sgd(model)
    data = cycle(Batches(split, args.batch, device=device, shuffle=True, augment=True))
    guard, sums, count = FiniteGuard("bench"), {}, [0]
    after = getattr(method, "after_step", lambda: None)

    def step() -> None:
        x, y = next(data)
        loss, logs = method.batch_loss(model, x, y)
        guard.record(0, count[0], 0.01, loss, logs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        after()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v.double() * len(y)
        count[0] += 1
        if count[0] % CHECK_EVERY == 0:
            guard.check("")

    return step


def bmtard_new(args, device, split, ex: Execution) -> Step:
    """The pipeline's step (``bmtard.methods.b_mtard`` in ``bmtard.training.loop.fit``'s loop)."""
    m = build(args, device)
    ex.student(m.student)
    method = BMTARD(
        ex.teacher(m.teacher_adv), ex.teacher(m.teacher_nat), TrainAttackConfig(),
        Balance.from_config(BalanceConfig(), device), execution=ex,
    )  # fmt: skip
    return loop_step(m.student, method, split, args, device)


def bmtard_official(args, device, split) -> Step:
    """The official structure: fp32, NCHW, eager, DataLoader + CPU transforms, ``.item()``."""
    m = build(args, device)
    for t in (m.teacher_adv, m.teacher_nat):
        t.eval().requires_grad_(False)
    attack, balance = TrainAttackConfig(), FloatBalance.from_config(BalanceConfig())
    opt = sgd(m.student)
    loader = official_loader(split, args.batch)

    def batches() -> Iterator:
        while True:
            yield from device_batches(loader, device)

    data = batches()

    def step() -> None:
        x, y = next(data)
        official_step(m.student, m.teacher_adv, m.teacher_nat, x, y, opt, balance, attack)

    return step


def trades(args, device, split, ex: Execution) -> Step:
    """One TRADES step (beta 6) of the robust teacher's architecture, as its stage runs it."""
    torch.manual_seed(0)
    model = ex.student(build_model(args.teacher_adv, 10, args.width).to(device))
    method = TRADES(TrainAttackConfig(init="gaussian"), beta=6.0, execution=ex)
    return loop_step(model, method, split, args, device)


def pgd20(args, device, split) -> Step:
    """PGD_SAT of the protocol (eps 8/255, step 2/255, 20 steps, uniform start) and the clean
    pass, fp32, eval mode: evaluation never uses the fast path."""
    torch.manual_seed(0)
    model = build_model(args.student, 10, args.width).to(device).eval()
    x = torch.from_numpy(split.images[: args.batch]).to(device).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(split.labels[: args.batch]).to(device)

    def step() -> None:
        x_adv = pgd_ce(model, x, y, eps=8 / 255, step_size=2 / 255, steps=20, init="uniform")
        with torch.no_grad():
            model(x).argmax(1)
            model(x_adv).argmax(1)

    return step


def method_config(name: str, args: argparse.Namespace) -> DistillConfig:
    """The distill section of a ``name`` run (``<method>`` or ``<method>_igdm``, IGDM at
    alpha 1) with the method's published schedule and settings on CIFAR-10, resolved."""
    base = name.removesuffix(IGDM_SUFFIX)
    igdm = IGDMConfig(alpha=1.0 if name.endswith(IGDM_SUFFIX) else 0.0)
    optim = OptimConfig(
        epochs=None, milestones=None, weight_decay=None, schedule=None, batch_size=args.batch
    )
    cfg = DistillConfig(method=base, arch=args.student, width=args.width, optim=optim, igdm=igdm)
    return cfg.resolved("cifar10")


def method_label(name: str) -> str:
    """How tables name the case: the method's label, + IGDM where it is on."""
    base = name.removesuffix(IGDM_SUFFIX)
    label = method_table.method(base).label
    return f"{label}+IGDM" if name.endswith(IGDM_SUFFIX) else label


def method_step(name: str, args, device, split, ex: Execution) -> tuple[Step, int]:
    """One step of distillation method ``name`` as the distill stage builds and runs it
    (``build_method``; teachers frozen as loaded; CIARD's robust teacher fine-tuned: the epoch
    is set past its ``teacher_from``, where it trains every step); and the method's epochs."""
    cfg = method_config(name, args)
    m = build(args, device)
    teachers = {}
    for role, model in ((ROBUST, m.teacher_adv), (CLEAN, m.teacher_nat)):
        if role in method_table.method(cfg.method).teachers:
            teachers[role] = model.eval().requires_grad_(False)
    data = StageData(split, split, {"dataset": "cifar10", "num_classes": 10})
    method = build_method(cfg, teachers, ex, device, m.student, data, 0)
    ex.student(m.student)
    method.start_epoch(cfg.ciard.teacher_from + 1 if cfg.method == "ciard" else 1)
    return loop_step(m.student, method, split, args, device), int(cfg.optim.epochs)
