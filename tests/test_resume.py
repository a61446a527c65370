"""Resume after a crash, in-process: a training stage stopped at any point (a kill after a step,
during the state write, a SIGTERM request, a non-finite loss, a full disk) and run again ends
with the same bytes and curves as an uninterrupted run; a changed parameter, input or code never
reuses the state. (tests/test_crash_e2e.py kills the real engines with SIGKILL.)

A crash is simulated by making ``bmtard.core.faults.hit`` raise at the chosen point: everything the
next run needs must then come from disk, as after a kill.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import signal
from pathlib import Path

import pytest
import torch

from bmtard.config.schema import (
    DistillConfig,
    OptimConfig,
    RobustTeacherConfig,
    RunConfig,
    TrainAttackConfig,
)
from bmtard.core import faults
from bmtard.core.errors import BmtardError, Interrupted, TrainingError
from bmtard.core.stop import StopRequest
from bmtard.methods.b_mtard import BMTARD
from bmtard.runtime import device as runtime
from bmtard.training.distill import run_distill
from bmtard.training.stage import Outputs
from bmtard.training.state import StateStore
from bmtard.training.teachers import train_robust_teacher

from training_helpers import WIDTH, monitor_cfg, teachers, tiny_data

DATA = tiny_data()


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception`)."""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # state_dir and dvclive paths are relative


def crash_at(monkeypatch, point: str, n: int, action=None):
    """Make the n-th arrival at ``point`` raise Crash (or call ``action`` instead)."""
    counts: dict[str, int] = {}
    real = faults.hit

    def hit(p: str, before=None) -> None:
        counts[p] = counts.get(p, 0) + 1
        if p == point and counts[p] == n:
            if before is not None:
                before()
            if action is None:
                raise Crash
            action()
        real(p, before)

    monkeypatch.setattr(faults, "hit", hit)
    return counts


def distill_cfg(**optim) -> DistillConfig:
    return DistillConfig(
        arch="resnet18",
        width=WIDTH,
        optim=OptimConfig(
            **{"epochs": 3, "batch_size": 16, "lr": 0.05, "milestones": [2], **optim}
        ),
        attack=TrainAttackConfig(steps=1),
        monitor=monitor_cfg(pgd_steps=1),
        checkpoint="best",
    )


def run_cfg(**kw) -> RunConfig:
    return RunConfig(**{"seed": 0, "device": "cpu", "save_every_minutes": 0.0, **kw})


def distill(folder, cfg=None, run=None, stop=None):
    """One distillation into ``folder`` (teachers made there once)."""
    folder.mkdir(exist_ok=True)
    if not (folder / "clean.pt").exists():
        teachers(folder)
    run = run or run_cfg()
    device = runtime.setup(run)
    out = Outputs(folder / "student.pt", folder / "live", folder / "tb")
    return run_distill(
        run,
        cfg or distill_cfg(),
        DATA,
        device,
        folder / "clean.pt",
        folder / "robust.pt",
        out,
        stop,
    )


def curves(folder) -> dict[str, list[tuple[int, float]]]:
    """Every dvclive curve as (step, value) rows, and TensorBoard's steps per scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for tsv in sorted((folder / "live" / "plots" / "metrics").glob("*.tsv")):
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        out[tsv.stem] = [(int(r["step"]), float(r[tsv.stem])) for r in rows]
    acc = EventAccumulator(str(folder / "tb"))
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        out[f"tb/{tag}"] = [(s.step, s.value) for s in acc.Scalars(tag)]
    return out


def state_files(folder: Path = Path(".")) -> list[Path]:
    return sorted(folder.glob(".cache/train/*/*.pt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: the student's bytes and the curves."""
    folder = tmp_path_factory.mktemp("ref")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        distill(folder / "run")
        assert state_files(folder) == []  # removed once the outputs are written
    return (folder / "run" / "student.pt").read_bytes(), curves(folder / "run")


