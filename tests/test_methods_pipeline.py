"""distill.method: one table of methods, the stage builds each one, and only the teachers a
method learns from are trained or loaded (the teacher stages, the distillation, the evaluation)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest
import torch
from test_params_fuzz import QUICK

from bmtard.config import method_table
from bmtard.config.params import parse_params
from bmtard.config.schema import (
    DistillConfig,
    MonitorConfig,
    OptimConfig,
    Params,
    RunConfig,
    TrainAttackConfig,
    to_dict,
)
from bmtard.core.errors import CheckpointError, ParamsError
from bmtard.core.io import sha256_file
from bmtard.evaluation.stage import evaluate_pipeline
from bmtard.models.checkpoint import load_model, saved_record
from bmtard.runtime import device as runtime
from bmtard.training.distill import run_distill
from bmtard.training.stage import Outputs
from bmtard.training.teachers import train_clean_teacher, train_robust_teacher

from training_helpers import WIDTH, teachers, tiny_data

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _outside_the_repo(tmp_path, monkeypatch):
    """dvclive opens the DVC/Git repo around the working directory: keep it away from this one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def test_an_unknown_method_is_one_line_naming_the_allowed():
    allowed = ", ".join(method_table.NAMES)
    with pytest.raises(ParamsError, match=rf"^distill\.method = 'kd': allowed are {allowed}"):
        parse_params(_with(QUICK, "distill", method="kd"))


def test_teachers_of_the_papers_methods():
    """The teachers the official code of each of these methods learns from (the table may hold
    more methods)."""
    needs = {
        "sat": (), "trades": (), "peeraid": (), "ard": ("robust",), "rslad": ("robust",),
        "adaad": ("robust",), "dgad": ("robust",), "mtard": ("clean", "robust"),
        "bmtard": ("clean", "robust"), "ciard": ("clean", "robust"),
    }  # fmt: skip
    assert {n: method_table.method(n).teachers for n in needs} == needs
    assert method_table.needs(["sat", "ard"], "robust")
    assert not method_table.needs(["peeraid", "sat", "trades"], "robust")
    assert not method_table.needs(["sat", "ard", "rslad"], "clean")


@pytest.mark.parametrize("role", ["clean", "robust"])
def test_the_stand_in_for_a_teacher_stage_keeps_only_the_need(role):
    """Snakemake's teacher commands carry need_only(methods): the same for any methods with the
    same need, and a stage given it decides as it would for the methods themselves."""
    groups = [["sat"], ["sat", "trades"], ["peeraid"], ["bmtard"], ["ard", "sat"], ["ciard"]]
    for methods in groups:
        stand_in = method_table.need_only(methods, role)
        assert method_table.needs(stand_in, role) == method_table.needs(methods, role)
        others = [
            m for m in groups if method_table.needs(m, role) == method_table.needs(methods, role)
        ]
        assert {method_table.need_only(m, role) for m in others} == {stand_in}
    assert method_table.need_only(["bmtard"], "clean") == ("mtard", "bmtard", "ciard")
    assert method_table.need_only(["ard"], "clean") == method_table.need_only(["sat"], "clean")
    assert method_table.need_only(["ard"], "robust") != method_table.need_only(["sat"], "robust")


def test_null_takes_the_methods_published_settings_and_numbers_override_them():
    null = DistillConfig(
        optim=OptimConfig(epochs=None, milestones=None), attack=TrainAttackConfig(init=None)
    )
    got = {
        n: dataclasses.replace(null, method=n).resolved("cifar10") for n in method_table.NAMES
    }  # fmt: skip
    ard = got.pop("ard")
    assert (ard.optim.epochs, ard.optim.milestones, ard.attack.init) == (
        200,
        [100, 150],
        "uniform_unclamped",
    )
    assert got["sat"].attack.init == "uniform"
    for name in ("trades", "rslad", "mtard", "bmtard", "ciard"):
        c = got[name]
        assert (c.optim.epochs, c.optim.milestones, c.attack.init) == (
            300,
            [215, 260, 285],
            "gaussian",
        ), name
    given = DistillConfig(method="ard", optim=OptimConfig(epochs=7, milestones=[3]))
    assert (given.resolved("cifar10").optim.epochs, given.resolved("cifar10").optim.milestones) == (
        7,
        [3],
    )
    assert given.resolved("cifar10").attack.init == "gaussian"  # given, not the method's


