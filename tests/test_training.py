"""The training loop, checkpoint selection, the teacher and distillation stages, and the
adversarial training methods, on tiny in-memory data and tiny models (CPU, seconds)."""

import copy
import csv
import dataclasses
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import (
    CleanTeacherConfig,
    DistillConfig,
    OptimConfig,
    RobustTeacherConfig,
    RunConfig,
    TrainAttackConfig,
    to_dict,
)
from bmtard.core.errors import CheckpointError, TrainingError
from bmtard.core.io import sha256_file
from bmtard.core.provenance import code_version
from bmtard.data.splits import Split
from bmtard.data.stage_data import StageData
from bmtard.methods.contract import Method
from bmtard.methods.sat import PGDAT
from bmtard.methods.standard import Standard
from bmtard.methods.trades import TRADES
from bmtard.models import build_model
from bmtard.models.checkpoint import ModelSpec, TrainingRecord, load_model
from bmtard.runtime import device as runtime
from bmtard.training.distill import run_distill
from bmtard.training.loop import LossLimit, Parts, fit, make_optimizer
from bmtard.training.selection import Selection
from bmtard.training.stage import Outputs, loss_limit, train_and_save
from bmtard.training.teachers import train_clean_teacher, train_robust_teacher
from bmtard.training.tracking import Tracker

from conftest import TinyNet
from training_helpers import WIDTH, monitor_cfg, teachers, tiny_data

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """dvclive opens the DVC/Git repo around the working directory: keep it away from this one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def data() -> StageData:
    return tiny_data()


def _tracker(tmp_path, name: str = "stage") -> Tracker:
    return Tracker(tmp_path / name / "live", tmp_path / name / "tb")


def _outputs(tmp_path, out, name: str | None = None) -> Outputs:
    name = name or out.stem
    return Outputs(out, tmp_path / name / "live", tmp_path / name / "tb")


def _tsv(live_dir, name: str) -> dict[int, float]:
    with open(live_dir / "plots" / "metrics" / f"{name}.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {int(r["step"]): float(r[name]) for r in rows}


def _accuracy(model: nn.Module, split: Split) -> float:
    """Clean accuracy in %, computed here independently of bmtard.evaluation.accuracy."""
    x = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    return 100.0 * int((pred == torch.from_numpy(split.labels)).sum()) / len(split)


_mon = monitor_cfg


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- fit


class ListBatches:
    """Two fixed batches per epoch (3 and 1 images); x[:, 0] carries the value to log."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.data = [
            (torch.full((3, 1), 1.0), torch.zeros(3, dtype=torch.long)),
            (torch.full((1, 1), 5.0), torch.zeros(1, dtype=torch.long)),
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return 2


class Scripted(Method):
    """loss = -sum(w): the gradient is -1, so plain SGD adds exactly lr to w per step."""

    def __init__(self, nan_at_call: int | None = None, bad: float = float("nan")) -> None:
        self.calls: list[int] = []  # the epoch (from start_epoch) of each batch_loss call
        self.epoch = 0
        self.nan_at_call = nan_at_call
        self.bad = bad

    def start_epoch(self, epoch):
        self.epoch = epoch

    def batch_loss(self, model, x, y):
        self.calls.append(self.epoch)
        loss = -model.weight.sum()
        if len(self.calls) == self.nan_at_call:
            loss = loss * self.bad
        return loss, {"a": x[0, 0].detach(), "loss": loss.detach()}

    def status(self):
        return {"calls": float(len(self.calls))}


def _linear() -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    return model


