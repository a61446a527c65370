"""Throughput and memory of the training and evaluation steps, against the official structure.

Measures images/s and peak memory of
  (a) one B-MTARD training step as the pipeline runs it (data on the device, balance state on
      the device, no ``.item()``, the precision/layout/compile asked for);
  (b) the same B-MTARD step structured as the official code (``bmtard.methods.reference``: fp32, a
      torchvision DataLoader with CPU transforms, ``.item()`` per step), and the ratio (a)/(b) of
      images/s (= official step time / ours), at every batch size asked for, in either order or
      both (ours then official, then official then ours);
  (c) one TRADES step of the robust teacher (the pipeline's step);
  (d) one PGD-20 evaluation batch (PGD_SAT of the protocol, fp32, eval mode, plus the clean pass);
  (e) the step of the newer distillation methods as the distill stage builds them: AdaAD (its
      attack backpropagates through the robust teacher), AdaAD+IGDM, DGAD, CIARD (its robust
      teacher fine-tuned every step) and PeerAiD (a peer network trained with the student);
counts the FLOPs per image of each (``torch.utils.flop_counter`` on eager fp32 copies, the
teachers' forwards included), gives the fraction of the device's peak where the device is known,
and projects the full runs (each method's published epochs on 50,000 images: 300 for B-MTARD,
76 for TRADES; PGD-20 on 10,000 test images). ``--profile N`` adds the N ops that take the most
self time in one step of each case (calls, share of the step). ``--switches`` measures the
B-MTARD step with each trick of the attack's fast path alone and with all of them
(``bmtard.runtime.execution.FAST_PATH``: BatchNorm folded, the attack in bf16, no parameter
gradients in the attack, channels_last, the attacked student compiled, the teachers in bf16)
against the official structure, timed before and after them.

Runs with torch alone (no DVC, no Snakemake), on a CPU or a GPU:

    python -m bench.bench_step --device cuda --batch 128 --precision bf16 --channels-last \\
        --json bench/out/h100.json
    python -m bench.bench_step --device cpu --batch 8,32,128 --order both --cases bmtard,official
    python -m bench.bench_step --device cpu --batch 128 --width 0.25 --switches

Synthetic images (random uint8 CIFAR-sized), because speed does not depend on their content.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file (python bench/bench_step.py): the checkout's root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cases as C  # noqa: E402
from bench.measure import (  # noqa: E402,F401 (flops_of: the tests' entry)
    device_name,
    flops_of,
    peak_flops,
    peak_mib,
    profile_ops,
    reset_peak,
    seconds_per_step,
)
from bmtard.config.schema import RunConfig  # noqa: E402
from bmtard.models import ARCHS  # noqa: E402
from bmtard.runtime.device import threads_given  # noqa: E402
from bmtard.runtime.execution import FAST_PATH, Execution  # noqa: E402

TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR
EPOCHS = {"bmtard": 300, "trades": 76}  # the paper's runs (params.yaml)
BASE_CASES = ("bmtard", "official", "trades", "pgd20")
NEW_METHODS = ("adaad", "adaad_igdm", "dgad", "ciard", "peeraid")  # issue 17's
DEFAULT_CASES = (*BASE_CASES, *NEW_METHODS)
ALL_CASES = (*BASE_CASES, *C.METHODS, *C.METHODS_IGDM)
ORDERS = ("ours-first", "official-first", "both")


@dataclass(frozen=True)
class Result:
    """One measured case at one batch size. Memory in MiB: CUDA peak allocated, or the
    process's peak RSS on a CPU (cumulative over the cases run so far)."""

    case: str
    batch: int
    images_per_s: float
    ms_per_step: float
    peak_mib: float
    gflop_per_image: float
    gflop_per_s: float
    peak_fraction: float | None
    projected_hours: float
    projected_what: str
    profile: list[dict] = field(default_factory=list)


def measure_flops(count: Callable[[], None], batch: int) -> float:
    """FLOPs per image of one step of ``count`` (an eager fp32 copy of the case)."""
    return flops_of(count) / batch


def result(name, args, device, precision, sec, flops, peak, images, what, profile) -> Result:
    per_s = args.batch / sec
    top = peak_flops(device, precision)
    return Result(
        case=name,
        batch=args.batch,
        images_per_s=per_s,
        ms_per_step=1000 * sec,
        peak_mib=peak,
        gflop_per_image=flops / 1e9,
        gflop_per_s=flops * per_s / 1e9,
        peak_fraction=None if top is None else flops * per_s / top,
        projected_hours=math.ceil(images / args.batch) * sec / 3600,
        projected_what=what,
        profile=profile,
    )


