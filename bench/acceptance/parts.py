"""The checks of ``bench/gpu_acceptance.py``, one function per part. Each runs its commands as
subprocesses under the part's time limit (``proc.run``: a hang costs that part alone) and returns
a ``Part``: pass, fail, skip or timeout, one line, and its numbers."""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.acceptance.pipeline import run_pipeline
from bench.acceptance.proc import PYTHON, ROOT, Ran, child_env, run

PASS, FAIL, SKIP, TIMEOUT = "pass", "fail", "skip", "timeout"


@dataclass
class Context:
    """What every part is given: the folder for its logs, a scratch folder, the device
    (cuda | cpu), whether sizes are tiny, and what the environment part found (``facts``)."""

    logs: Path
    work: Path
    device: str
    tiny: bool
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    """One part's outcome. seconds: its wall-clock time; limit_s: the limit it ran under."""

    name: str
    status: str
    summary: str
    seconds: float = 0.0
    limit_s: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


#: what the environment part prints (JSON): versions, the GPUs, and the optional packages
ENV_SCRIPT = r"""
import importlib.util, json, platform, shutil, subprocess, torch
smi = shutil.which("nvidia-smi")
listing = ""
if smi:
    listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
cuda = torch.cuda.is_available()
n = torch.cuda.device_count() if cuda else 0
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "cuda": torch.version.cuda, "cuda_available": cuda,
    "gpus": n, "names": [torch.cuda.get_device_name(i) for i in range(n)],
    "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
    "cudnn": torch.backends.cudnn.version() if cuda else None,
    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    "nvidia_smi": listing.strip().splitlines(),
    "packages": {m: importlib.util.find_spec(m) is not None for m in (
        "torchvision", "PIL", "numpy", "yaml", "tqdm", "tensorboard", "pytest", "pytest_timeout",
        "pyautoattack", "dvclive", "dvc", "snakemake")},
}))
"""


def environment(ctx: Context, timeout: float) -> Part:
    """Versions, the GPUs CUDA and nvidia-smi see, and which optional packages are here."""
    ran = run([PYTHON, "-c", ENV_SCRIPT], timeout=timeout, log=ctx.logs / "environment.log")
    if not ran.ok:
        return failed("environment", ran, "python with torch did not start")
    facts = json.loads(ran.stdout.strip().splitlines()[-1])
    ctx.facts.update(facts)
    if ctx.device == "cuda" and not facts["cuda_available"]:
        return Part(
            "environment", FAIL, "--device cuda, but torch sees no CUDA device", numbers=facts
        )
    where = ", ".join(facts["names"]) or "CPU only"
    missing = [p for p, here in facts["packages"].items() if not here]
    line = f"torch {facts['torch']}, {where}; missing: {', '.join(missing) or 'nothing'}"
    return Part("environment", PASS, line, numbers=facts)


def cuda_tests(ctx: Context, timeout: float) -> Part:
    """``pytest -m cuda`` (tests/test_cuda.py; each test skips without CUDA): outcomes per test
    (JUnit XML) and the numbers the tests recorded."""
    xml, numbers = ctx.logs / "cuda-tests.xml", ctx.logs / "cuda-numbers.jsonl"
    numbers.unlink(missing_ok=True)
    xml.unlink(missing_ok=True)
    cmd = [
        PYTHON, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-v", "-rA",
        "-m", "cuda", "tests/test_cuda.py", f"--junitxml={xml}",
    ]  # fmt: skip
    if ctx.facts.get("packages", {}).get("pytest_timeout"):  # one hung test fails alone
        cmd.append(f"--timeout={max(30, int(timeout) - 40)}")
    env = child_env({"BMTARD_ACCEPTANCE_RECORD": str(numbers)})
    ran = run(cmd, timeout=timeout, env=env, log=ctx.logs / "cuda-tests.log")
    # the XML is written at the end; a run killed at its limit leaves the verbose lines
    tests = junit(xml) if xml.exists() else verbose_outcomes(ran.stdout)
    recorded = {}
    if numbers.exists():
        for line in numbers.read_text().splitlines():
            entry = json.loads(line)
            recorded[entry.pop("test")] = entry
    got = {"tests": tests, "recorded": recorded}
    counts = {s: sum(1 for t in tests.values() if t["outcome"] == s) for s in ("passed", "failed")}
    skipped = sum(1 for t in tests.values() if t["outcome"] == "skipped")
    line = f"{counts['passed']} passed, {counts['failed']} failed, {skipped} skipped"
    if ran.timed_out:
        return Part("cuda_tests", TIMEOUT, f"killed at its limit; {line}", numbers=got,
                    log_tail=ran.tail())  # fmt: skip
    if not tests or ran.returncode not in (0, 5):  # 5: nothing collected/selected
        return Part("cuda_tests", FAIL, line, numbers=got, log_tail=ran.tail())
    status = SKIP if counts["passed"] == 0 and counts["failed"] == 0 else PASS
    return Part("cuda_tests", status, line + ("" if status == PASS else " (no CUDA)"), numbers=got)


