"""Chaos through DVC's queue: the teachers trained and committed, then a grid on the tiny preset
(SAT and B-MTARD x 2 seeds, from the Snakemake chaos test's grid: each DVC experiment costs its
own start-up, and a killed one runs again from its start) queued by name and run with ``dvc
exp run --run-all``, while a seeded driver (tests/chaos.py) SIGKILLs random running stages (in
the queue's temporary copies) at random moments, and sometimes ``dvc exp run --run-all``
itself. DVC's queue goes on with the next experiment after a failed one and does not retry it:
before each start of the same command, each experiment that neither succeeded nor waits nor runs
is queued again under its name, and its stages resume from their saved state (kept in the
project's .cache/, not in the temporary copy that DVC deletes with the failed experiment).

Then, against an uninterrupted run of the same queue: every experiment's outputs have the same
DVC hashes (checkpoint bytes, metrics, curves; TensorBoard's folders left out, their records
hold wall times) and the same metrics, no temporary copy, training or evaluation state, or
temporary file is left, and no experiment trained a teacher. The journal of the kills is printed
and kept in the test's folder (``chaos/chaos.log``).

Marked ``chaos`` (not in the default run, see pyproject.toml): ``python -m pytest -m chaos
tests/test_chaos_dvc.py``; times in docs/after-a-crash.md.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from chaos import Chaos, dvc_queue_chaos, queue, queue_status
from chaos_checks import CHAOS, NAMES, leftovers
from pipeline_helpers import BIN, COST_FILE, WITH_COST, copy_project, git, run, timeless

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

SEED = 30  # its plan: dvc exp run --run-all at kills 4 and 6, stages at the 12 others
KILLS = 14  # planned; the queue may be done before the last ones: the issue asks for at least 10
GRID = {n: v for n, v in NAMES.items() if v["distill.method"] in ("sat", "bmtard")}
DVC = str(BIN / "dvc")


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """The project with its teachers trained (B-MTARD's: both) and committed, twice: the copy
    for the chaos run is made from the first before anything is queued."""
    repo = copy_project(tmp_path_factory.mktemp("uninterrupted") / "repo", CHAOS)
    run(repo, DVC, "repro", "train_clean_teacher", "train_robust_teacher", timeout=1800)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "teachers")
    other = tmp_path_factory.mktemp("chaos") / "repo"
    shutil.copytree(repo, other, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return repo, other


def experiments(repo) -> dict[str, dict]:
    """Each named experiment's outputs (path -> DVC hash; TensorBoard's folders left out) and
    metrics, from ``dvc exp show --json`` (which lists the failed runs too, with an error)."""
    shown = json.loads(run(repo, DVC, "exp", "show", "--json").stdout)
    out = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                if rev.get("error"):
                    continue
                assert rev["name"] not in out, rev["name"]  # one success each
                data = rev["data"]
                # cost files hold wall times, details.json and the card gather them: those two
                # without them (pipeline_helpers.timeless), from the experiment's commit
                outs = {
                    p: shown_at(repo, rev, p) if p.endswith(WITH_COST) else o.get("hash")
                    for p, o in data["outs"].items()
                    if not p.startswith("runs/") and not p.endswith(COST_FILE)
                }
                metrics = {p: m.get("data") for p, m in data["metrics"].items()}
                out[rev["name"]] = {"outs": outs, "metrics": metrics}
    return out


def shown_at(repo, rev: dict, path: str) -> bytes | None:
    """A file of an experiment's commit as ``timeless`` gives it."""
    return timeless(path, git(repo, "show", f"{rev['rev']}:{path}").stdout.encode())


def queue_logs(repo) -> str:
    """Every queued run's output (DVC keeps them under .dvc/tmp/exps/run/, failed runs' too)."""
    return "\n".join(p.read_text() for p in sorted(repo.glob(".dvc/tmp/exps/run/*/*.out")))


@pytest.fixture(scope="module")
def reference(repos):
    repo = repos[0]
    for name, values in GRID.items():
        queue(repo, DVC, name, values)
    run(repo, DVC, "exp", "run", "--run-all", timeout=3600)
    assert all(s == {"Success"} for s in queue_status(repo, DVC).values())
    assert leftovers(repo) == []
    return experiments(repo)


def test_a_queued_grid_survives_random_kills(tmp_path, repos, reference):
    repo = repos[1]
    chaos = Chaos(repo, tmp_path / "chaos", seed=SEED, kills=KILLS)
    dvc_queue_chaos(chaos, DVC, GRID)
    logs = queue_logs(repo)
    resumed = len(re.findall(r"resuming from ", logs))
    chaos.journal(f"{chaos.summary()}; {resumed} stage(s) resumed from a saved state")
    journal = chaos.journal.text()
    assert len(chaos.sent) >= 10 and chaos.engine_kills() == 2, journal
    got = experiments(repo)
    assert sorted(got) == sorted(GRID) == sorted(reference), journal
    for name in GRID:
        assert got[name] == reference[name], (name, journal)
    assert leftovers(repo) == [], journal
    assert not re.search(r"_teacher epoch \d+/\d+:", logs), journal  # no teacher trained