# 3 epochs x 4 batches; with save_every_minutes 0 a state is written after every batch and at
# every epoch's end (writes 1-4: batches of epoch 1, write 5: its end, 6-9: epoch 2, ...)
@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("batch", 1),  # early: after the first step, before any state was written
        ("batch", 6),  # mid-epoch 2
        ("batch", 12),  # the last step, before the last epoch's monitor
        ("state_write", 5),  # half-way through writing the state at the end of epoch 1
        ("state_write", 8),  # half-way through a mid-epoch write
    ],
)
def test_distill_resumes_to_identical_bytes_and_curves(tmp_path, monkeypatch, reference, point, n):
    ref_bytes, ref_curves = reference
    crash_at(monkeypatch, point, n)
    with pytest.raises(Crash):
        distill(tmp_path / "run")
    assert not (tmp_path / "run" / "student.pt").exists()  # no output before the stage ends
    saved = state_files()
    assert len(saved) == (0 if (point, n) in (("batch", 1),) else 1)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    distill(tmp_path / "run")
    assert (tmp_path / "run" / "student.pt").read_bytes() == ref_bytes
    assert curves(tmp_path / "run") == ref_curves  # every step once, same values
    assert state_files() == []
    assert not list(tmp_path.glob(".cache/train/*/.*.tmp"))  # the half-written temporary is gone


def test_resume_skips_the_steps_already_done(tmp_path, monkeypatch, reference):
    crash_at(monkeypatch, "batch", 7)
    with pytest.raises(Crash):
        distill(tmp_path / "run")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    counts = crash_at(monkeypatch, "never", 1)
    distill(tmp_path / "run")
    assert counts["batch"] == 12 - 6  # 6 steps were saved; only the rest ran
    assert (tmp_path / "run" / "student.pt").read_bytes() == reference[0]


def test_stop_request_saves_and_resumes(tmp_path, monkeypatch, reference):
    """SIGTERM (as SLURM sends before its kill) sets the stop request: the loop saves at the next
    batch and stops with Interrupted; a rerun continues."""
    stop = StopRequest()
    crash_at(monkeypatch, "batch", 5, action=lambda: stop.request(signal.SIGTERM))
    run = run_cfg(save_every_minutes=10000.0)  # no timed save: only the stop saves mid-epoch
    with pytest.raises(Interrupted) as err:
        distill(tmp_path / "run", run=run, stop=stop)
    msg = str(err.value)
    assert msg.startswith("distill: epoch 2, batch 1: stopped by SIGTERM; the state at epoch 2")
    assert msg.endswith("run the same command again to continue") and "\n" not in msg
    assert err.value.signum == signal.SIGTERM
    state = StateStore(".cache/train", "distill", "x")
    assert len(state.others()) == 1
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    distill(tmp_path / "run", run=run)
    assert (tmp_path / "run" / "student.pt").read_bytes() == reference[0]


def test_stop_request_during_the_monitor(tmp_path, monkeypatch, reference):
    """A stop during the last epoch's monitor (after its clean batch, eval batch 3) saves the
    state with every step of that epoch done; the rerun only monitors and writes."""
    stop = StopRequest()
    crash_at(monkeypatch, "eval_batch", 3, action=lambda: stop.request(signal.SIGINT))
    with pytest.raises(Interrupted) as err:
        distill(tmp_path / "run", stop=stop)
    assert str(err.value).startswith(
        "distill: epoch 3, monitor: stopped by SIGINT; the state at epoch 3, batch 4 ("
    )
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    counts = crash_at(monkeypatch, "never", 1)
    distill(tmp_path / "run")
    assert counts.get("batch", 0) == 0
    assert (tmp_path / "run" / "student.pt").read_bytes() == reference[0]
    assert curves(tmp_path / "run") == reference[1]