def verbose_outcomes(text: str) -> dict[str, dict[str, Any]]:
    """Test name -> {outcome} from ``pytest -v``'s lines (``path::name PASSED``)."""
    out = {}
    for m in re.finditer(r"::(\w+) (PASSED|FAILED|ERROR|SKIPPED)", text):
        outcome = {"PASSED": "passed", "SKIPPED": "skipped"}.get(m.group(2), "failed")
        out[m.group(1)] = {"outcome": outcome, "seconds": None, "message": ""}
    return out


def junit(path: Path) -> dict[str, dict[str, Any]]:
    """Test name -> {outcome: passed | failed | skipped, seconds, message}."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (el.get("message") or "")[:500]
        out[case.get("name")] = {
            "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message,
        }  # fmt: skip
    return out


def pipeline(ctx: Context, timeout: float) -> Part:
    """The five stage scripts by hand, one SIGTERM and resume of the distillation."""
    aa = bool(ctx.facts.get("packages", {}).get("pyautoattack"))
    ok, line, numbers = run_pipeline(
        ctx.work / "pipeline", ctx.device, ctx.tiny, aa, time.monotonic() + timeout,
        ctx.logs / "pipeline.log",
    )  # fmt: skip
    return Part("pipeline", PASS if ok else FAIL, line, numbers=numbers)


def ddp(ctx: Context, timeout: float) -> Part:
    """Two processes over NCCL (``bench/acceptance/ddp_check.py``) against one process, if the
    machine has two GPUs or more; skipped otherwise (``--device cpu --ddp``: gloo, eval mode)."""
    gpus = int(ctx.facts.get("gpus", 0))
    if ctx.device == "cuda" and gpus < 2:
        return Part("ddp", SKIP, f"{gpus} GPU: a multi-process check needs 2 or more")
    if ctx.device == "cpu" and not ctx.facts.get("cpu_ddp"):
        return Part("ddp", SKIP, "on the CPU only with --ddp (gloo; tests/test_distributed.py)")
    out = ctx.work / "ddp.json"
    cmd = [
        PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "bench" / "acceptance" / "ddp_check.py"), str(out), ctx.device,
    ]  # fmt: skip
    env = child_env({"OMP_NUM_THREADS": "1"})
    ran = run(cmd, timeout=timeout, env=env, log=ctx.logs / "ddp.log")
    if not ran.ok:
        return failed("ddp", ran, "torchrun with 2 processes")
    got = json.loads(out.read_text())
    # TF32 off; SyncBatchNorm sums the statistics in another order than one process
    ok = got["logit_gap"] < 1e-4 and got["grad_gap"] < 1e-4 and got["stats_gap"] < 1e-5
    line = (
        f"{got['world']} processes ({got['backend']}, SyncBatchNorm {got['sync_batch_norm']}): "
        f"logits within {got['logit_gap']:.1e} (< 1e-4), gradients {got['grad_gap']:.1e} "
        f"(relative, < 1e-4), BatchNorm statistics {got['stats_gap']:.1e} (< 1e-5) of one process"
    )
    return Part("ddp", PASS if ok else FAIL, line, numbers=got)


def bench(name: str, flags: list[str]) -> Callable[[Context, float], Part]:
    """A part that runs ``bench/bench_step.py`` with ``flags`` (B-MTARD and the official
    structure at batch 128, or tiny sizes on the CPU)."""

    def part(ctx: Context, timeout: float) -> Part:
        out = ctx.logs / f"{name}.json"
        sizes = (
            ["--width", "0.125", "--batch", "4", "--warmup", "0", "--steps", "1",
             "--teacher-adv", "preact_resnet18", "--teacher-nat", "resnet18"]
            if ctx.tiny else ["--batch", "128", "--warmup", "3", "--steps", "10"]
        )  # fmt: skip
        if ctx.tiny and "--compile" in flags:
            sizes += ["--compile-backend", "eager"]  # inductor takes minutes per graph on a CPU
        cmd = [
            PYTHON, str(ROOT / "bench" / "bench_step.py"), "--device", ctx.device, *sizes,
            "--cases", "bmtard,official", "--json", str(out), *flags,
        ]  # fmt: skip
        ran = run(cmd, timeout=timeout, log=ctx.logs / f"{name}.log")
        if not ran.ok:
            return failed(name, ran, "bench_step")
        record = json.loads(out.read_text())
        ours = record["results"][0]
        numbers = {
            "device": record["device"], "ratio_ours_over_official": record["ratio"],
            "images_per_s": ours["images_per_s"], "peak_mib": ours["peak_mib"],
            "peak_fraction": ours["peak_fraction"], "gflop_per_image": ours["gflop_per_image"],
            "projected_hours_300_epochs": ours["projected_hours"],
            "official_images_per_s": record["results"][1]["images_per_s"],
        }  # fmt: skip
        share = ours["peak_fraction"]
        frac = "" if share is None else f", {100 * share:.1f} % of the datasheet peak"
        line = (
            f"{ours['images_per_s']:.1f} images/s{frac}, {ours['peak_mib']:.0f} MiB, 300 epochs "
            f"in {ours['projected_hours']:.1f} h, {record['ratio']:.2f}x the official structure"
        )
        return Part(name, PASS, line, numbers=numbers)

    return part


def bench_switches(ctx: Context, timeout: float) -> Part:
    """``bench/bench_step.py --switches``: the B-MTARD step with each trick of the attack's fast
    path alone and all of them (bmtard.runtime.execution.FAST_PATH; the compiled twin with CUDA
    graphs on a GPU) against the official structure at batch 128: images/s, peak memory, the
    projected 300-epoch B-MTARD of each."""
    name = "bench_switches"
    out = ctx.logs / f"{name}.json"
    sizes = (
        ["--width", "0.125", "--batch", "4", "--warmup", "0", "--steps", "1",
         "--teacher-adv", "preact_resnet18", "--teacher-nat", "resnet18",
         "--attack-compile", "inductor", "--compile-backend", "eager"]
        if ctx.tiny else
        ["--batch", "128", "--warmup", "2", "--steps", "5", "--attack-compile", "cudagraphs"]
    )  # fmt: skip
    cmd = [
        PYTHON, str(ROOT / "bench" / "bench_step.py"), "--device", ctx.device, *sizes,
        "--switches", "--json", str(out),
    ]  # fmt: skip
    ran = run(cmd, timeout=timeout, log=ctx.logs / f"{name}.log")
    if not ran.ok:
        return failed(name, ran, "bench_step --switches")
    rows = json.loads(out.read_text())["switches"]
    numbers = {
        r["setting"]: {
            "execution": r["execution"], "images_per_s": r["images_per_s"],
            "peak_mib": r["peak_mib"], "faithful_over_ours": r["faithful_over_ours"],
            "official_over_ours": r["official_over_ours"],
            "projected_hours_300_epochs": r["projected_hours_300_epochs"],
        }
        for r in rows
    }  # fmt: skip
    best = numbers["all"]
    line = (
        f"all switches: {best['images_per_s']:.1f} images/s, {best['faithful_over_ours']:.2f}x "
        f"the faithful step, {best['official_over_ours']:.2f}x the official structure, 300 epochs "
        f"in {best['projected_hours_300_epochs']:.1f} h; each alone in the numbers"
    )
    return Part(name, PASS, line, numbers=numbers)


def failed(name: str, ran: Ran, what: str) -> Part:
    status = TIMEOUT if ran.timed_out else FAIL
    end = "killed at its time limit" if ran.timed_out else f"exit code {ran.returncode}"
    last = (ran.stderr or ran.stdout).strip().splitlines()[-1:] or [""]
    return Part(name, status, f"{what}: {end}: {last[0][:200]}", log_tail=ran.tail())


#: (name, its own time limit in seconds on a GPU, the check), in the order they run
PARTS: tuple[tuple[str, float, Callable[[Context, float], Part]], ...] = (
    ("environment", 30, environment),
    ("cuda_tests", 210, cuda_tests),
    ("pipeline", 130, pipeline),
    ("ddp", 60, ddp),
    ("bench_fp32", 50, bench("bench_fp32", [])),
    ("bench_switches", 150, bench_switches),
    ("bench_bf16_channels_last", 50,
     bench("bench_bf16_channels_last", ["--precision", "bf16", "--channels-last",
                                        "--nondeterministic"])),
    ("bench_compile", 240,
     bench("bench_compile", ["--precision", "bf16", "--channels-last", "--nondeterministic",
                             "--compile"])),
)  # fmt: skip