def test_fit_lr_schedule_metrics_and_on_epoch():
    model, method, batches = _linear(), Scripted(), ListBatches()
    cfg = OptimConfig(
        epochs=4, batch_size=3, lr=0.1, momentum=0.0, weight_decay=0.0, milestones=[1, 3],
        gamma=0.5,
    )  # fmt: skip
    monitored: list[int] = []
    seen: list[tuple[int, dict, float]] = []

    def monitor(epoch):
        monitored.append(epoch)
        return {"clean_acc": 10.0 * epoch} if epoch % 2 == 0 else None

    def on_epoch(epoch, metrics):
        seen.append((epoch, dict(metrics), model.weight.item()))

    parts = Parts(model, method, batches, make_optimizer(model, cfg))
    fit(parts, cfg, section="t", monitor=monitor, on_epoch=on_epoch)

    lrs = [0.1, 0.1 * 0.5, 0.1 * 0.5, 0.1 * 0.5**2]  # milestones 1 and 3: decay after them
    assert [e for e, _, _ in seen] == [1, 2, 3, 4]
    assert batches.epochs == [1, 2, 3, 4] and monitored == [1, 2, 3, 4]
    assert [m["lr"] for _, m, _ in seen] == pytest.approx(lrs, rel=1e-12)
    # the optimizer really used that lr: w grows by lr per batch (2 batches per epoch)
    assert [w for _, _, w in seen] == pytest.approx([0.2, 0.3, 0.4, 0.45], rel=1e-6)
    assert method.calls == [1, 1, 2, 2, 3, 3, 4, 4]  # start_epoch before each epoch's batches
    for epoch, metrics, _ in seen:
        assert metrics["a"] == pytest.approx(2.0)  # (3 * 1 + 1 * 5) / 4: weighted by batch size
        assert metrics["calls"] == 2.0 * epoch  # the method's status after the epoch
        if epoch % 2 == 0:
            assert metrics["clean_acc"] == 10.0 * epoch
        else:
            assert "clean_acc" not in metrics
    assert set(seen[0][1]) == {"a", "loss", "calls", "lr"}


@pytest.mark.parametrize(
    ("call", "bad", "word"), [(1, float("nan"), "nan"), (4, float("inf"), "inf")]
)
def test_fit_stops_on_a_non_finite_loss(call, bad, word):
    """The step does not wait for the device: the bad value is remembered there and read at the
    epoch's end (or every CHECK_EVERY steps, or before a save); no later epoch is judged."""
    model, method = _linear(), Scripted(nan_at_call=call, bad=bad)
    cfg = OptimConfig(epochs=3, lr=0.1, momentum=0.0, weight_decay=0.0, milestones=[])
    seen = []
    epoch = (call + 1) // 2
    batch = 2 - call % 2
    want = (
        rf"^mine: epoch {epoch}, batch {batch}: non-finite loss \(-?{word}\); "
        r"lower mine\.optim\.lr \(now 0\.1\)$"
    )
    with pytest.raises(TrainingError, match=want):
        fit(Parts(model, method, ListBatches(), make_optimizer(model, cfg)), cfg, section="mine",
            monitor=lambda e: None, on_epoch=lambda e, m: seen.append(e))  # fmt: skip
    assert seen == list(range(1, epoch))  # stopped before that epoch was monitored or logged
    assert len(method.calls) == 2 * epoch  # the rest of that epoch ran, nothing after it


def test_fit_reads_the_guard_before_every_save():
    """A save due right after a bad step is refused: the saved state is never past it."""

    class EverySave:
        def __init__(self):
            self.saved = []

        def due(self):
            return True

        def save(self, progress):
            self.saved.append((progress.epoch, progress.batch))
            return f"the state at {progress.batch}"

    model, method, saver = _linear(), Scripted(nan_at_call=3), EverySave()
    cfg = OptimConfig(epochs=3, lr=0.1, momentum=0.0, weight_decay=0.0, milestones=[])
    with pytest.raises(TrainingError, match=r"epoch 2, batch 1: .* the state at 0 is kept"):
        fit(Parts(model, method, ListBatches(), make_optimizer(model, cfg)), cfg, section="s",
            monitor=lambda e: None, on_epoch=lambda e, m: None, saver=saver)  # fmt: skip
    assert saver.saved == [(0, 1), (0, 2), (1, 0)]  # batch 1 and 2 of epoch 1, its end