def test_changed_parameter_never_reuses_the_state(tmp_path, monkeypatch, caplog):
    crash_at(monkeypatch, "batch", 6)
    with pytest.raises(Crash):
        distill(tmp_path / "run")
    old = state_files()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    counts = crash_at(monkeypatch, "never", 1)
    with caplog.at_level(logging.WARNING):
        distill(tmp_path / "run", cfg=distill_cfg(lr=0.04))
    assert counts["batch"] == 12  # started over
    assert "saved by a run with other parameters, inputs or code: not used" in caplog.text
    assert state_files() == old  # the other run's state is left for the user to delete
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    distill(fresh / "run", cfg=distill_cfg(lr=0.04))
    assert (tmp_path / "run" / "student.pt").read_bytes() == (
        fresh / "run" / "student.pt"
    ).read_bytes()


def test_changed_code_or_teacher_changes_the_key(tmp_path, monkeypatch):
    from bmtard.training import stage as training_stage

    keys = []
    real = training_stage.state_key
    monkeypatch.setattr(training_stage, "state_key", lambda *a: keys.append(real(*a)) or keys[-1])

    def no_training(*a, **k):
        raise Crash

    monkeypatch.setattr(training_stage, "fit", no_training)
    for edit in ("none", "none", "code", "teacher"):
        if edit == "code":
            monkeypatch.setattr(training_stage, "loaded_code_sha256", lambda: "0" * 64)
        if edit == "teacher":
            robust = tmp_path / "run" / "robust.pt"
            raw = torch.load(robust, weights_only=True)
            raw["state_dict"]["linear.bias"] += 1
            torch.save(raw, robust)
        with pytest.raises(Crash):
            distill(tmp_path / "run")
    assert keys[0] == keys[1] and len(set(keys)) == 3


def test_damaged_state_is_reported_and_ignored(tmp_path, monkeypatch, reference, caplog):
    crash_at(monkeypatch, "batch", 6)
    with pytest.raises(Crash):
        distill(tmp_path / "run")
    (path,) = state_files()
    path.write_bytes(path.read_bytes()[:1000])
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        distill(tmp_path / "run")
    assert "ignoring the damaged training state" in caplog.text
    assert (tmp_path / "run" / "student.pt").read_bytes() == reference[0]


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_state(tmp_path, monkeypatch):
    real = BMTARD.batch_loss
    calls = {"n": 0}

    def poisoned(self, model, x, y):
        loss, logs = real(self, model, x, y)
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, batch 2
            logs = {**logs, "loss_adv": torch.tensor(float("nan"))}
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(BMTARD, "batch_loss", poisoned)
    with pytest.raises(TrainingError) as err:
        distill(tmp_path / "run", run=run_cfg(save_every_minutes=10000.0))
    (path,) = state_files()
    assert str(err.value) == (
        f"distill: epoch 2, batch 2: non-finite loss_adv (nan); the state after epoch 1 "
        f"({path}) is kept; lower distill.optim.lr (now 0.05)"
    )
    assert not (tmp_path / "run" / "student.pt").exists()


def test_out_of_memory_names_the_batch_size(tmp_path, monkeypatch):
    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(BMTARD, "batch_loss", oom)
    with pytest.raises(TrainingError) as err:
        distill(tmp_path / "run")
    assert str(err.value) == (
        "distill: epoch 1, batch 1: out of memory; lower distill.optim.batch_size (now 16)"
    )


def test_full_disk_at_the_final_save_keeps_the_trained_state(tmp_path, monkeypatch, reference):
    from bmtard.training import stage as training_stage

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training_stage, "save_model", full)
    with pytest.raises(BmtardError) as err:
        distill(tmp_path / "run")
    (path,) = state_files()
    out = tmp_path / "run" / "student.pt"
    assert str(err.value) == (
        f"distill: cannot write {out} ([Errno 28] No space left on device); the trained state "
        f"is kept in {path}: free space and run the same command again (it writes the outputs "
        "without training again)"
    )
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    counts = crash_at(monkeypatch, "never", 1)
    distill(tmp_path / "run")
    assert counts.get("batch", 0) == 0  # no training, only the outputs
    assert out.read_bytes() == reference[0]
    assert curves(tmp_path / "run") == reference[1]


