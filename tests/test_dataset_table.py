"""data.dataset: one table of datasets, whose defaults fill the nulls of params.yaml (the paper's
student and teachers, the CIFAR-100 KL scale), and the KL scale in the methods' losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_baselines import ATTACK, T2, Constant, S, T, X, Y, kl_official, softmax

from bmtard.config import dataset_table, method_table
from bmtard.config import schema as config
from bmtard.config.schema import (
    CleanTeacherConfig,
    DistillConfig,
    MonitorConfig,
    OptimConfig,
    RobustTeacherConfig,
    RunConfig,
    TrainAttackConfig,
)
from bmtard.data.splits import Split
from bmtard.data.stage_data import StageData
from bmtard.methods.balance import MTARDWeights
from bmtard.methods.mtard import MTARD
from bmtard.methods.rslad import RSLAD
from bmtard.models import ARCHS
from bmtard.models.checkpoint import load_model
from bmtard.runtime import device as runtime
from bmtard.training.distill import run_distill
from bmtard.training.stage import Outputs
from bmtard.training.teachers import train_clean_teacher

from training_helpers import WIDTH, teachers


def test_the_table_is_what_config_allows():
    assert config.DATASETS == dataset_table.NAMES == ("cifar10", "cifar100", "tiny_imagenet")
    for d in dataset_table.DATASETS:
        assert {d.student, d.clean_teacher, d.robust_teacher} <= set(ARCHS), d.name
    sizes = {d.name: (d.num_classes, d.image_size) for d in dataset_table.DATASETS}
    assert sizes == {"cifar10": (10, 32), "cifar100": (100, 32), "tiny_imagenet": (200, 64)}
    with pytest.raises(ValueError, match="unknown dataset 'svhn': allowed are cifar10, "):
        dataset_table.dataset("svhn")


def _nulls() -> DistillConfig:
    return DistillConfig(arch=None, kl_scale=None)


@pytest.mark.parametrize("method", method_table.NAMES)
def test_kl_scale_null_is_the_official_convention(method):
    """x 10 on CIFAR-100 for the methods built on the mean-over-classes KL helper (RSLAD's README,
    MTARD's ECCV CIFAR-100 script; CIARD uses that helper, and its CIFAR-100 factor is ours, as it
    released no CIFAR-100 code); ARD's code has no such factor, nor AdaAD's, DGAD's or PeerAiD's
    (their reductions are their own); 1 elsewhere."""
    cfg = dataclasses.replace(_nulls(), method=method)
    on = {d: cfg.resolved(d).kl_scale for d in dataset_table.NAMES}
    ten = method in ("rslad", "mtard", "bmtard", "ciard")
    assert on == {"cifar10": 1.0, "cifar100": 10.0 if ten else 1.0, "tiny_imagenet": 1.0}
    given = dataclasses.replace(cfg, kl_scale=2.5)
    assert given.resolved("cifar100").kl_scale == 2.5


def test_null_archs_are_the_datasets_models_and_names_override_them():
    for d in dataset_table.DATASETS:
        assert _nulls().resolved(d.name).arch == d.student
        assert CleanTeacherConfig(arch=None).resolved(d.name).arch == d.clean_teacher
        assert RobustTeacherConfig(arch=None).resolved(d.name).arch == d.robust_teacher
    assert dataset_table.dataset("cifar100").robust_teacher == "wrn70_16"
    assert DistillConfig(arch="mobilenet_v2").resolved("cifar10").arch == "mobilenet_v2"
    assert RobustTeacherConfig(arch="wrn34_10").resolved("cifar100").arch == "wrn34_10"
    resolved = DistillConfig(kl_scale=1.0).resolved("cifar10")
    assert resolved.resolved("cifar10") is resolved  # nothing left to fill


def test_rslad_kl_scale_multiplies_both_terms():
    plain, _ = RSLAD(Constant(T).eval(), ATTACK).batch_loss(Constant(S), X, Y)
    loss, logs = RSLAD(Constant(T).eval(), ATTACK, kl_scale=10.0).batch_loss(Constant(S), X, Y)
    kl = kl_official(softmax(T), S)
    assert logs["loss_adv"].item() == pytest.approx(10 * kl, rel=1e-6)
    assert logs["loss_nat"].item() == pytest.approx(10 * kl, rel=1e-6)
    assert loss.item() == pytest.approx(10 * plain.item(), rel=1e-6)


def test_mtard_kl_scale_scales_the_losses_not_the_weights():
    """As the ECCV CIFAR-100 script: 10 * mean(...) for both terms, before the weight update
    (whose relative losses L / L0 the factor leaves unchanged)."""
    runs = {}
    for scale in (1.0, 10.0):
        w = MTARDWeights.start(lr=0.1)
        m = MTARD(Constant(T).eval(), Constant(T2).eval(), ATTACK, w, kl_scale=scale)
        logs = [m.batch_loss(Constant(s), X, Y)[1] for s in (S, T2, T)]
        runs[scale] = (logs, w.w_nat.item())
    (one, w1), (ten, w10) = runs[1.0], runs[10.0]
    assert w10 == pytest.approx(w1, rel=1e-6) and w1 != 0.5
    for a, b in zip(one, ten, strict=True):
        assert b["loss_adv"].item() == pytest.approx(10 * a["loss_adv"].item(), rel=1e-6)
        assert b["loss_nat"].item() == pytest.approx(10 * a["loss_nat"].item(), rel=1e-6)
    l_adv, l_nat = kl_official(softmax(T), S), kl_official(softmax(T2), S)
    assert ten[0]["loss"].item() == pytest.approx(5 * l_adv + 5 * l_nat, rel=1e-6)


def _data(dataset: str, n_train: int = 40, n_test: int = 20) -> StageData:
    """Random images of ``dataset``'s size and classes, with a manifest as the download stage's."""
    spec = dataset_table.dataset(dataset)
    rng = np.random.default_rng(0)
    size = spec.image_size

    def split(n: int) -> Split:
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
        return Split(images, rng.integers(0, spec.num_classes, size=n).astype(np.int64))

    manifest = {"dataset": dataset, "num_classes": spec.num_classes, "splits": {}}
    return StageData(split(n_train), split(n_test), manifest)


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """dvclive opens the DVC/Git repo around the working directory: keep it away from this one."""
    monkeypatch.chdir(tmp_path)


def _tiny_optim() -> OptimConfig:
    return OptimConfig(epochs=1, batch_size=20, lr=0.05, milestones=[1])


def _monitor() -> MonitorConfig:
    return MonitorConfig(every=1, dense_from=1, n_images=20, batch_size=20, pgd_steps=1)


def test_cifar100_student_takes_the_datasets_defaults(tmp_path):
    """With nulls, a CIFAR-100 B-MTARD student is the dataset's ResNet-18 with the KL x 10, and
    its record says so."""
    clean, robust = teachers(tmp_path, 100, 100)
    cfg = DistillConfig(
        arch=None, kl_scale=None, width=WIDTH, optim=_tiny_optim(), monitor=_monitor(),
        attack=TrainAttackConfig(steps=1, init=None),
    )  # fmt: skip
    run = RunConfig(seed=0, device="cpu")
    out = Outputs(tmp_path / "s.pt", tmp_path / "live", tmp_path / "tb")
    run_distill(run, cfg, _data("cifar100"), runtime.setup(run), clean, robust, out)
    _, info = load_model(out.model)
    assert (info.spec.arch, info.spec.num_classes) == ("resnet18", 100)
    assert info.record.params["kl_scale"] == 10.0
    assert info.record.params["arch"] == "resnet18"


def test_tiny_imagenet_teacher_trains_at_64(tmp_path):
    """A 64 x 64, 200-class teacher with a null arch: the dataset's (ResNet-56), trained."""
    cfg = CleanTeacherConfig(arch=None, width=WIDTH, optim=_tiny_optim(), monitor=_monitor())
    run = RunConfig(seed=0, device="cpu")
    out = Outputs(tmp_path / "t.pt", tmp_path / "live", tmp_path / "tb")
    train_clean_teacher(run, cfg, _data("tiny_imagenet"), runtime.setup(run), out)
    model, info = load_model(out.model)
    assert (info.spec.arch, info.spec.num_classes) == ("resnet56", 200)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 200)