class Losses(Method):
    """Returns the scripted ``losses`` in turn (with the gradient of w, so that SGD steps)."""

    def __init__(self, losses: list[float]) -> None:
        self.losses = losses
        self.calls = 0

    def batch_loss(self, model, x, y):
        value = self.losses[self.calls % len(self.losses)]
        self.calls += 1
        loss = model.weight.sum() * 0 + value
        return loss, {"loss": loss.detach()}

    def status(self):
        return {}


LIMIT = LossLimit(1000 * math.log(10), "1000 x ln(10 classes), run.divergence_factor")


def test_a_diverged_loss_stops_like_a_non_finite_one():
    """A finite loss above the limit (here 1000 x ln 10 = 2303) stops the run at the end of that
    epoch, with one line that names the step, the value, the rule and the lr to lower."""
    model, method = _linear(), Losses([2.3, 2.2, 2.0, 8.4e16])
    cfg = OptimConfig(epochs=3, lr=100.0, momentum=0.0, weight_decay=0.0, milestones=[])
    seen = []
    with pytest.raises(TrainingError) as e:
        fit(Parts(model, method, ListBatches(), make_optimizer(model, cfg)), cfg, section="mine",
            monitor=lambda e: None, on_epoch=lambda e, m: seen.append(e), limit=LIMIT)  # fmt: skip
    assert str(e.value) == (
        "mine: epoch 2, batch 2: the loss diverged (8.4e+16, above 2303 = 1000 x ln(10 classes), "
        "run.divergence_factor); lower mine.optim.lr (now 100)"
    )
    assert seen == [1]


def test_a_loss_that_rises_within_the_limit_goes_on():
    """A loss that rises a hundredfold (e.g. TRADES' KL term growing from 0) is no divergence."""
    model, method = _linear(), Losses([0.01, 0.1, 1.0, 100.0, 50.0, 2.0])
    cfg = OptimConfig(epochs=3, lr=0.1, momentum=0.0, weight_decay=0.0, milestones=[])
    seen = []
    fit(Parts(model, method, ListBatches(), make_optimizer(model, cfg)), cfg, section="t",
        monitor=lambda e: None, on_epoch=lambda e, m: seen.append(e), limit=LIMIT)  # fmt: skip
    assert seen == [1, 2, 3]


def test_the_divergence_limit_follows_the_parameter():
    assert loss_limit(RunConfig(), 10).value == pytest.approx(2302.585, rel=1e-6)
    assert loss_limit(RunConfig(divergence_factor=10.0), 100).value == pytest.approx(46.0517)
    assert loss_limit(RunConfig(divergence_factor=None), 10) is None


# --------------------------------------------------------------------------- Selection


def test_selection_best_keeps_highest_mean_of_clean_and_pgd():
    sel = Selection("best")
    e1 = {"clean_acc": 10.0, "pgd_acc": 0.0, "lr": 0.1}  # score 5
    assert sel.consider(1, 6, e1) is True
    e1["clean_acc"] = 99.0  # the selection keeps its own copy
    assert sel.consider(2, 6, {"loss": 1.0}) is False  # not monitored
    assert sel.consider(3, 6, {"clean_acc": 4.0, "pgd_acc": 6.0}) is False  # tie: keep epoch 1
    assert (sel.best_epoch, sel.best_score) == (1, 5.0)
    assert sel.best_metrics == {"clean_acc": 10.0, "pgd_acc": 0.0, "lr": 0.1}
    assert sel.consider(4, 6, {"clean_acc": 20.0, "pgd_acc": 1.0}) is True  # 10.5
    assert sel.consider(5, 6, {"clean_acc": 30.0, "pgd_acc": 0.0}) is True  # 15 (> 10.5)
    assert sel.consider(6, 6, {"clean_acc": 14.0, "pgd_acc": 16.0}) is False  # 15: tie
    assert (sel.best_epoch, sel.best_score) == (5, 15.0)