def test_too_little_disk_is_refused_before_any_output(tmp_path, monkeypatch):
    from bmtard.core import outputs

    monkeypatch.setattr(outputs, "free_bytes", lambda path: 1000)
    with pytest.raises(BmtardError, match=r"^distill: 0 MB free where its model goes .* needed; "):
        distill(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["clean.pt", "robust.pt"]


def test_last_good_outputs_are_kept_outside_the_engines_outputs(tmp_path, reference):
    distill(tmp_path / "run")
    kept = tmp_path / ".cache" / "train" / "last-good"
    rel = (tmp_path / "run").relative_to(tmp_path)
    assert (kept / rel / "student.pt").read_bytes() == reference[0]
    assert (kept / rel / "live" / "plots" / "metrics" / "tau_adv.tsv").is_file()
    assert list((kept / rel / "tb").glob("events.out.tfevents.*"))
    (tmp_path / "run" / "student.pt").unlink()  # as Snakemake does before a rerun
    assert (kept / rel / "student.pt").read_bytes() == reference[0]


def test_without_state_dir_nothing_is_saved(tmp_path, monkeypatch):
    crash_at(monkeypatch, "batch", 6)
    with pytest.raises(Crash):
        distill(tmp_path / "run", run=run_cfg(state_dir=None))
    assert not (tmp_path / ".cache").exists()


@pytest.mark.parametrize(("point", "n"), [("batch", 3), ("state_write", 5)])
def test_robust_teacher_resumes_to_identical_bytes(tmp_path, monkeypatch, point, n):
    cfg = RobustTeacherConfig(
        arch="preact_resnet18",
        width=WIDTH,
        attack=TrainAttackConfig(steps=1),
        optim=OptimConfig(epochs=2, batch_size=16, lr=0.05, milestones=[1]),
        monitor=monitor_cfg(pgd_steps=1),
    )

    def train(folder):
        run = run_cfg()
        device = runtime.setup(run)
        out = Outputs(folder / "robust.pt", folder / "live", folder / "tb")
        train_robust_teacher(run, cfg, DATA, device, out)
        return out.model.read_bytes(), curves(folder)

    monkeypatch.chdir(tmp_path / "..")
    ref = train(tmp_path / "ref")
    monkeypatch.chdir(tmp_path)
    crash_at(monkeypatch, point, n)
    with pytest.raises(Crash):
        train(tmp_path / "run")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert train(tmp_path / "run") == ref


def test_state_holds_everything_named_in_one_structure(tmp_path, monkeypatch):
    """The saved state has every part: model, optimizer momentum, B-MTARD's balance, position,
    each random generator, the selection and the curves so far."""
    crash_at(monkeypatch, "batch", 6)
    with pytest.raises(Crash):
        distill(tmp_path / "run")
    (path,) = state_files()
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "bmtard.training-state/1"
    assert raw["progress"]["epoch"] == 1 and raw["progress"]["batch"] == 1
    assert set(raw["progress"]["sums"]) == {"loss", "loss_adv", "loss_nat"}
    assert all("momentum_buffer" in s for s in raw["optimizer"]["state"].values())
    assert set(raw["method"]) >= {"tau_adv", "tau_nat", "w_adv", "w_nat", "l0_adv", "l0_nat"}
    assert torch.isfinite(raw["method"]["l0_adv"])  # the reference losses are set
    # the loader's draws are made again from (seed, epoch): its position is all it needs
    assert raw["loader"] == {"epoch": 2, "position": 1}
    assert set(raw["rng"]) == {"torch_cpu", "torch_cuda", "numpy", "python"}
    assert raw["selection"]["best_epoch"] == 1 and raw["selection"]["weights"] is not None
    assert [h["step"] for h in raw["history"]] == [1]
    assert dataclasses.is_dataclass(StateStore(".cache/train", "distill", raw["key"]).load())
