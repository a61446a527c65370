"""Throughput and memory of the training and evaluation steps, against the official structure.

Measures images/s and peak memory of
  (a) one B-MTARD training step as the pipeline runs it (data on the device, balance state on
      the device, no ``.item()``, the precision/layout/compile asked for);
  (b) the same B-MTARD step structured as the official code (``bmtard.methods.reference``: fp32, a
      torchvision DataLoader with CPU transforms, ``.item()`` per step), and the ratio (a)/(b);
  (c) one TRADES step of the robust teacher (the pipeline's step);
  (d) one PGD-20 evaluation batch (PGD_SAT of the protocol, fp32, eval mode, plus the clean pass);
counts the FLOPs per image of each (``torch.utils.flop_counter``, eager fp32 copies), gives the
fraction of the device's peak where the device is known, and projects the full runs (300 epochs
of B-MTARD, 76 of TRADES, on 50,000 images; PGD-20 on 10,000 test images).

Runs with torch alone (no DVC, no Snakemake), on a CPU or a GPU:

    python -m bench.bench_step --device cuda --batch 128 --precision bf16 --channels-last \\
        --json bench/out/h100.json
    python -m bench.bench_step --device cpu --batch 8 --steps 3 --warmup 1

Synthetic images (random uint8 CIFAR-sized), because speed does not depend on their content.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.params import BalanceConfig, RunConfig, TrainAttackConfig
from bmtard.data.loader import Batches
from bmtard.data.splits import Split
from bmtard.methods.adversarial import TRADES
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance
from bmtard.methods.reference import FloatBalance, device_batches, official_loader, official_step
from bmtard.models import ARCHS, build_model
from bmtard.runtime.execution import Execution, threads_given
from bmtard.training.loop import CHECK_EVERY, FiniteGuard

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR
EPOCHS = {"bmtard": 300, "trades": 76}  # the paper's runs (params.yaml)

#: dense peak FLOP/s by the vendors' datasheets, (name substring, {dtype: FLOP/s}), first match
#: wins. fp32 convolutions on these cards run as TF32 unless cudnn.allow_tf32 is off.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)


@dataclass(frozen=True)
class Result:
    """One measured case. Memory in MiB: CUDA peak allocated, or the process's peak RSS on a CPU
    (cumulative over the cases run so far)."""

    case: str
    images_per_s: float
    ms_per_step: float
    peak_mib: float
    gflop_per_image: float
    gflop_per_s: float
    peak_fraction: float | None
    projected_hours: float
    projected_what: str


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def synthetic_split(n: int, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return Split(images, rng.integers(0, 10, n).astype(np.int64))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def seconds_per_step(step: Callable[[], None], warmup: int, steps: int, device) -> float:
    """Wall-clock seconds of one call of ``step``, after ``warmup`` calls (compilation, cudnn
    autotuning, allocator growth), synchronised with the device around the timed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