def timed(step, args, device) -> tuple[float, float]:
    """(seconds per step after the warm-up, peak MiB meanwhile)."""
    reset_peak(device)
    sec = seconds_per_step(step, args.warmup, args.steps, device)
    return sec, peak_mib(device)


def profiled(step, args, device) -> list[dict]:
    return profile_ops(step, device, args.profile) if args.profile else []


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--student", default="resnet18", choices=ARCHS)
    p.add_argument("--teacher-adv", default="wrn34_10", choices=ARCHS)
    p.add_argument("--teacher-nat", default="resnet56", choices=ARCHS)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of every model")
    p.add_argument("--batch", default="128", help="batch size, or several: 8,32,128")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile's backend (eager: trace only)"
    )
    p.add_argument("--attack-fold-bn", action="store_true", help="run.attack_fold_bn")
    p.add_argument("--attack-bf16", action="store_true", help="run.attack_bf16")
    p.add_argument("--attack-no-param-grads", action="store_true", help="run.attack_no_param_grads")
    p.add_argument(
        "--attack-compile", choices=("eager", "inductor", "cudagraphs"),
        help="run.attack_compile (default eager); with --switches its value when on (default "
        "inductor; eager: leave it out)",
    )  # fmt: skip
    p.add_argument("--teachers-bf16", action="store_true", help="run.teachers_bf16")
    p.add_argument(
        "--switches", action="store_true",
        help="the B-MTARD step with each trick of the attack's fast path alone and all together",
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: what was granted)")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"of {', '.join(ALL_CASES)}")
    p.add_argument(
        "--order", default="ours-first", choices=ORDERS,
        help="of the B-MTARD pair; both: ours, official, official, ours (each timed twice)",
    )  # fmt: skip
    p.add_argument("--profile", type=int, default=0, help="top ops per case (0: no profile)")
    p.add_argument("--nondeterministic", action="store_true", help="cudnn.benchmark on")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        p.error(f"--batch {args.batch!r}: one or more integers, comma-separated")
    if min(args.batches) < 1:
        p.error("--batch must be >= 1")
    for name in ("steps", "warmup", "profile"):
        if getattr(args, name) < (1 if name == "steps" else 0):
            p.error(f"--{name} must be >= {1 if name == 'steps' else 0}")
    args.case_list = args.cases.split(",")
    unknown = set(args.case_list) - set(ALL_CASES)
    if unknown:
        p.error(f"--cases: unknown {', '.join(sorted(unknown))}")
    return args


def use_compile_backend(backend: str) -> None:
    """Make ``nn.Module.compile`` (``Execution``'s) use ``backend``; ``eager`` traces with
    Dynamo and runs the captured graphs uncompiled (minutes less on a CPU)."""
    if backend == "inductor":
        return
    original = torch.nn.Module.compile
    torch.nn.Module.compile = lambda self, *a, **k: original(self, *a, **{"backend": backend, **k})