def test_selection_best_without_pgd_uses_clean_accuracy():
    sel = Selection("best")
    assert sel.consider(1, 3, {"clean_acc": 40.0}) is True
    assert sel.consider(2, 3, {"clean_acc": 30.0, "pgd_acc": 49.0}) is False  # 39.5 < 40
    assert sel.consider(3, 3, {"clean_acc": 41.0}) is True
    assert (sel.best_epoch, sel.best_score, sel.best_metrics) == (3, 41.0, {"clean_acc": 41.0})


def test_selection_last_picks_the_final_epoch_only():
    sel = Selection("last")
    assert sel.consider(1, 3, {"clean_acc": 90.0, "pgd_acc": 90.0}) is False
    assert sel.consider(2, 3, {"clean_acc": 95.0}) is False
    assert sel.best_epoch is None
    assert sel.consider(3, 3, {"clean_acc": 1.0, "loss": 2.0}) is True
    assert sel.best_epoch == 3 and sel.best_metrics == {"clean_acc": 1.0, "loss": 2.0}
    assert Selection("last").consider(2, 2, {"loss": 1.0}) is True  # no monitor needed


# --------------------------------------------------------------------------- teachers


def _clean_cfg(**kw) -> CleanTeacherConfig:
    return CleanTeacherConfig(
        arch="resnet18",
        width=WIDTH,
        optim=OptimConfig(epochs=2, batch_size=32, lr=0.05, milestones=[1]),
        monitor=_mon(),
        **kw,
    )


def _robust_cfg(**kw) -> RobustTeacherConfig:
    return RobustTeacherConfig(
        arch="preact_resnet18",
        width=WIDTH,
        attack=TrainAttackConfig(steps=1),
        optim=OptimConfig(epochs=2, batch_size=32, lr=0.05, milestones=[1]),
        monitor=_mon(pgd_steps=1),
        **kw,
    )


def _train_teacher(kind, seed, data, out, tmp_path, cfg=None):
    run = RunConfig(seed=seed, device="cpu")
    device = runtime.setup(run)
    if kind == "clean":
        train_clean_teacher(run, cfg or _clean_cfg(), data, device, _outputs(tmp_path, out))
    else:
        train_robust_teacher(run, cfg or _robust_cfg(), data, device, _outputs(tmp_path, out))


@pytest.mark.parametrize("kind", ["clean", "robust"])
def test_teacher_training_is_deterministic_per_seed(tmp_path, data, kind):
    paths = [tmp_path / f"{kind}_{i}.pt" for i in range(3)]
    for path, seed in zip(paths, (0, 0, 1), strict=True):
        _train_teacher(kind, seed, data, path, tmp_path)
    a, b, c = (_state(p) for p in paths)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    floats = [k for k in a if a[k].is_floating_point()]
    assert any(not torch.equal(a[k], c[k]) for k in floats)
    assert not torch.equal(a["linear.weight"], c["linear.weight"])
    # the file holds the trained model, not the initial one
    runtime.setup(RunConfig(seed=0))
    init = build_model("resnet18" if kind == "clean" else "preact_resnet18", 10, WIDTH)
    assert not torch.equal(init.state_dict()["linear.weight"], a["linear.weight"])


def test_trained_teacher_meta_and_logs(tmp_path, data):
    out = tmp_path / "clean.pt"
    cfg = _clean_cfg()
    _train_teacher("clean", 0, data, out, tmp_path, cfg)
    model, info = load_model(out)
    assert info.spec == ModelSpec("resnet18", WIDTH, 10)
    rec = info.record
    assert rec.stage == "clean_teacher" and rec.source == "trained" and rec.method == "standard"
    assert rec.epoch == 2 and rec.selection == "last"
    assert rec.params == to_dict(cfg)
    assert rec.data == data.manifest["splits"]
    assert rec.code == code_version() and len(rec.code["package_sha256"]) == 64
    sm = rec.selected_metrics
    assert set(sm) == {"loss", "train_acc", "lr", "clean_acc"}
    assert sm["lr"] == pytest.approx(0.005)
    assert sm["clean_acc"] == _accuracy(model, data.test)
    live = tmp_path / "clean" / "live"
    assert set(_tsv(live, "clean_acc")) == {1, 2} and _tsv(live, "clean_acc")[2] == sm["clean_acc"]
    assert _tsv(live, "lr") == {1: pytest.approx(0.05), 2: pytest.approx(0.005)}
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["selected_epoch"] == 2 and summary["selection"] == "last"
    assert summary["selected_clean_acc"] == sm["clean_acc"]