class FlopCount(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s count of every op run inside it. This is
    ``FlopCounterMode`` without its per-module tracking, whose hooks refuse the
    ``autograd.grad`` on a leaf tensor that every PGD step makes."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def flops_of(step: Callable[[], None]) -> int:
    with FlopCount() as counter:
        step()
    return counter.total


def cycle(batches: Batches) -> Iterator:
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    dtype = precision
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        dtype = "tf32"
    for key, peaks in PEAKS:
        if key in name:
            return peaks[dtype]
    return None


@dataclass
class Models:
    student: nn.Module
    teacher_adv: nn.Module
    teacher_nat: nn.Module


def build(args: argparse.Namespace, device: torch.device) -> Models:
    torch.manual_seed(0)
    return Models(
        build_model(args.student, 10, args.width).to(device),
        build_model(args.teacher_adv, 10, args.width).to(device),
        build_model(args.teacher_nat, 10, args.width).to(device),
    )


def sgd(model: nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)


def loop_step(model, method, split, args, device) -> Callable[[], None]:
    """One step of ``bmtard.training.loop.fit``'s loop: a batch from the device-resident loader, the
    method's loss, the finiteness record, SGD, the logged sums on the device, and the finiteness
    check (one sync) every ``CHECK_EVERY`` steps."""
    opt = sgd(model)
    data = cycle(Batches(split, args.batch, device=device, shuffle=True, augment=True))
    guard, sums, count = FiniteGuard("bench"), {}, [0]

    def step() -> None:
        x, y = next(data)
        loss, logs = method.batch_loss(model, x, y)
        guard.record(0, count[0], 0.01, loss, logs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v.double() * len(y)
        count[0] += 1
        if count[0] % CHECK_EVERY == 0:
            guard.check("")

    return step


def bmtard_new(args, device, split) -> Callable[[], None]:
    """The pipeline's step (``bmtard.methods.b_mtard`` in ``bmtard.training.loop.fit``'s loop)."""
    ex = Execution(args.precision, args.channels_last, args.compile, device.type)
    m = build(args, device)
    ex.student(m.student)
    method = BMTARD(
        ex.teacher(m.teacher_adv), ex.teacher(m.teacher_nat), TrainAttackConfig(),
        Balance.from_config(BalanceConfig(), device), execution=ex,
    )  # fmt: skip
    return loop_step(m.student, method, split, args, device)


def bmtard_official(args, device, split) -> Callable[[], None]:
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


def trades(args, device, split) -> tuple[Callable[[], None], Callable[[], None]]:
    def make(ex: Execution) -> Callable[[], None]:
        torch.manual_seed(0)
        model = ex.student(build_model(args.teacher_adv, 10, args.width).to(device))
        method = TRADES(TrainAttackConfig(init="gaussian"), beta=6.0, execution=ex)
        return loop_step(model, method, split, args, device)

    ex = Execution(args.precision, args.channels_last, args.compile, device.type)
    return make(ex), make(Execution(device_type=device.type))


def pgd20(args, device, split) -> Callable[[], None]:
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


def measure(name, step, count, args, device, precision, images, what) -> Result:
    reset_peak(device)
    sec = seconds_per_step(step, args.warmup, args.steps, device)
    flops = flops_of(count) / args.batch
    peak = peak_flops(device, precision)
    per_s = args.batch / sec
    return Result(
        case=name,
        images_per_s=per_s,
        ms_per_step=1000 * sec,
        peak_mib=peak_mib(device),
        gflop_per_image=flops / 1e9,
        gflop_per_s=flops * per_s / 1e9,
        peak_fraction=None if peak is None else flops * per_s / peak,
        projected_hours=math.ceil(images / args.batch) * sec / 3600,
        projected_what=what,
    )


def table(results: list[Result]) -> str:
    head = "| case | images/s | ms/step | peak MiB | GFLOP/image | GFLOP/s | of peak | projected |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        frac = "n/a" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f} %"
        rows.append(
            f"| {r.case} | {r.images_per_s:.2f} | {r.ms_per_step:.0f} | {r.peak_mib:.0f} | "
            f"{r.gflop_per_image:.2f} | {r.gflop_per_s:.0f} | {frac} | "
            f"{r.projected_hours:.2f} h for {r.projected_what} |"
        )
    return "\n".join(rows)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet18", choices=ARCHS)
    p.add_argument("--teacher-adv", default="wrn34_10", choices=ARCHS)
    p.add_argument("--teacher-nat", default="resnet56", choices=ARCHS)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of every model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: what was granted)")
    p.add_argument("--cases", default="bmtard,official,trades,pgd20")
    p.add_argument("--nondeterministic", action="store_true", help="cudnn.benchmark on")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    unknown = set(args.cases.split(",")) - {"bmtard", "official", "trades", "pgd20"}
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    torch.set_num_threads(threads_given(RunConfig(num_threads=args.threads)))
    torch.backends.cudnn.deterministic = not args.nondeterministic
    torch.backends.cudnn.benchmark = args.nondeterministic
    split = synthetic_split(max(args.batch * (args.warmup + args.steps + 1), 1024))
    cases = args.cases.split(",")
    fast = f"{args.precision}{', channels_last' if args.channels_last else ''}"
    fast += ", compiled" if args.compile else ""
    results: list[Result] = []

    def run(name, step, count, precision, images, what) -> None:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(measure(name, step, count, args, device, precision, images, what))

    train = 300 * TRAIN_IMAGES
    if "bmtard" in cases:
        # FLOPs counted on the official structure: the same work, and the teachers' forwards
        # under inference_mode are invisible to a dispatch mode
        step, count = bmtard_new(args, device, split), bmtard_official(args, device, split)
        run(f"B-MTARD step ({fast})", step, count, args.precision, train, "300 epochs")
    if "official" in cases:
        step = bmtard_official(args, device, split)
        run("B-MTARD official structure (fp32)", step, step, "fp32", train, "300 epochs")
    if "trades" in cases:
        step, count = trades(args, device, split)
        what = f"{EPOCHS['trades']} epochs"
        run(f"TRADES step ({fast})", step, count, args.precision, 76 * TRAIN_IMAGES, what)
    if "pgd20" in cases:
        step = pgd20(args, device, split)
        run("PGD-20 eval batch (fp32)", step, step, "fp32", TEST_IMAGES, "10,000 images")

    speed = {r.case.split(" (")[0]: r.images_per_s for r in results}
    new, official = speed.get("B-MTARD step"), speed.get("B-MTARD official structure")
    ratio = new / official if new and official else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    models = f"{args.student} <- {args.teacher_adv} + {args.teacher_nat}, width {args.width}"
    threads = torch.get_num_threads()
    print(f"\n{where}, torch {torch.__version__}, {threads} threads, batch {args.batch}, {models}")
    print("\n" + table(results))
    if ratio is not None:
        print(f"\nB-MTARD step / official structure: {ratio:.2f}x")
    if args.json:
        from pathlib import Path

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "device": where, "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "args": vars(args), "ratio": ratio,
            "results": [asdict(r) for r in results],
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
