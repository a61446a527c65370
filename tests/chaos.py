"""A chaos driver: run an engine over a grid while SIGKILLing, at random moments, random running
stage processes (``python -m stages.*``) and now and then the engine itself, then start the same
command again after each kill, until the grid completes.

When and whom it kills is drawn from a seeded ``random.Random``: the draws are the same on every
run, the processes they land on depend on how fast the machine is at that moment. Every event
(start, kill, exit, restart) goes to a journal, one line each with the seconds since the start,
printed and written to ``<folder>/chaos.log``; each attempt's engine output goes to
``<folder>/attempt-NN.log``. A failing test names the folder and shows the journal.

What is checked afterwards (by the tests): the same bytes and metrics as an uninterrupted run of
the same grid, no temporary file left, no teacher trained twice, nothing half-written.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline_helpers import env


@dataclass(frozen=True)
class Process:
    """A running process of ours: its id, command line, working directory and age (seconds
    since it started, when it was listed)."""

    pid: int
    argv: tuple[str, ...]
    cwd: Path
    age: float = 0.0
    params: str = ""  # the params file it was given (BMTARD_PARAMS, a grid's experiment's)

    @property
    def stage(self) -> str | None:
        """``stages.distill`` for ``python -m stages.distill ...``, else None."""
        argv = list(self.argv)
        if "-m" in argv[:-1] and argv[argv.index("-m") + 1].startswith("stages."):
            return argv[argv.index("-m") + 1]
        return None

    def describe(self) -> str:
        """E.g. ``stages.distill method-sat_seed-1 (pid 123)`` or ``stages.train_teacher
        --role robust (pid 45)``."""
        argv, words = list(self.argv), [self.stage or " ".join(self.argv[:3])]
        if self.params:
            words.append(_experiment(self.params))
        if "--role" in argv[:-1]:
            words.append(f"--role {argv[argv.index('--role') + 1]}")
        return " ".join(w for w in words if w) + f" (pid {self.pid})"


def _experiment(params_path: str) -> str:
    """The experiment a stage runs for, from its params file (results/<exp>/params.yaml)."""
    parts = Path(params_path).parts
    return parts[-2] if len(parts) >= 3 and parts[-3] == "results" else ""


def _age(entry: Path, uptime: float) -> float:
    """Seconds since the process ``/proc/<pid>`` started: its start time (field 22 of its stat,
    in clock ticks since boot) against the machine's uptime."""
    fields = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def processes_in(folder: Path) -> list[Process]:
    """Our processes whose working directory is ``folder`` or inside it (a DVC queue's temporary
    copies are inside the project), by pid."""
    folder, uid, found = folder.resolve(), os.getuid(), []
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            argv = tuple(a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a)
            cwd = Path(os.readlink(entry / "cwd"))
            age = _age(entry, uptime)
            environ = (entry / "environ").read_bytes().split(b"\0")
            params = next(
                (e.decode().split("=", 1)[1] for e in environ if e.startswith(b"BMTARD_PARAMS=")),
                "",
            )
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile, or not ours to read
        if argv and (cwd == folder or folder in cwd.parents):
            found.append(Process(int(entry.name), argv, cwd, age, params))
    return sorted(found, key=lambda p: p.pid)


def stage_processes(folder: Path) -> list[Process]:
    """The running stage processes (``python -m stages.*``) of the project in ``folder``."""
    return [p for p in processes_in(folder) if p.stage is not None]


class Journal:
    """One line per event, with the seconds since the start: printed and appended to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, text: str) -> None:
        line = f"{time.monotonic() - self.start:8.1f} s  {text}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def text(self) -> str:
        return self.path.read_text()


@dataclass
class Attempt:
    """One run of the engine's command: when it started and ended, its exit code, the kills."""

    number: int
    started: float  # time.time()
    log: Path
    returncode: int | None = None
    kills: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Planned:
    """One kill as drawn: its number in the plan, after how many seconds, at what
    (``ENGINE_ALONE``, ``ENGINE_GROUP`` or ``STAGE``), and for a stage which of those running
    (its index: ``pick`` x their number)."""

    number: int
    delay: float
    target: str
    pick: float


STAGE, ENGINE_ALONE, ENGINE_GROUP = "stage", "engine alone", "engine and its jobs"