def test_train_and_save_seed_drives_shuffle_and_augmentation(tmp_path, data):
    """Same initial weights: the same seed gives the same model, another seed another one."""
    spec = ModelSpec("resnet18", WIDTH, 10)
    torch.manual_seed(0)
    init = build_model("resnet18", 10, WIDTH)
    optim = OptimConfig(epochs=1, batch_size=32, lr=0.05, milestones=[])
    states, sels = [], []
    for i, seed in enumerate((0, 0, 1)):
        out = tmp_path / f"s{i}.pt"
        sel = train_and_save(
            copy.deepcopy(init), Standard(), spec, data, section="t", optim=optim,
            monitor=_mon(), selection="last", run=RunConfig(seed=seed), device=CPU,
            outputs=_outputs(tmp_path, out), record=TrainingRecord(stage="t", method="m"),
        )  # fmt: skip
        assert sel.best_epoch == 1
        states.append(_state(out))
        sels.append(sel)
    a, b, c = states
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["linear.weight"], c["linear.weight"])
    _, info = load_model(tmp_path / "s0.pt")
    assert info.record == TrainingRecord(
        stage="t", method="m", epoch=1, selection="last", selected_metrics=sels[0].best_metrics,
        run={k: v for k, v in to_dict(RunConfig(seed=0)).items()
             if k not in ("save_every_minutes", "state_dir", "divergence_factor")},
        key=info.record.key,
    )  # fmt: skip
    assert len(info.record.key) == 64  # what made it (bmtard.training.stage.result_key)


# --------------------------------------------------------------------------- imported teacher


def _trained_looking(arch: str, width: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, 10, width).train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # BN buffers away from their defaults
    return model.eval()


@pytest.mark.parametrize("kind", ["clean", "robust"])
def test_teacher_from_checkpoint_is_imported_checked_and_saved(tmp_path, data, kind):
    arch = "resnet18" if kind == "clean" else "preact_resnet18"
    src = _trained_looking(arch, WIDTH, seed=3)
    plain = tmp_path / "published.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, plain)
    cfg = (_clean_cfg if kind == "clean" else _robust_cfg)(checkpoint=str(plain))
    out = tmp_path / "teacher.pt"
    _train_teacher(kind, 0, data, out, tmp_path, cfg)

    model, info = load_model(out)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k  # imported as is, not trained
    meta = info.record
    assert meta.stage == f"{kind}_teacher"
    assert meta.source == str(plain)
    assert meta.source_sha256 == sha256_file(plain)
    assert meta.params == to_dict(cfg)
    assert meta.data == data.manifest["splits"] and meta.code == code_version()
    acc = _accuracy(src, data.test)
    sm = meta.selected_metrics
    assert sm["clean_acc"] == acc
    assert set(sm) == ({"clean_acc"} if kind == "clean" else {"clean_acc", "pgd_acc"})
    live = tmp_path / "teacher" / "live"
    assert _tsv(live, "clean_acc") == {0: acc}  # logged once, at step 0
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["source"] == "checkpoint" and summary["clean_acc"] == acc
    assert list((tmp_path / "teacher" / "tb").glob("events.out.tfevents.*"))


def test_teacher_checkpoint_that_does_not_fit_is_refused(tmp_path, data):
    plain = tmp_path / "wide.pth"
    torch.save(_trained_looking("resnet18", 0.125, seed=0).state_dict(), plain)
    out = tmp_path / "teacher.pt"
    with pytest.raises(CheckpointError) as err:
        _train_teacher("clean", 0, data, out, tmp_path, _clean_cfg(checkpoint=str(plain)))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{plain} does not fit resnet18: shape: conv1.weight (8, 3, 3, 3) vs ")
    assert "(4, 3, 3, 3)" in msg
    assert not out.exists()
    assert not (tmp_path / "teacher" / "live" / "plots").exists()  # nothing logged