def _with(raw: dict, section: str, **values) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in values.items():
        node = out[section]
        *parents, last = dotted.split(".")
        for p in parents:
            node[p] = dict(node[p])
            node = node[p]
        node[last] = value
    return out


@pytest.mark.parametrize(
    "section, key",
    [
        ("clean_teacher", "optim.epochs"),
        ("robust_teacher", "optim.milestones"),
        ("robust_teacher", "attack.init"),
    ],
)
def test_null_is_refused_for_teachers(section, key):
    with pytest.raises(ParamsError) as e:
        parse_params(_with(QUICK, section, **{key: None}))
    assert (
        str(e.value) == f"{section}.{key} = null: must be given (null is allowed in distill only)"
    )


def test_shipped_params_resolve_to_the_paper_recipe():
    from bmtard.config.params import load_params

    from conftest import shipped_params

    d = load_params(shipped_params()).distill
    assert (d.optim.epochs, d.optim.milestones, d.attack.init) == (None, None, None)
    assert (d.optim.weight_decay, d.optim.schedule, d.kl_reduction) == (None, None, None)
    assert d.resolved("cifar10") == dataclasses.replace(
        Params().distill, ard=d.ard, trades_beta=d.trades_beta
    ).resolved("cifar10")


# --------------------------------------------------------------------------- the distillation


def _cfg(method: str) -> DistillConfig:
    return DistillConfig(
        method=method,
        arch="resnet18",
        width=WIDTH,
        optim=OptimConfig(epochs=1, batch_size=32, lr=0.05, milestones=None),
        attack=TrainAttackConfig(steps=1, init=None),
        monitor=MonitorConfig(every=1, dense_from=1, n_images=32, batch_size=32, pgd_steps=1),
    )


def _outputs(tmp_path, name: str) -> Outputs:
    return Outputs(tmp_path / f"{name}.pt", tmp_path / name / "live", tmp_path / name / "tb")


@pytest.mark.parametrize("method", method_table.NAMES)
def test_each_method_trains_from_its_teachers_only(tmp_path, data, method):
    """A teacher the method does not learn from is never opened: its path does not exist."""
    clean, robust = teachers(tmp_path)
    spec = method_table.method(method)
    if "clean" not in spec.teachers:
        clean = tmp_path / "absent_clean.pt"
    if "robust" not in spec.teachers:
        robust = tmp_path / "absent_robust.pt"
    run = RunConfig(seed=0, device="cpu")
    out = _outputs(tmp_path, method)
    run_distill(run, _cfg(method), data, runtime.setup(run), clean, robust, out)
    _, info = load_model(out.model)
    rec = info.record
    assert rec.method == method
    assert tuple(rec.teachers) == spec.teachers
    assert rec.params == to_dict(_cfg(method).resolved("cifar10"))
    assert rec.params["attack"]["init"] == spec.init
    assert rec.params["optim"]["milestones"] == list(spec.milestones)
    assert rec.key is not None
    curves = sorted(p.stem for p in (out.live / "plots" / "metrics").glob("*.tsv"))
    assert {"loss", "lr", "clean_acc", "pgd_acc"} <= set(curves)
    if method in ("mtard", "bmtard", "ciard"):
        assert {"w_adv", "w_nat", "tau_adv", "tau_nat"} <= set(curves)


@pytest.mark.parametrize("method", ["bmtard", "adaad", "rslad"])
def test_igdm_wraps_the_method(tmp_path, data, method):
    """distill.igdm.alpha > 0: the method's loss plus the IGDM term, recorded and logged."""
    clean, robust = teachers(tmp_path)
    cfg = dataclasses.replace(
        _cfg(method), igdm=dataclasses.replace(_cfg(method).igdm, alpha=2.0, ramp_epochs=4)
    )
    run = RunConfig(seed=0, device="cpu")
    out = _outputs(tmp_path, method)
    run_distill(run, cfg, data, runtime.setup(run), clean, robust, out)
    rec = load_model(out.model)[1].record
    assert rec.params["igdm"]["alpha"] == 2.0 and rec.method == method
    live = json.loads((out.live / "metrics.json").read_text())
    assert live["igdm_ramp"] == 0.25 and live["loss_igdm"] >= 0  # epoch 1 of ramp_epochs 4
    assert live["loss"] == pytest.approx(live["loss_base"] + 2.0 * 0.25 * live["loss_igdm"])