class Bench:
    """The cases of one batch size: each measured, counted and recorded in ``results``."""

    def __init__(self, args: argparse.Namespace, device: torch.device, batch: int) -> None:
        self.args = copy.copy(args)
        self.args.batch = batch
        self.device = device
        self.split = C.synthetic_split(max(batch * (args.warmup + args.steps + 2), 1024))
        self.ex = execution(args, device)
        self.eager = Execution(device_type=device.type)
        self.results: list[Result] = []
        self.ratio: dict[str, float] = {}
        self.fast = describe(self.ex)

    def log(self, name: str) -> None:
        print(f"measuring {name} at batch {self.args.batch} ...", file=sys.stderr, flush=True)

    def add(self, name, step, count, precision, images, what) -> None:
        self.log(name)
        sec, peak = timed(step, self.args, self.device)
        flops = measure_flops(count, self.args.batch)
        prof = profiled(step, self.args, self.device)
        self.results.append(
            result(name, self.args, self.device, precision, sec, flops, peak, images, what, prof)
        )

    def pair(self, order: str) -> None:
        """Our B-MTARD step and the official structure's, in ``order``; their ratio."""
        a, d = self.args, self.device
        ours = C.bmtard_new(a, d, self.split, self.ex)
        official = C.bmtard_official(a, d, self.split)
        # FLOPs counted on the official structure: the same work as ours
        flops = measure_flops(C.bmtard_official(a, d, self.split), a.batch)
        seq = {"ours-first": "AB", "official-first": "BA", "both": "ABBA"}[order]
        times: dict[str, list[float]] = {"A": [], "B": []}
        peaks: dict[str, float] = {}
        for i, which in enumerate(seq):
            self.log("B-MTARD step" if which == "A" else "B-MTARD official structure")
            step = ours if which == "A" else official
            warm = a.warmup if i < 2 else 0  # each is warm after its first turn
            reset_peak(d)
            times[which].append(seconds_per_step(step, warm, a.steps, d))
            peaks[which] = max(peaks.get(which, 0.0), peak_mib(d))
        train = EPOCHS["bmtard"] * TRAIN_IMAGES
        for which, name, step, precision in (
            ("A", f"B-MTARD step ({self.fast})", ours, a.precision),
            ("B", "B-MTARD official structure (fp32)", official, "fp32"),
        ):
            sec = sum(times[which]) / len(times[which])
            prof = profiled(step, a, d)
            self.results.append(
                result(name, a, d, precision, sec, flops, peaks[which], train, "300 epochs", prof)
            )
        ratios = [b / t for t, b in zip(times["A"], times["B"], strict=True)]
        self.ratio = {"batch": a.batch, "ours_over_official": sum(times["B"]) / sum(times["A"])}
        if order == "both":
            self.ratio |= {"ours_first": ratios[0], "official_first": ratios[1]}

    def run(self, cases: list[str]) -> None:
        a, d, s = self.args, self.device, self.split
        if "bmtard" in cases and "official" in cases:
            self.pair(a.order)
        elif "bmtard" in cases:
            step, count = C.bmtard_new(a, d, s, self.ex), C.bmtard_new(a, d, s, self.eager)
            self.add(f"B-MTARD step ({self.fast})", step, count, a.precision, 300 * TRAIN_IMAGES,
                     "300 epochs")  # fmt: skip
        elif "official" in cases:
            step = C.bmtard_official(a, d, s)
            self.add("B-MTARD official structure (fp32)", step, step, "fp32", 300 * TRAIN_IMAGES,
                     "300 epochs")  # fmt: skip
        if "trades" in cases:
            step, count = C.trades(a, d, s, self.ex), C.trades(a, d, s, self.eager)
            what = f"{EPOCHS['trades']} epochs"
            self.add(f"TRADES step ({self.fast})", step, count, a.precision,
                     EPOCHS["trades"] * TRAIN_IMAGES, what)  # fmt: skip
        if "pgd20" in cases:
            step = C.pgd20(a, d, s)
            self.add("PGD-20 eval batch (fp32)", step, step, "fp32", TEST_IMAGES, "10,000 images")
        for name in cases:
            if name in BASE_CASES:
                continue
            step, epochs = C.method_step(name, a, d, s, self.ex)
            count, _ = C.method_step(name, a, d, s, self.eager)
            label = f"{C.method_label(name)} step ({self.fast})"
            self.add(label, step, count, a.precision, epochs * TRAIN_IMAGES, f"{epochs} epochs")


def execution(args: argparse.Namespace, device: torch.device, **switches) -> Execution:
    """The ``Execution`` the flags ask for, with ``switches`` (``FAST_PATH`` names) on top."""
    chosen = {
        "precision": args.precision, "channels_last": args.channels_last,
        "compile": args.compile, "attack_fold_bn": args.attack_fold_bn,
        "attack_bf16": args.attack_bf16, "attack_no_param_grads": args.attack_no_param_grads,
        "attack_compile": args.attack_compile or "eager", "teachers_bf16": args.teachers_bf16,
    }  # fmt: skip
    return Execution(device_type=device.type, **{**chosen, **switches})


def describe(ex: Execution) -> str:
    """The execution in a few words: its precision, then each switch that is on."""
    on = [
        name if value is True else f"{name}={value}"
        for name, value in (("channels_last", ex.channels_last), ("compiled", ex.compile),
                            *((k, getattr(ex, k)) for k in FAST_PATH if k != "channels_last"))
        if value not in (False, "eager")
    ]  # fmt: skip
    return ", ".join([ex.precision, *on])