# --------------------------------------------------------------------------- distillation


_teachers = teachers


def _distill_cfg(rule: str) -> DistillConfig:
    return DistillConfig(
        arch="resnet18",
        width=WIDTH,
        optim=OptimConfig(epochs=3, batch_size=32, lr=0.05, milestones=[2]),
        attack=TrainAttackConfig(steps=1),
        monitor=_mon(pgd_steps=1),  # epochs 1 and 3
        checkpoint=rule,
    )


@pytest.mark.parametrize("rule", ["best", "last"])
def test_distill_end_to_end(tmp_path, data, rule):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clean, robust = _teachers(tmp_path)
    cfg = _distill_cfg(rule)
    run = RunConfig(seed=0, device="cpu")
    out = tmp_path / "student.pt"
    device = runtime.setup(run)
    sel = run_distill(run, cfg, data, device, clean, robust, _outputs(tmp_path, out, "distill"))

    live, tb = tmp_path / "distill" / "live", tmp_path / "distill" / "tb"
    clean_acc, pgd_acc = _tsv(live, "clean_acc"), _tsv(live, "pgd_acc")
    assert set(clean_acc) == set(pgd_acc) == {1, 3}  # monitored epochs only
    for name in ("tau_adv", "tau_nat", "w_adv", "w_nat", "loss", "loss_adv", "loss_nat", "lr"):
        assert set(_tsv(live, name)) == {1, 2, 3}, name  # one row per epoch
    assert _tsv(live, "lr") == {1: 0.05, 2: 0.05, 3: pytest.approx(0.005)}
    # the uniform clean teacher has the higher entropy: tau_nat is lowered (clipped at 1), tau_adv
    # raised by tau_lr = 0.001 per batch (2 batches per epoch), times the lr decay after epoch 2
    assert _tsv(live, "tau_adv") == pytest.approx({1: 1.002, 2: 1.004, 3: 1.0042})
    assert _tsv(live, "tau_nat") == {1: 1.0, 2: 1.0, 3: 1.0}

    if rule == "last":
        epoch = 3
    else:  # the first epoch with the highest (clean + pgd) / 2
        scores = {e: (clean_acc[e] + pgd_acc[e]) / 2 for e in (1, 3)}
        epoch = 3 if scores[3] > scores[1] else 1
    assert sel.rule == rule and sel.best_epoch == epoch

    student, info = load_model(out)
    assert info.spec == ModelSpec("resnet18", WIDTH, 10)
    meta = info.record
    assert meta.stage == "distill" and meta.method == "bmtard"
    assert meta.epoch == epoch and meta.selection == rule
    assert meta.params == to_dict(cfg.resolved("cifar10"))  # the nulls filled in
    assert meta.code == code_version()
    assert meta.teachers == {
        "clean": {"arch": "resnet18", "sha256": sha256_file(clean), "source": "trained"},
        "robust": {"arch": "preact_resnet18", "sha256": sha256_file(robust), "source": "trained"},
    }
    assert meta.data == data.manifest["splits"]
    sm = meta.selected_metrics
    assert set(sm) == {
        "loss", "loss_adv", "loss_nat", "tau_adv", "tau_nat", "w_adv", "w_nat", "lr",
        "clean_acc", "pgd_acc",
    }  # fmt: skip
    assert sm == sel.best_metrics
    for name in ("tau_adv", "tau_nat", "w_adv", "w_nat", "loss_adv", "loss_nat", "lr"):
        assert sm[name] == pytest.approx(_tsv(live, name)[epoch]), name
    assert sm["clean_acc"] == clean_acc[epoch] and sm["pgd_acc"] == pgd_acc[epoch]
    assert sm["w_adv"] + sm["w_nat"] == pytest.approx(1.0)
    assert 1.0 <= sm["tau_adv"] <= 10.0 and 1.0 <= sm["tau_nat"] <= 10.0
    # the file holds that epoch's student
    assert _accuracy(student, data.test) == sm["clean_acc"]

    summary = json.loads((live / "metrics.json").read_text())
    assert summary["selected_epoch"] == epoch and summary["selection"] == rule
    assert summary["selected_clean_acc"] == sm["clean_acc"]
    assert summary["selected_pgd_acc"] == sm["pgd_acc"]

    events = list(tb.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert [s.step for s in acc.Scalars("tau_adv")] == [1, 2, 3]
    assert [s.step for s in acc.Scalars("pgd_acc")] == [1, 3]


def test_distill_keeps_its_finished_result(tmp_path, data, caplog):
    """The same distillation again (same key: parameters, inputs, code) trains nothing and leaves
    every output's bytes as they are; another parameter trains again."""
    clean, robust = _teachers(tmp_path)
    run = RunConfig(seed=0, device="cpu")
    out = tmp_path / "student.pt"
    outputs = _outputs(tmp_path, out, "distill")
    cfg = dataclasses.replace(_distill_cfg("last"), optim=OptimConfig(epochs=1, batch_size=32))
    assert run_distill(run, cfg, data, CPU, clean, robust, outputs) is not None
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "distill" in str(p))
    before = {p: p.read_bytes() for p in [out, *files]}
    with caplog.at_level(logging.INFO):
        assert run_distill(run, cfg, data, CPU, clean, robust, outputs) is None
    assert "is this run's finished result: kept" in caplog.text
    assert {p: p.read_bytes() for p in before} == before
    other = dataclasses.replace(cfg, optim=OptimConfig(epochs=1, batch_size=32, lr=0.05))
    assert run_distill(run, other, data, CPU, clean, robust, outputs) is not None
    assert out.read_bytes() != before[out]