def test_the_networks_a_method_trains_are_kept_in_the_students_file(tmp_path, data):
    """CIARD's fine-tuned robust teacher (its record says so) and PeerAiD's peer and weight
    average, as they were at the selected epoch; PeerAiD's output: swa writes the average."""
    from bmtard.models.checkpoint import saved_networks

    clean, robust = teachers(tmp_path)
    run = RunConfig(seed=0, device="cpu")
    two = dataclasses.replace(_cfg("ciard").optim, epochs=2, milestones=[1])
    three = dataclasses.replace(two, epochs=3)  # CIARD's lrs are not yet 0 in epoch 2 of 3
    ciard = dataclasses.replace(
        _cfg("ciard"), optim=three, checkpoint="last",  # the teacher of the last epoch
        ciard=dataclasses.replace(_cfg("ciard").ciard, teacher_from=1),
    )  # fmt: skip
    out = _outputs(tmp_path, "ciard")
    run_distill(run, ciard, data, runtime.setup(run), clean, robust, out)
    rec = load_model(out.model)[1].record
    assert rec.teachers["robust"]["fine_tuned"].startswith("by the method")
    teacher = saved_networks(out.model)["robust_teacher"]
    original, _ = load_model(robust)
    weights = dict(original.named_parameters())
    moved = [k for k in weights if not torch.equal(teacher[k], weights[k])]
    assert moved  # its weights were trained from epoch 2 (after teacher_from = 1)
    peeraid = dataclasses.replace(
        _cfg("peeraid"), optim=two, checkpoint="last",
        peeraid=dataclasses.replace(_cfg("peeraid").peeraid, swa_from=1, output="swa"),
    )  # fmt: skip
    out = _outputs(tmp_path, "peeraid")
    run_distill(run, peeraid, data, runtime.setup(run), tmp_path / "no", tmp_path / "no", out)
    model, info = load_model(out.model)
    nets = saved_networks(out.model)
    assert set(nets) == {"peer", "swa"} and info.record.teachers == {}
    for k, v in model.state_dict().items():  # the student's file holds the weight average
        assert torch.equal(v, nets["swa"][k]), k


# --------------------------------------------------------------------------- the teacher stages


def _teacher_cfgs():
    from test_training import _clean_cfg, _robust_cfg

    return {"clean": _clean_cfg(), "robust": _robust_cfg()}


TRAIN = {"clean": train_clean_teacher, "robust": train_robust_teacher}


def _stage(role, tmp_path, data, methods, monkeypatch=None, refuse_training=False):
    run = RunConfig(seed=0, device="cpu")
    out = Outputs(
        tmp_path / "models" / f"{role}.pt",
        tmp_path / "dvclive" / role,
        tmp_path / "runs" / role,
    )
    if refuse_training:
        import bmtard.training.teachers

        def no_training(*a, **k):
            raise AssertionError("trained a teacher that was finished already")

        monkeypatch.setattr(bmtard.training.teachers, "train_and_save", no_training)
    TRAIN[role](run, _teacher_cfgs()[role], data, runtime.setup(run), out, None, methods)
    return out


@pytest.mark.parametrize(
    "role, methods", [("clean", ("sat", "ard", "rslad")), ("robust", ("trades",))]
)
def test_a_teacher_no_method_needs_is_not_trained(tmp_path, data, role, methods):
    out = _stage(role, tmp_path, data, methods)
    with pytest.raises(CheckpointError) as e:
        load_model(out.model)
    assert str(e.value).startswith(f"{out.model}: holds no model ({role}_teacher: no teacher ")
    assert ", ".join(methods) in str(e.value)
    live = json.loads((out.live / "metrics.json").read_text())
    assert live["trained"] is False and live["reason"].startswith(f"{role}_teacher: no teacher")
    assert (out.live / "plots" / "metrics" / "trained.tsv").read_text().split() == [
        "step", "trained", "0", "0.0",
    ]  # fmt: skip
    assert list(out.tb.glob("events.out.tfevents.*"))  # no empty folder (git would drop it)
    assert saved_record(out.model) is None


