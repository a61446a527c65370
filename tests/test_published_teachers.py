"""The published teachers (bmtard/config/teacher_table.py), without their files.

Each architecture against its official definition: the fixtures in tests/official/ hold the
official state_dict's keys, shapes and dtypes, and the official logits on a fixed input with
seeded weights, in float64 (tests/official/make_fixtures.py says how they were made; RobustBench's
WideResNet and DMWideResNet, the reference AutoAttack's ResNet-18, MTARD's ResNet-56). Then every
entry's file in each layout it is published in, loaded key by key; the import by name through
the teacher stage (a missing file names where to get it and where to put it; a teacher far from
its published accuracy is one warning); the table itself against the configuration.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from bmtard.config import dataset_table, teacher_table
from bmtard.config.schema import CleanTeacherConfig, RobustTeacherConfig, RunConfig
from bmtard.core.errors import CheckpointError, ParamsError
from bmtard.core.io import sha256_file
from bmtard.models import ARCHS, build_model
from bmtard.models.checkpoint import extract_state_dict, load_model, load_state_dict_strict
from bmtard.runtime import device as runtime
from bmtard.training.stage import Outputs
from bmtard.training.teacher_import import (
    PGD_ABOVE_AA,
    allowed_gap,
    far_from_published,
    teacher_file,
)
from bmtard.training.teachers import train_clean_teacher, train_robust_teacher

from conftest import ROOT
from official.seeded import fixed_input, key_list, seeded_state
from training_helpers import monitor_cfg, tiny_data

OFFICIAL = ROOT / "tests" / "official"
FIXTURES = sorted(OFFICIAL.glob("*.json"))


@functools.cache
def fixture(arch: str, num_classes: int) -> dict:
    return json.loads((OFFICIAL / f"{arch}-{num_classes}.json").read_text())


def _classes(t: teacher_table.PublishedTeacher) -> int:
    return dataset_table.dataset(t.dataset).num_classes


# --------------------------------------------------------------------------- the definitions


def test_every_published_architecture_has_an_official_fixture() -> None:
    needed = {(t.arch, _classes(t)) for t in teacher_table.TEACHERS}
    have = {(json.loads(p.read_text())["arch"], json.loads(p.read_text())["num_classes"])
            for p in FIXTURES}  # fmt: skip
    assert needed == have


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_architecture_is_the_official_definition(path: Path) -> None:
    """The same keys, shapes and dtypes in the same order as the official state_dict, and, with
    the same seeded weights, the same logits (float64, every activation the official models of
    that family use) to 1e-10 of their size."""
    fx = json.loads(path.read_text())
    model = build_model(fx["arch"], fx["num_classes"], 1.0).double().eval()
    assert key_list(model.state_dict()) == fx["keys"]
    model.load_state_dict(seeded_state(fx["keys"]), strict=True)
    with torch.no_grad():
        ours = model(fixed_input())
    del model
    assert fx["logits"]
    for activation, logits in fx["logits"].items():
        official = torch.tensor(logits, dtype=torch.float64)
        scale = max(1.0, float(official.abs().max()))
        gap = float((ours - official).abs().max())
        assert gap <= 1e-10 * scale, (activation, gap, scale)
    assert ours.std() > 1e-3  # the fixture is not degenerate (every logit alike)


# --------------------------------------------------------------------------- the files


def laid_out(state: dict[str, torch.Tensor], layout: str) -> dict:
    """``state`` as a file of ``layout`` holds it (teacher_table.LAYOUTS)."""
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    if layout.startswith("nested"):
        return {"state_dict": state, "epoch": 99, "best_acc": 57.0}
    return state


def _marked(keys: list[list]) -> dict[str, torch.Tensor]:
    """A state_dict of ``keys`` that costs no memory: every entry one value (its index)
    broadcast to its shape."""
    out = {}
    for i, (name, shape, dtype) in enumerate(keys):
        kind = torch.float32 if dtype == "float" else torch.long
        out[name] = torch.tensor(float(i) if dtype == "float" else 0, dtype=kind).expand(shape)
    return out


@functools.cache
def _model(arch: str, num_classes: int) -> torch.nn.Module:
    return build_model(arch, num_classes, 1.0)


CASES = [
    pytest.param(t, layout, id=f"{t.dataset}-{t.name}-{layout}")
    for t in teacher_table.TEACHERS
    for layout in t.layouts
]


@pytest.mark.parametrize(("entry", "layout"), CASES)
def test_published_layout_loads_key_by_key(entry, layout) -> None:
    """Each entry's file, in each layout the table says it is published in, with the official
    keys: every tensor lands where its key says (strict: none missing, unexpected or of
    another shape)."""
    keys = fixture(entry.arch, _classes(entry))["keys"]
    state = extract_state_dict(laid_out(_marked(keys), layout), entry.name)
    model = _model(entry.arch, _classes(entry))
    load_state_dict_strict(model, state, entry.name, entry.arch)
    own = model.state_dict()
    for i, (name, _, dtype) in enumerate(keys):
        if dtype == "float":
            assert own[name].flatten()[0].item() == float(i), name


def test_layouts_are_the_tables() -> None:
    for t in teacher_table.TEACHERS:
        assert t.layouts and set(t.layouts) <= set(teacher_table.LAYOUTS), t.name
    probe = {"w": torch.zeros(1)}
    for layout in teacher_table.LAYOUTS:
        assert list(extract_state_dict(laid_out(probe, layout), "x")) == ["w"]


# --------------------------------------------------------------------------- the table


def test_table_names_architectures_datasets_and_sources() -> None:
    assert set(teacher_table.ARCHS) <= set(ARCHS)
    assert len(teacher_table.BY_KEY) == len(teacher_table.TEACHERS)  # (dataset, name) once
    for t in teacher_table.TEACHERS:
        assert t.dataset in dataset_table.NAMES and t.kind in ("robust", "standard"), t.name
        assert t.normalizes in (None, *dataset_table.NAMES), t.name
        assert t.source and t.reported_by and t.label, t.name
        assert t.clean is None or 0 < t.clean < 100
        assert t.autoattack is None or 0 <= t.autoattack < (t.clean or 100)
        if t.kind == "robust":
            assert t.autoattack is not None, t.name
    # a model that normalizes inside is one whose architecture does (RobustBench's DMWideResNet)
    for t in teacher_table.TEACHERS:
        assert (t.normalizes is not None) == (t.arch.startswith("dm_") or t.arch == "wrn70_16")
        if t.arch.startswith("dm_"):
            assert t.arch.endswith(t.normalizes), t.name


def test_the_issues_teachers_are_there() -> None:
    """The teachers the papers of methods/ distil from, on each dataset."""
    for dataset, name in (
        ("cifar10", "Zhang2019Theoretically"), ("cifar10", "Chen2021LTD_WRN34_10"),
        ("cifar10", "Chen2021LTD_WRN34_20"), ("cifar100", "Chen2021LTD_WRN34_10"),
        ("cifar10", "Wang2023Better_WRN-28-10"), ("cifar10", "Wang2023Better_WRN-70-16"),
        ("cifar100", "Wang2023Better_WRN-28-10"), ("cifar100", "Wang2023Better_WRN-70-16"),
        ("cifar10", "Cui2023Decoupled_WRN-28-10"), ("cifar100", "Cui2023Decoupled_WRN-28-10"),
        ("cifar10", "Gowal2021Improving_28_10_ddpm_100m"),
        ("cifar10", "Gowal2021Improving_70_16_ddpm_100m"), ("cifar100", "Gowal2020Uncovering"),
        ("cifar10", "Addepalli2021Towards_WRN34"), ("cifar10", "MTARD_ResNet56"),
        ("cifar10", "AutoAttack_ResNet18"),
    ):  # fmt: skip
        assert (dataset, name) in teacher_table.BY_KEY


def test_unknown_or_other_datasets_teacher_is_one_line() -> None:
    with pytest.raises(ParamsError) as err:
        teacher_table.teacher("Chen2021LTD_WRN34_20", "cifar100", "robust_teacher.published")
    msg = str(err.value)
    assert msg.startswith("robust_teacher.published = 'Chen2021LTD_WRN34_20': not a published ")
    assert "(it is a teacher of cifar10)" in msg and "Chen2021LTD_WRN34_10" in msg
    assert "\n" not in msg


def test_published_sets_the_architecture_at_width_one() -> None:
    cfg = RobustTeacherConfig(arch="wrn34_10", width=0.1, published="Chen2021LTD_WRN34_20")
    resolved = cfg.resolved("cifar10")
    assert (resolved.arch, resolved.width) == ("wrn34_20_nosub", 1.0)
    cfg = CleanTeacherConfig(arch=None, published="AutoAttack_ResNet18")
    assert cfg.resolved("cifar10").arch == "resnet18"


# --------------------------------------------------------------------------- the checks


def test_allowed_gap_shrinks_with_the_sample() -> None:
    assert allowed_gap(85.0, 10_000) == pytest.approx(1 + 300 * math.sqrt(0.85 * 0.15 / 1e4))
    assert allowed_gap(85.0, 10_000) < 2.1 < allowed_gap(85.0, 500)
    assert allowed_gap(100.0, 10) == 1.0


def test_far_from_published_says_what() -> None:
    ltd = teacher_table.teacher("Chen2021LTD_WRN34_20", "cifar10")
    assert far_from_published(ltd, {"clean_acc": 86.5, "pgd_acc": 61.0}, 10_000) == []
    far = far_from_published(ltd, {"clean_acc": 40.0, "pgd_acc": 10.0}, 10_000)
    assert len(far) == 2
    assert far[0].startswith("clean 40.00 % against the published 86.03 %")
    assert far[1].startswith("PGD-20 10.00 % below the published AutoAttack 57.71 %")
    masked = far_from_published(ltd, {"pgd_acc": 57.71 + PGD_ABOVE_AA + 3.0}, 10_000)
    assert len(masked) == 1 and "above the published AutoAttack" in masked[0]
    resnet18 = teacher_table.teacher("AutoAttack_ResNet18", "cifar10")
    assert far_from_published(resnet18, {"clean_acc": 10.0}, 500) == []  # nothing published


# --------------------------------------------------------------------------- the stage


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """A project folder of its own (dvclive looks for the repository around the cwd)."""
    monkeypatch.chdir(tmp_path)


def _import(kind: str, cfg, tmp_path) -> Path:
    out = tmp_path / "models" / f"{kind}.pt"
    outputs = Outputs(out, tmp_path / kind / "live", tmp_path / kind / "tb")
    run = RunConfig(seed=0, device="cpu", state_dir=str(tmp_path / "state"))
    train = train_clean_teacher if kind == "clean" else train_robust_teacher
    train(run, cfg, tiny_data(), runtime.setup(run), outputs)
    return out


def test_missing_published_file_says_where_to_get_it_and_put_it(tmp_path) -> None:
    cfg = RobustTeacherConfig(published="Chen2021LTD_WRN34_20", monitor=monitor_cfg(1))
    with pytest.raises(CheckpointError) as err:
        _import("robust", cfg, tmp_path)
    msg = str(err.value)
    assert msg.startswith(
        "robust_teacher.published = Chen2021LTD_WRN34_20: no file at "
        "teachers/cifar10/Chen2021LTD_WRN34_20.pt; download it from https://drive.google.com/"
    )
    assert msg.endswith("(or set robust_teacher.checkpoint to where it is)")
    assert "\n" not in msg
    assert not (tmp_path / "models").exists() and not (tmp_path / "robust").exists()


@pytest.mark.parametrize("layout", teacher_table.teacher("MTARD_ResNet56", "cifar10").layouts)
def test_published_teacher_imports_by_name_and_warns_when_far(tmp_path, layout, caplog) -> None:
    """MTARD's ResNet-56 by name, from its documented place, in each of its layouts: imported
    key for key, recorded as that teacher, and (random weights, 10 % where 93 % is published)
    one warning line that says how far; the same file again is kept, not imported twice."""
    torch.manual_seed(4)
    src = build_model("resnet56", 10, 1.0).eval()
    where = tmp_path / teacher_table.default_path("cifar10", "MTARD_ResNet56")
    where.parent.mkdir(parents=True)
    torch.save(laid_out(src.state_dict(), layout), where)
    cfg = CleanTeacherConfig(arch="resnet18", width=0.5, published="MTARD_ResNet56",
                             monitor=monitor_cfg())  # fmt: skip
    with caplog.at_level(logging.WARNING):
        out = _import("clean", cfg, tmp_path)
    model, info = load_model(out)
    assert info.spec.arch == "resnet56" and info.spec.width == 1.0
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert info.record.published == "MTARD_ResNet56"
    assert info.record.source == "teachers/cifar10/MTARD_ResNet56.pt"
    assert info.record.source_sha256 == sha256_file(where)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1, warned
    assert warned[0].startswith("clean_teacher: MTARD_ResNet56 measures far from its published")
    assert "against the published 93.18 %" in warned[0]
    stamp = out.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _import("clean", cfg, tmp_path)
    assert out.stat().st_mtime_ns == stamp
    assert any("is this run's finished result: kept" in r.getMessage() for r in caplog.records)


def test_checkpoint_with_published_takes_that_file(tmp_path, monkeypatch) -> None:
    """published names the teacher (architecture, checks), checkpoint where its file is; a
    relative path is from the project folder, also inside a DVC queue's copy."""
    torch.manual_seed(5)
    src = build_model("resnet56", 10, 1.0)
    elsewhere = tmp_path / "downloads" / "mtard_teacher.pth"
    elsewhere.parent.mkdir()
    torch.save(src.state_dict(), elsewhere)
    cfg = CleanTeacherConfig(published="MTARD_ResNet56", checkpoint="downloads/mtard_teacher.pth")
    assert teacher_file("clean_teacher", cfg, "cifar10")[1] == "downloads/mtard_teacher.pth"
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "abc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    path, _ = teacher_file("clean_teacher", cfg, "cifar10")
    assert path.resolve() == elsewhere.resolve()