@pytest.mark.parametrize("which", ["clean", "robust"])
def test_distill_refuses_teacher_with_other_number_of_classes(tmp_path, data, which):
    clean, robust = _teachers(
        tmp_path, clean_classes=5 if which == "clean" else 10,
        robust_classes=5 if which == "robust" else 10,
    )  # fmt: skip
    bad = clean if which == "clean" else robust
    out = tmp_path / "student.pt"
    run = RunConfig(seed=0, device="cpu")
    with pytest.raises(CheckpointError) as err:
        run_distill(run, _distill_cfg("last"), data, CPU, clean, robust, _outputs(tmp_path, out))
    assert (
        str(err.value) == f"{bad}: the {which} teacher of 5 classes, and the data has 10 (cifar10)"
    )
    assert not out.exists()


def test_tracker_rerun_replaces_curves(tmp_path):
    for run, epochs in ((0, (1, 2, 3)), (1, (1, 2))):
        with _tracker(tmp_path, "t") as tracker:
            for e in epochs:
                tracker.log(e, {"a": 10.0 * run + e})
            tracker.summary({"run": run})
    live = tmp_path / "t" / "live"
    assert _tsv(live, "a") == {1: 11.0, 2: 12.0}
    assert json.loads((live / "metrics.json").read_text()) == {"a": 12.0, "step": 2, "run": 1}
    assert len(list((tmp_path / "t" / "tb").glob("events.out.tfevents.*"))) == 1


# --------------------------------------------------------------------------- TRADES / PGD-AT


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(4)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def _bn_net() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(bn=True)
    with torch.no_grad():  # non-trivial BN statistics so eval and train modes differ
        model.train()(torch.rand(16, 3, 16, 16) * 2)
    return model.eval()


def _batches_tracked(model: TinyNet) -> int:
    return int(model.net[1].num_batches_tracked)


def _check_loss_and_grad(model, loss, logs, keys):
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) == keys
    assert logs["loss"] == pytest.approx(loss.item())
    assert model.training
    assert loss.requires_grad
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


ATTACK = TrainAttackConfig(eps=8.0, step_size=2.0, steps=3)


