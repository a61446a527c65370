"""A command under a time limit that kills all it started: each command runs in a process group
of its own, and at its limit the whole group gets SIGKILL (a stage's torchrun workers too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass(frozen=True)
class Ran:
    """How a command ended: its exit code (None when killed at its limit), its wall-clock
    seconds, and its output (stdout then stderr)."""

    returncode: int | None
    seconds: float
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, chars: int = 3000) -> str:
        return (self.stdout + self.stderr)[-chars:]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every command: this checkout first on the import path (not an
    installed copy of bmtard), unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the command's process group (it is the group's leader)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, began: float, timeout: float) -> Ran:
    """Wait for ``proc`` for at most ``timeout`` seconds; kill its group past that."""
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.1))
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        code = None
    return Ran(code, time.monotonic() - began, out or "", err or "")


def run(
    cmd: list[str], *, timeout: float, cwd: Path = ROOT, env: dict[str, str] | None = None,
    log: Path | None = None,
) -> Ran:  # fmt: skip
    """Run ``cmd`` for at most ``timeout`` seconds; its output also goes to ``log``."""
    began = time.monotonic()
    ran = finish(start(cmd, cwd, env or child_env()), began, timeout)
    if log is not None:
        write_log(log, cmd, ran)
    return ran


def write_log(log: Path, cmd: list[str], ran: Ran) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    end = "killed at its time limit" if ran.timed_out else f"exit code {ran.returncode}"
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n{ran.stdout}{ran.stderr}[{end}, {ran.seconds:.1f} s]\n\n")