def test_the_standard_resnet18_of_the_reference_autoattack_is_the_tables(tmp_path) -> None:
    """AutoAttack_ResNet18 is the file the pyautoattack wheel ships (its SHA-256), and it loads
    by name as the clean teacher."""
    import pyautoattack

    shipped = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    entry = teacher_table.teacher("AutoAttack_ResNet18", "cifar10")
    assert sha256_file(shipped) == entry.sha256
    where = tmp_path / teacher_table.default_path("cifar10", entry.name)
    where.parent.mkdir(parents=True)
    shutil.copy(shipped, where)
    out = _import(
        "clean", CleanTeacherConfig(published=entry.name, monitor=monitor_cfg()), tmp_path
    )
    _, info = load_model(out)
    assert (info.spec.arch, info.record.published) == ("resnet18", "AutoAttack_ResNet18")


def test_the_docs_table_is_the_tables() -> None:
    """docs/teachers.md lists every teacher with the table's architecture and numbers."""
    rows = [
        line.split("|")[1:-1]
        for line in (ROOT / "docs" / "teachers.md").read_text().splitlines()
        if line.startswith("| cifar")
    ]
    shown = {(c[0].strip(), c[1].strip().strip("`")): [x.strip() for x in c] for c in rows}
    assert set(shown) == set(teacher_table.BY_KEY)
    for key, cells in shown.items():
        t = teacher_table.BY_KEY[key]
        assert cells[3].strip("`") == t.arch, key
        assert cells[4] == (t.normalizes or "—"), key
        for cell, value in ((cells[5], t.clean), (cells[6], t.autoattack)):
            assert cell == ("—" if value is None else f"{value:.2f}"), key