@pytest.mark.parametrize("start_mode", ["eval", "train"])
def test_pgd_at_batch_loss(start_mode):
    model, (x, y) = _bn_net(), _batch()
    ref = copy.deepcopy(model)
    model.train(start_mode == "train")
    before = _batches_tracked(model)
    torch.manual_seed(7)
    loss, logs = PGDAT(ATTACK).batch_loss(model, x, y)
    assert _batches_tracked(model) == before + 1  # one train-mode forward; crafting in eval mode
    _check_loss_and_grad(model, loss, logs, {"loss", "train_adv_acc"})

    # reference: PGD-CE with BN frozen (eval), from the same Gaussian start, then CE in train mode
    torch.manual_seed(7)
    ref.eval()
    x_adv = pgd_ce(ref, x, y, eps=8 / 255, step_size=2 / 255, steps=3, init="gaussian")
    ref.train()
    logits = ref(x_adv)
    want = F.cross_entropy(logits, y)
    torch.testing.assert_close(loss.detach(), want.detach())
    want.backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    acc = 100.0 * float((logits.argmax(1) == y).float().mean())
    assert logs["train_adv_acc"] == pytest.approx(acc)
    clean = F.cross_entropy(ref(x), y).item()
    assert loss.item() != pytest.approx(clean, abs=1e-4)  # the loss is on x_adv, not x


def _trades_reference(model, x, y, beta, eps, step, steps):
    """The TRADES training loss as the official code writes it."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    for _ in range(steps):
        x_adv.requires_grad_()
        kl = F.kl_div(
            F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum"
        )
        (grad,) = torch.autograd.grad(kl, [x_adv])
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    model.train()
    logits = model(x)
    natural = F.cross_entropy(logits, y)
    robust = F.kl_div(
        F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1), reduction="sum"
    ) / len(x)
    return natural + beta * robust, natural, robust


@pytest.mark.parametrize("start_mode", ["eval", "train"])
def test_trades_batch_loss_matches_the_official_formula(start_mode):
    model, (x, y) = _bn_net(), _batch()
    ref = copy.deepcopy(model)
    model.train(start_mode == "train")
    before = _batches_tracked(model)
    torch.manual_seed(9)
    loss, logs = TRADES(ATTACK, beta=6.0).batch_loss(model, x, y)
    assert _batches_tracked(model) == before + 2  # x and x_adv in train mode only
    keys = {"loss", "loss_natural", "loss_robust", "train_acc"}
    assert logs["loss"] == pytest.approx(logs["loss_natural"] + 6.0 * logs["loss_robust"])
    assert logs["loss_robust"] > 0
    torch.manual_seed(9)
    want, natural, robust = _trades_reference(ref, x, y, 6.0, 8 / 255, 2 / 255, 3)
    torch.testing.assert_close(loss.detach(), want.detach())
    assert logs["loss_natural"] == pytest.approx(natural.item(), rel=1e-5)
    assert logs["loss_robust"] == pytest.approx(robust.item(), rel=1e-4)
    _check_loss_and_grad(model, loss, logs, keys)
    want.backward()  # the gradient flows through both sides of the KL, as in the official code
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_trades_with_beta_zero_is_clean_cross_entropy_in_train_mode():
    model, (x, y) = _bn_net(), _batch()
    loss, logs = TRADES(ATTACK, beta=0.0).batch_loss(model, x, y)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    ref = TinyNet(bn=True)
    ref.load_state_dict(params)
    ref.train()  # batch statistics: the running ones do not matter
    logits = ref(x)
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, y).detach())
    ref.eval()  # and it is not the eval-mode loss
    assert loss.item() != pytest.approx(F.cross_entropy(ref(x), y).item(), abs=1e-4)
    acc = 100.0 * float((logits.argmax(1) == y).float().mean())
    assert logs["train_acc"] == pytest.approx(acc)
    assert logs["loss_natural"] == pytest.approx(loss.item())
    _check_loss_and_grad(model, loss, logs, {"loss", "loss_natural", "loss_robust", "train_acc"})
