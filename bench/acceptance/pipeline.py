"""The tiny pipeline by hand: the five stage scripts, their command lines read from dvc.yaml (no
engine), in a fresh folder on the device asked for, with one SIGTERM of the distillation once its
training is under way and the same command again to resume it.

Without pyautoattack (the GPU machines lack it) the evaluation runs every attack but AutoAttack
and no sanity checks (their Square attack needs it too); the report says so.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from bench.acceptance.proc import PYTHON, ROOT, Ran, child_env, finish, run, start, write_log

STAGES = ("download", "train_clean_teacher", "train_robust_teacher", "distill", "evaluate")
SAMPLE = ROOT / "data" / "cifar10-sample"
ATTACKS = ["fgsm", "pgd_sat", "pgd_trades", "cw_inf"]

#: (dotted key, value) over presets/quick.yaml. On a GPU: 1,000 training images, 64-image
#: batches (32 distillation steps of 10-step PGD: the SIGTERM lands mid-training), 200 test images
GPU_SIZES: dict[str, Any] = {
    "run.num_threads": 0,
    "data.train_limit": 1000,
    "data.test_limit": 200,
    "clean_teacher.optim.epochs": 1,
    "robust_teacher.optim.epochs": 1,
    "robust_teacher.monitor.n_images": 100,
    "distill.optim.epochs": 2,
    "distill.optim.batch_size": 64,
    "distill.monitor.n_images": 100,
    "evaluate.n_images": 200,
    "evaluate.batch_size": 200,
}
#: on a CPU (CI): tests/pipeline_helpers.py's tiny sizes, one thread, two attacks
TINY_SIZES: dict[str, Any] = {
    "run.num_threads": 1,
    "data.train_limit": 100,
    "data.test_limit": 40,
    "clean_teacher.width": 0.125,
    "clean_teacher.optim.epochs": 1,
    "robust_teacher.width": 0.05,
    "robust_teacher.optim.epochs": 1,
    "robust_teacher.attack.steps": 2,
    "robust_teacher.monitor.n_images": 20,
    "distill.width": 0.0625,
    "distill.optim.epochs": 1,
    "distill.optim.batch_size": 32,
    "distill.attack.steps": 2,
    "distill.monitor.n_images": 20,
    "evaluate.n_images": 10,
    "evaluate.batch_size": 10,
    "evaluate.teacher_n_images": 10,
    "evaluate.eps_curve": [0.0, 8.0],
}


def set_key(params: dict, dotted: str, value: Any) -> None:
    node = params
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    if last not in node:
        raise KeyError(f"{dotted}: not a key of presets/quick.yaml")
    node[last] = value


def make_params(device: str, tiny: bool, autoattack: bool) -> dict:
    """presets/quick.yaml on the shipped sample, at the sizes above, on ``device``; a state saved
    after every batch (so the distillation's first one shows that training is under way)."""
    params = yaml.safe_load((ROOT / "presets" / "quick.yaml").read_text())
    sizes = {
        **(TINY_SIZES if tiny else GPU_SIZES),
        "run.device": device,
        "run.save_every_minutes": 0.0,
        "data.local_root": str(SAMPLE),
        "evaluate.attacks": ATTACKS[:2] if tiny else ATTACKS + ["autoattack"] * autoattack,
        "evaluate.sanity.enabled": autoattack and not tiny,
    }  # fmt: skip
    for key, value in sizes.items():
        set_key(params, key, value)
    return params


def commands(params: dict) -> dict[str, list[str]]:
    """Each stage's command line as dvc.yaml has it, its ``${...}`` filled from ``params``."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

    def value(m: re.Match) -> str:
        node: Any = params
        for k in m.group(1).split("."):
            node = node[k]
        return str(node)

    out = {}
    for name in STAGES:
        words = re.sub(r"\$\{([\w.]+)\}", value, stages[name]["cmd"]).split()
        assert words[:2] == ["python", "-m"], words
        out[name] = [PYTHON, *words[1:]]
    return out


def sigterm_once_training(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[Ran, bool]:
    """Run the distillation, send SIGTERM (as SLURM does at a time limit) once its first
    training state is saved, and wait for it; (how it ended, whether the signal was sent
    before it finished)."""
    began = time.monotonic()
    proc = start(cmd, cwd, env)
    while time.monotonic() - began < timeout and proc.poll() is None:
        if list(cwd.glob(".cache/train/distill/*.pt")):
            break
        time.sleep(0.05)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signal.SIGTERM)
    return finish(proc, began, timeout - (time.monotonic() - began)), sent


def run_pipeline(
    work: Path, device: str, tiny: bool, autoattack: bool, deadline: float, log: Path
) -> tuple[bool, str, dict]:
    """The five stages in ``work`` (created fresh); (passed, one line, numbers)."""
    work.mkdir(parents=True, exist_ok=True)
    params = make_params(device, tiny, autoattack)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = child_env({"BMTARD_GPU_LOCKS": str(work / "gpu-locks")})
    cmds = commands(params)
    numbers: dict[str, Any] = {"stages": {}, "autoattack": autoattack}

    def left() -> float:
        return deadline - time.monotonic()

    def note(name: str, ran: Ran) -> None:
        numbers["stages"][name] = {"returncode": ran.returncode, "seconds": round(ran.seconds, 1)}
        write_log(log, cmds.get(name.split(" ")[0], [name]), ran)

    for name in STAGES:
        if name == "distill":
            ran, sent = sigterm_once_training(cmds[name], work, env, left())
            note("distill (SIGTERM)", ran)
            stopped = [ln for ln in ran.stderr.splitlines() if ln.startswith("stopped: ")]
            numbers["sigterm"] = {"sent": sent, "stopped_line": stopped[:1]}
            if not (sent and ran.returncode == 143 and stopped):
                why = "it finished before the signal" if not sent else f"exit {ran.returncode}"
                return False, f"distill: SIGTERM did not stop it, state saved ({why})", numbers
            ran = run(cmds[name], timeout=left(), cwd=work, env=env)
            note("distill (resumed)", ran)
            numbers["resumed"] = "resuming from" in ran.stderr
            if ran.ok and not numbers["resumed"]:
                return False, "distill: the rerun did not resume from the saved state", numbers
        else:
            ran = run(cmds[name], timeout=left(), cwd=work, env=env)
            note(name, ran)
        slot = re.search(r"GPU slot (\S+) claimed", ran.stderr)
        if slot:
            numbers.setdefault("gpu_slots", {})[name] = slot.group(1)
        if not ran.ok:
            end = "killed at the time limit" if ran.timed_out else f"exit {ran.returncode}"
            return False, f"{name}: {end}: {ran.tail(300).strip().splitlines()[-1:]}", numbers
    numbers["metrics"] = json.loads((work / "metrics" / "evaluate.json").read_text())
    aa = "" if autoattack else " (AutoAttack and the sanity checks left out: no pyautoattack)"
    seconds = sum(s["seconds"] for s in numbers["stages"].values())
    return True, f"5 stages, SIGTERM and resume of distill in {seconds:.0f} s{aa}", numbers