def test_a_finished_teacher_is_kept_when_the_method_changes(tmp_path, data, monkeypatch):
    """The DVC case (outputs persist) and the Snakemake case (outputs deleted before the rerun:
    they come back from the last good copy); neither trains again, and a method without this
    teacher leaves a finished one in place of a placeholder only if it is this run's."""
    out = _stage("robust", tmp_path, data, ("bmtard",))
    digest = sha256_file(out.model)
    live = (out.live / "metrics.json").read_text()
    _stage("robust", tmp_path, data, ("rslad",), monkeypatch, refuse_training=True)  # in place
    assert sha256_file(out.model) == digest
    assert (out.live / "metrics.json").read_text() == live
    for path in (out.model,):
        os.unlink(path)
    shutil.rmtree(out.live)
    shutil.rmtree(out.tb)
    _stage("robust", tmp_path, data, ("ard",), monkeypatch, refuse_training=True)  # put back
    assert sha256_file(out.model) == digest
    assert (out.live / "metrics.json").read_text() == live
    assert list(out.tb.iterdir())
    # not needed, finished: kept as well (nothing is trained or loaded for it)
    _stage("robust", tmp_path, data, ("sat",), monkeypatch, refuse_training=True)
    assert sha256_file(out.model) == digest


def test_a_teacher_with_other_settings_is_trained_again(tmp_path, data):
    out = _stage("clean", tmp_path, data, ("bmtard",))
    first = saved_record(out.model)
    run = RunConfig(seed=1, device="cpu")
    cfg = _teacher_cfgs()["clean"]
    train_clean_teacher(run, cfg, data, runtime.setup(run), out, None, ("mtard",))
    second = saved_record(out.model)
    assert first.key != second.key and second.run["seed"] == 1


# --------------------------------------------------------------------------- the evaluation


def _evaluate_sat(tmp_path, data, **kwargs) -> dict:
    """A SAT student (its teachers' files are placeholders) evaluated by the evaluate stage
    with PGD and the transfer check; its details.json."""
    from test_evaluate import cfg as eval_cfg

    from bmtard.core.io import write_json
    from bmtard.data.splits import save_split

    run = RunConfig(seed=0, device="cpu")
    device = runtime.setup(run)
    student = _outputs(tmp_path, "student")
    if not student.model.exists():
        run_distill(run, _cfg("sat"), data, device, tmp_path / "none", tmp_path / "none", student)
    placeholders = {
        role: _stage(role, tmp_path, data, ("sat",)).model for role in ("clean", "robust")
    }
    (tmp_path / "data").mkdir(exist_ok=True)
    save_split(tmp_path / "data" / "test.npz", data.test)
    manifest = json.loads(json.dumps(data.manifest))
    manifest["splits"]["test"]["sha256"] = sha256_file(tmp_path / "data" / "test.npz")
    write_json(tmp_path / "data" / "manifest.json", manifest)
    c = dataclasses.replace(
        eval_cfg(
            tmp_path, n_images=32, attacks=["fgsm", "pgd_sat", "cw_inf"], eps_curve=[0.0, 8.0]
        ),
        sanity=dataclasses.replace(eval_cfg(tmp_path).sanity, transfer=True, square_queries=10),
    )
    evaluate_pipeline(
        c, 0, device, data_dir=str(tmp_path / "data"), student=str(student.model),
        clean_teacher=str(placeholders["clean"]), robust_teacher=str(placeholders["robust"]),
        metrics=str(tmp_path / "eval.json"), details=str(tmp_path / "details.json"),
        card=str(tmp_path / "card.json"), plots=str(tmp_path / "plots"),
        cost=str(tmp_path / "cost.json"), **kwargs,
    )  # fmt: skip
    details = json.loads((tmp_path / "details.json").read_text())
    details.pop("cost")
    return details


def test_the_evaluation_opens_only_the_students_teachers(tmp_path, data):
    """A SAT student: no teacher is loaded (both files are placeholders), no transfer check."""
    details = _evaluate_sat(tmp_path, data)
    assert details["teachers"] == {}
    assert details["sanity"]["transfer_vs_white_box"]["passed"] is None


def test_the_evaluation_with_frozen_parameters_is_the_same_bits(tmp_path, data):
    """``run.attack_no_param_grads`` freezes the evaluation's models (``param_grads=False``):
    every number the same, since no input gradient depends on it."""
    thawed = _evaluate_sat(tmp_path, data)
    frozen = _evaluate_sat(tmp_path, data, param_grads=False)
    assert frozen == thawed and thawed["accuracy"]["pgd_sat"] <= thawed["accuracy"]["clean"]


def test_the_teacher_stage_names_a_wrong_method_in_one_line():
    from stages.train_teacher import methods_arg

    assert methods_arg("sat,rslad") == ("sat", "rslad")
    for bad, name in (("sat,kd", "kd"), ("", "")):
        with pytest.raises(ParamsError) as e:
            methods_arg(bad)
        assert str(e.value) == (
            f"--method {bad!r}: {name!r} is not a method; allowed are "
            f"{', '.join(method_table.NAMES)}"
        )