@dataclass
class Chaos:
    """The draws and the record of one chaos run over the project in ``repo``.

    ``mean_delay``: the mean of the (exponential) seconds a stage process has run when it, or
    the engine, is killed (its age, so that the count of kills depends far less on how fast the
    machine runs the engine and the stages: kills at random moments, most of them soon, some deep
    into a stage; the stages of the tiny grid take 5 to 30 s); ``engine_share``: the share of
    kills aimed at the engine itself; ``kills``: how many the plan holds. A run may end before
    the last ones are sent (the tests require a minimum)."""

    repo: Path
    folder: Path
    seed: int
    kills: int
    mean_delay: float = 4.0
    engine_share: float = 0.15
    deadline_s: float = 3600.0
    plan: list[Planned] = field(init=False)
    journal: Journal = field(init=False)
    attempts: list[Attempt] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    used: set[int] = field(default_factory=set)  # the plan's numbers sent

    def __post_init__(self) -> None:
        self.plan = draw(self.seed, self.kills, self.mean_delay, self.engine_share)
        self.journal = Journal(self.folder / "chaos.log")
        self.journal(f"chaos in {self.repo}: seed {self.seed}, {self.kills} kills planned:")
        for p in self.plan:
            self.journal(f"  plan {p.number}: {p.target} after {p.delay:.1f} s (pick {p.pick:.2f})")

    def next(self, stages_only: bool = False) -> Planned | None:
        """The first kill of the plan not yet sent (with ``stages_only``, the first such kill of
        a stage: while no engine runs to be killed), or None."""
        for p in self.plan:
            if p.number not in self.used and (p.target == STAGE or not stages_only):
                return p
        return None

    # ------------------------------------------------------------------ processes

    def start(self, cmd: list[str], note: str = "") -> subprocess.Popen:
        """Start the engine's command in a session of its own, its output to an attempt log."""
        attempt = Attempt(len(self.attempts) + 1, time.time(), self.folder / "x")
        attempt.log = self.folder / f"attempt-{attempt.number:02d}.log"
        self.attempts.append(attempt)
        self.journal(f"start attempt {attempt.number}{note}: {' '.join(_short(cmd))}")
        out = open(attempt.log, "w")  # noqa: SIM115 (closed with the process, in ``ended``)
        proc = subprocess.Popen(
            cmd, cwd=self.repo, env=env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        proc.out = out  # type: ignore[attr-defined]
        return proc

    def ended(self, proc: subprocess.Popen) -> int:
        """Wait for ``proc`` (the current attempt's engine); record and return its exit code."""
        rc = proc.wait()
        proc.out.close()  # type: ignore[attr-defined]
        self.attempts[-1].returncode = rc
        self.journal(f"attempt {self.attempts[-1].number} ended: exit {rc}")
        return rc

    def sleep(self, over: Callable[[], bool], seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when ``over()`` (e.g. the engine ended)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if over():
                return True
            time.sleep(0.1)
        return over()

    def stage_aged(self, over: Callable[[], bool], seconds: float, pick: float = 0.0):
        """Wait until a stage process has run ``seconds`` by its own age (the engine's start-up
        and the gaps between stages do not count, so that a kill lands inside a stage however
        fast the machine is); the one at ``pick`` (0 to 1) of those that have, by pid. Each time
        a stage ends younger, the wait is halved (at least 0.5 s): a long delay does not hold
        back the plan while only short stages are left. None when ``over()`` first (e.g. the
        engine ended)."""
        young: set[int] = set()  # the pids of the stages running at the last look, all younger
        while not over():
            running = stage_processes(self.repo)
            aged = [p for p in running if p.age >= seconds]
            if aged:
                return aged[min(int(pick * len(aged)), len(aged) - 1)]
            if young - {p.pid for p in running} and seconds > 0.5:
                seconds = max(seconds / 2, 0.5)
                self.journal(f"  a stage ended younger: the kill now waits {seconds:.1f} s")
            young = {p.pid for p in running}
            time.sleep(0.1)
        return None

    def wait_for_no_stages(self, timeout: float = 900.0) -> None:
        """Wait until no stage process of the project runs (orphans of a killed engine)."""
        start, end = time.monotonic(), time.monotonic() + timeout
        orphans = [p.describe() for p in stage_processes(self.repo)]
        while (left := stage_processes(self.repo)) and time.monotonic() < end:
            time.sleep(0.2)
        if left:
            raise AssertionError(f"stage processes still running: {left}")
        if orphans:
            waited = time.monotonic() - start
            self.journal(f"  waited {waited:.0f} s for the orphaned {', '.join(orphans)} to end")

    def kill(self, planned: Planned, pid: int, what: str, group: bool = False) -> bool:
        """Send the ``planned`` kill: SIGKILL ``pid`` (its whole process group with ``group``),
        journaled and counted; False when it had ended already (the plan's kill stays unsent)."""
        try:
            os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.journal(f"  {what} had ended already: not counted")
            return False
        self.sent.append(what)
        self.used.add(planned.number)
        self.attempts[-1].kills.append(what)
        self.journal(f"kill {len(self.sent)} (plan {planned.number}): SIGKILL {what}")
        return True

    def kill_a_stage(self, over: Callable[[], bool], planned: Planned, where=None) -> bool:
        """The planned kill of a stage, once one has run ``planned.delay`` seconds; False when
        ``over()`` first or the stage ended meanwhile. ``where(process)`` adds to its
        description."""
        victim = self.stage_aged(over, planned.delay, planned.pick)
        if victim is None:
            return False
        extra = f" in {where(victim)}" if where is not None else ""
        return self.kill(planned, victim.pid, victim.describe() + extra)

    def over_time(self) -> None:
        if self.journal.elapsed() > self.deadline_s:
            raise AssertionError(f"chaos ran past {self.deadline_s:.0f} s\n{self.journal.text()}")

    # ------------------------------------------------------------------ summaries

    def engine_kills(self) -> int:
        return sum(1 for k in self.sent if k.startswith(("snakemake", "dvc")))

    def summary(self) -> str:
        engine = self.engine_kills()
        return (
            f"{len(self.sent)} kills ({engine} of the engine) in {len(self.attempts)} attempts, "
            f"{self.journal.elapsed():.0f} s; seed {self.seed}; journal {self.journal.path}"
        )


def draw(seed: int, kills: int, mean_delay: float, engine_share: float) -> list[Planned]:
    """The seeded plan: for each kill, its delay (exponential with mean ``mean_delay``, at least
    0.5 s and at most 3 x ``mean_delay``), its target (the engine with probability
    ``engine_share``, alone or with its jobs at even odds; else a stage) and the pick among the
    running stages."""
    rng = random.Random(seed)
    plan = []
    for number in range(1, kills + 1):
        wait = min(max(rng.expovariate(1 / mean_delay), 0.5), 3 * mean_delay)
        at_engine, alone, pick = rng.random(), rng.random(), rng.random()
        target = (
            STAGE if at_engine >= engine_share else ENGINE_ALONE if alone < 0.5 else ENGINE_GROUP
        )
        plan.append(Planned(number, wait, target, pick))
    return plan


def _ended(proc: subprocess.Popen) -> Callable[[], bool]:
    """Whether ``proc`` has ended, as a predicate for the waits."""
    return lambda: proc.poll() is not None


def _short(cmd: list[str]) -> list[str]:
    """A command with its program's folder left out (the virtual environment's bin/)."""
    return [Path(cmd[0]).name, *cmd[1:]]


# ---------------------------------------------------------------------- Snakemake


def snakemake_chaos(chaos: Chaos, cmd: list[str], on_attempt=None) -> None:
    """Run ``cmd`` (Snakemake, with --rerun-incomplete) until it succeeds, sending
    ``chaos.kills`` SIGKILLs on the way: to a stage process (Snakemake then waits for its other
    jobs, which the next kills may hit too, and exits non-zero), to Snakemake alone (its running
    jobs go on as orphans: the same command is started once they ended, as it would be refused
    while they hold the project), or to Snakemake with its jobs (a node going down).
    ``on_attempt(attempt)`` runs after each attempt, once no stage process runs."""
    while True:
        chaos.over_time()
        proc = chaos.start(cmd)
        ended = _ended(proc)
        while not ended() and (planned := chaos.next()) is not None:
            if planned.target == STAGE:
                # Snakemake fails once its other running jobs end (the same command then starts
                # again); meanwhile the plan's next kills may land on those jobs
                chaos.kill_a_stage(ended, planned)
                continue
            if chaos.stage_aged(ended, planned.delay) is None:
                break
            alone = planned.target == ENGINE_ALONE
            what = "snakemake alone" if alone else "snakemake and its jobs"
            if chaos.kill(planned, proc.pid, f"{what} (pid {proc.pid})", group=not alone):
                break
        rc = chaos.ended(proc)
        chaos.wait_for_no_stages()
        if on_attempt is not None:
            on_attempt(chaos.attempts[-1])
        if rc == 0:
            return
        if not chaos.attempts[-1].kills:
            tail = chaos.attempts[-1].log.read_text()[-6000:]
            raise AssertionError(f"attempt failed without a kill:\n{tail}\n{chaos.journal.text()}")


# ---------------------------------------------------------------------- DVC's queue

QUEUE_ROW = re.compile(r"^[0-9a-f]{7}\s+(\S+)\s+.*\s(Queued|Running|Success|Failed)\s*$")


def queue_status(repo: Path, dvc: str) -> dict[str, set[str]]:
    """``dvc queue status``: experiment name -> the states of its entries (a failed entry stays
    listed beside the one queued again)."""
    out = subprocess.run(
        [dvc, "queue", "status"], cwd=repo, env=env(), capture_output=True, text=True, timeout=300
    ).stdout
    states: dict[str, set[str]] = {}
    for line in out.splitlines():
        m = QUEUE_ROW.match(line)
        if m:
            states.setdefault(m.group(1), set()).add(m.group(2))
    return states


def queue(repo: Path, dvc: str, name: str, values: dict[str, object]) -> None:
    """``dvc exp run --queue -n NAME -S key=value ...``."""
    sets = [a for k, v in values.items() for a in ("-S", f"{k}={v}")]
    proc = subprocess.run(
        [dvc, "exp", "run", "--queue", "-n", name, *sets], cwd=repo, env=env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"queueing {name} failed:\n{proc.stdout}\n{proc.stderr}")


def _queued(copy: Path) -> str:
    """Which experiment a DVC queue's temporary copy runs: its folder and its values."""
    try:
        params = yaml.safe_load((copy / "params.yaml").read_text())
        return f"{copy.name} (method {params['distill']['method']}, seed {params['run']['seed']})"
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return copy.name


def dvc_queue_chaos(chaos: Chaos, dvc: str, grid: dict[str, dict[str, object]]) -> None:
    """Queue every experiment of ``grid`` (name -> values) and run the queue with ``dvc exp run
    --run-all`` until every one succeeded, sending ``chaos.kills`` SIGKILLs on the way: to a
    stage process (its experiment fails; DVC's worker goes on with the next one) or to ``dvc exp
    run --run-all`` itself (its worker goes on in the background, and a copy of it that started
    the worker holds DVC's lock until the worker has emptied the queue: the same command is
    refused until then, while stages are still killed as planned). Before each start, each
    experiment that neither succeeded nor waits nor runs is queued again under its name (DVC's
    queue does not retry a failed experiment); its stages resume from their saved state."""
    for name, values in grid.items():
        queue(chaos.repo, dvc, name, values)
    while True:
        chaos.over_time()
        wait_for_dvc_lock(chaos)
        states = queue_status(chaos.repo, dvc)
        again = [n for n in grid if not states.get(n, set()) & {"Success", "Queued", "Running"}]
        if not again and all("Success" in states.get(n, set()) for n in grid):
            return
        for name in again:
            queue(chaos.repo, dvc, name, grid[name])
        note = f" (queued again: {', '.join(again)})" if again else ""
        proc = chaos.start([dvc, "exp", "run", "--run-all"], note)
        ended = _ended(proc)
        while not ended() and (planned := chaos.next()) is not None:
            if planned.target == STAGE:
                chaos.kill_a_stage(ended, planned, lambda p: _queued(p.cwd))
                continue
            if chaos.stage_aged(ended, planned.delay) is None:
                break
            if chaos.kill(planned, proc.pid, f"dvc exp run --run-all (pid {proc.pid})"):
                break
        chaos.ended(proc)


def wait_for_dvc_lock(chaos: Chaos) -> None:
    """Wait until no ``dvc exp run --run-all`` process of the project runs: after one was
    killed, the copy of it that started DVC's queue worker stays (until the worker ends) and
    holds DVC's lock, so DVC refuses every command that takes it. Planned stage kills go on
    meanwhile (the plan's kills of the engine wait for the engine to run again)."""

    def holder() -> list[Process]:
        return [p for p in processes_in(chaos.repo) if "--run-all" in p.argv]

    start, waiting = time.monotonic(), holder()
    if not waiting:
        return
    pids = ", ".join(str(p.pid) for p in waiting)
    chaos.journal(
        f"  a copy of dvc exp run --run-all still runs until DVC's queue worker ends (pid {pids}; "
        "after a kill it holds DVC's lock): waiting for it"
    )
    free = lambda: not holder()  # noqa: E731
    while not free():
        planned = chaos.next(stages_only=True)  # the engine's kills wait for the engine
        if planned is not None:
            chaos.kill_a_stage(free, planned, lambda p: _queued(p.cwd))
        else:
            chaos.sleep(free, 3600)
    chaos.journal(f"  DVC's lock is free after {time.monotonic() - start:.0f} s")
