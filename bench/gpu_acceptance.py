"""GPU acceptance in one command: every check a CUDA machine can make, each with its own time
limit, in at most 8 minutes, into one JSON and one Markdown report.

    python3 bench/gpu_acceptance.py --out DIR                  # on one CUDA GPU
    python3 bench/gpu_acceptance.py --device cpu --tiny --out DIR   # the same, tiny, on a CPU (CI)

It needs torch alone (with numpy, pyyaml, tqdm, tensorboard, torchvision; pytest for the CUDA
tests) and a plain checkout: no DVC, Snakemake, dvclive or pyautoattack (without pyautoattack the
evaluation leaves out AutoAttack and its sanity checks, and says so). The parts, in order, each
run as subprocesses killed at the part's limit (``bench/acceptance/parts.py``; seconds on a GPU):

  environment (30)     versions, the GPUs torch and nvidia-smi see, the optional packages;
  cuda_tests (210)     ``pytest -m cuda`` (tests/test_cuda.py) with the numbers each test records;
  pipeline (130)       the five stage scripts by hand, one SIGTERM and resume of the distillation;
  ddp (60)             two processes over NCCL against one, if there are 2 GPUs or more;
  bench_fp32 (50)      ``bench/bench_step.py`` at batch 128: images/s, peak memory, share of the
                       card's peak, projected 300-epoch time, ratio to the official structure;
  bench_switches (150) the same step with each trick of the attack's fast path alone and all
                       of them (``--switches``; the compiled twin replayed as CUDA graphs);
  bench_bf16_channels_last (50), bench_compile (240: inductor compiles first)
                       the step in bf16 + channels_last, and compiled.

A part gets its limit or what is left of ``--budget`` (480 s), whichever is less; one that would
start with under 5 s left is skipped. Each command's output goes to ``--logs`` (OUT/logs). The exit
code is 0 when no part failed or ran out of time.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: the checkout's root on the import path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.acceptance import report  # noqa: E402
from bench.acceptance.parts import PARTS, SKIP, Context, Part  # noqa: E402

MIN_START_S = 5.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for acceptance.json and acceptance.md")
    p.add_argument("--logs", help="folder for each part's output (default: OUT/logs)")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CI on a CPU; no timing)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for every part together")
    p.add_argument("--only", help="comma-separated parts to run (default: all)")
    p.add_argument("--ddp", action="store_true", help="run the ddp part on the CPU too (gloo)")
    p.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    names = [name for name, _, _ in PARTS]
    args.parts = names if not args.only else args.only.split(",")
    unknown = sorted(set(args.parts) - set(names))
    if unknown:
        p.error(f"--only: unknown {', '.join(unknown)}; the parts are {', '.join(names)}")
    if args.budget <= 0:
        p.error("--budget must be > 0 seconds")
    return args


def run_parts(args: argparse.Namespace, ctx: Context) -> list[Part]:
    """Every asked-for part in order, each under min(its limit, what is left of the budget)."""
    deadline = time.monotonic() + args.budget
    done: list[Part] = []
    for name, limit, check in PARTS:
        if name not in args.parts and name != "environment":  # the others read its facts
            continue
        left = deadline - time.monotonic()
        if left < MIN_START_S:
            done.append(Part(name, SKIP, f"not started: the {args.budget:.0f} s budget is spent"))
            continue
        timeout = min(limit, left)
        print(f"[{name}] up to {timeout:.0f} s ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            part = check(ctx, timeout)
        except Exception as e:  # a bug in a check fails that part, not the run
            part = Part(name, "fail", f"the check itself failed: {type(e).__name__}: {e}")
        part.seconds, part.limit_s = time.monotonic() - began, timeout
        print(f"[{name}] {part.status}: {part.summary}", file=sys.stderr, flush=True)
        done.append(part)
    return done


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    logs = Path(args.logs) if args.logs else out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bmtard-acceptance-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        ctx = Context(logs.resolve(), work.resolve(), args.device, args.tiny)
        ctx.facts["cpu_ddp"] = args.ddp
        parts = run_parts(args, ctx)
    facts = ctx.facts
    header = {
        "command": shlex.join(["python3", "bench/gpu_acceptance.py", *(argv or sys.argv[1:])]),
        "device": args.device, "tiny": args.tiny, "started": started,
        "device_name": ", ".join(facts.get("names") or []) or "CPU",
        "torch": facts.get("torch", "?"), "budget_s": args.budget,
        "total_s": time.monotonic() - began,
    }  # fmt: skip
    js, md = report.write(out, header, parts)
    print(md.read_text())
    print(f"written: {js} and {md}", file=sys.stderr)
    return 0 if report.passed(parts) else 1


if __name__ == "__main__":
    sys.exit(main())