def switch_settings(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(name, the switches on): the faithful step, each trick alone, all of them."""
    on = dict(FAST_PATH)
    if args.attack_compile == "eager":
        del on["attack_compile"]
    elif args.attack_compile is not None:
        on["attack_compile"] = args.attack_compile
    return [("faithful", {}), *((k, {k: v}) for k, v in on.items()), ("all", on)]


def measure_switches(args: argparse.Namespace, device: torch.device, batch: int) -> list[dict]:
    """The B-MTARD step at ``batch`` with each setting of ``switch_settings``, and the official
    structure timed before and after them (its mean time the reference of every ratio)."""
    a = copy.copy(args)
    a.batch = batch
    split = C.synthetic_split(max(batch * (args.warmup + args.steps + 2), 1024))
    official = C.bmtard_official(a, device, split)

    def time_official() -> float:
        print(f"measuring the official structure at batch {batch} ...", file=sys.stderr)
        return seconds_per_step(official, args.warmup, args.steps, device)

    first = time_official()
    rows = []
    for name, switches in switch_settings(args):
        ex = Execution(device_type=device.type, **switches)
        print(f"measuring B-MTARD ({name}) at batch {batch} ...", file=sys.stderr, flush=True)
        step = C.bmtard_new(a, device, split, ex)
        reset_peak(device)
        sec = seconds_per_step(step, args.warmup, args.steps, device)
        rows.append({"setting": name, "switches": switches, "execution": describe(ex),
                     "seconds": sec, "peak_mib": peak_mib(device)})  # fmt: skip
    last = time_official()
    ref = (first + last) / 2
    faithful = rows[0]["seconds"]
    train = EPOCHS["bmtard"] * TRAIN_IMAGES
    for r in rows:
        r |= {
            "batch": batch, "images_per_s": batch / r["seconds"],
            "official_over_ours": ref / r["seconds"], "faithful_over_ours": faithful / r["seconds"],
            "projected_hours_300_epochs": math.ceil(train / batch) * r["seconds"] / 3600,
            "official_seconds": [first, last],
        }  # fmt: skip
    return rows


def switches_table(rows: list[dict]) -> str:
    out = [
        "| setting | batch | ms/step | images/s | peak MiB | x official | x faithful "
        "| 300 epochs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['setting']} ({r['execution']}) | {r['batch']} | {1000 * r['seconds']:.0f} | "
            f"{r['images_per_s']:.2f} | {r['peak_mib']:.0f} | {r['official_over_ours']:.3f} | "
            f"{r['faithful_over_ours']:.3f} | {r['projected_hours_300_epochs']:.1f} h |"
        )
    official = rows[0]["official_seconds"]
    out.append(
        f"\nx official: the official structure's step time over this one's (its mean of "
        f"{1000 * official[0]:.0f} and {1000 * official[1]:.0f} ms, timed before and after); "
        "x faithful: the faithful step's over this one's."
    )
    return "\n".join(out)


def table(results: list[Result]) -> str:
    head = (
        "| case | batch | images/s | ms/step | peak MiB | GFLOP/image | GFLOP/s | of peak "
        "| projected |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        frac = "n/a" if r.peak_fraction is None else f"{100 * r.peak_fraction:.1f} %"
        rows.append(
            f"| {r.case} | {r.batch} | {r.images_per_s:.2f} | {r.ms_per_step:.0f} | "
            f"{r.peak_mib:.0f} | {r.gflop_per_image:.2f} | {r.gflop_per_s:.0f} | {frac} | "
            f"{r.projected_hours:.2f} h for {r.projected_what} |"
        )
    return "\n".join(rows)


def profile_table(r: Result) -> str:
    rows = [f"{r.case}, batch {r.batch}: the ops with the most self time in one step"]
    rows += [
        f"  {p['op']:<40} {p['calls']:>6} calls {100 * p['share']:5.1f} % {p['self_ms']:9.1f} ms"
        for p in r.profile
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    torch.set_num_threads(threads_given(RunConfig(num_threads=args.threads)))
    torch.backends.cudnn.deterministic = not args.nondeterministic
    torch.backends.cudnn.benchmark = args.nondeterministic
    use_compile_backend(args.compile_backend)
    results: list[Result] = []
    ratios: list[dict[str, float]] = []
    switches: list[dict] = []
    for batch in args.batches:
        if args.switches:
            switches += measure_switches(args, device, batch)
            continue
        bench = Bench(args, device, batch)
        bench.run(args.case_list)
        results += bench.results
        if bench.ratio:
            ratios.append(bench.ratio)
    where = device_name(device)
    models = f"{args.student} <- {args.teacher_adv} + {args.teacher_nat}, width {args.width}"
    threads = torch.get_num_threads()
    print(f"\n{where}, torch {torch.__version__}, {threads} threads, {models}")
    if switches:
        print("\n" + switches_table(switches))
    if results:
        print("\n" + table(results))
    for r in results:
        if r.profile:
            print("\n" + profile_table(r))
    for q in ratios:
        orders = ""
        if "ours_first" in q:
            orders = f" (ours first {q['ours_first']:.3f}, "
            orders += f"official first {q['official_first']:.3f})"
        print(
            f"\nB-MTARD step / official structure at batch {q['batch']} (images/s; = official "
            f"step time / ours): {q['ours_over_official']:.3f}x{orders}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        record = {
            "device": where, "device_type": device.type, "torch": torch.__version__,
            "threads": threads, "args": {k: v for k, v in vars(args).items()},
            "ratio": ratios[0]["ours_over_official"] if len(ratios) == 1 else None,
            "ratios": ratios, "results": [asdict(r) for r in results], "switches": switches,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
