"""The evaluation: resumable and reproducible, per-class and eps-curve outputs, the model card,
and the command that evaluates any checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from bmtard.config.schema import EvaluateConfig, SanityConfig
from bmtard.core.io import sha256_file
from bmtard.core.provenance import code_version
from bmtard.data.splits import Split, save_split
from bmtard.evaluation.command import main
from bmtard.evaluation.protocol import evaluate_model, evaluation_key, per_class
from bmtard.evaluation.runner import ResumeState
from bmtard.models import build_model
from bmtard.models.checkpoint import ModelSpec, TrainingRecord, save_model

from conftest import synthetic, train_linear

CPU = torch.device("cpu")


def run_eval(model, test, c, device=CPU, *, model_id="m", seed=0, state=None, **kw):
    """The protocol with the resume state its caller owns, keyed as the stage keys it (model
    ``model_id``, no transfer source)."""
    if state is None:
        state = ResumeState(c.resume_dir, evaluation_key(c, test, seed, model_id))
    return evaluate_model(model, test, c, device, seed=seed, state=state, **kw)


@pytest.fixture(scope="module")
def honest():
    return train_linear(synthetic(500, 1), 0), synthetic(64, 2)


@pytest.fixture(scope="module")
def full(honest, tmp_path_factory):
    """One uninterrupted evaluation of ``honest`` (seed 0), shared: AutoAttack makes each one
    take tens of seconds."""
    model, test = honest
    return run_eval(model, test, cfg(tmp_path_factory.mktemp("full")), CPU, model_id="m")


def cfg(tmp_path, **kw) -> EvaluateConfig:
    base = dict(
        n_images=64,
        batch_size=16,
        eps=4.0,
        attacks=["fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack"],
        resume_dir=str(tmp_path / "state"),
        sanity=SanityConfig(
            n_images=32,
            strong_steps=10,
            strong_restarts=2,
            square_queries=50,
            gradient_samples=16,
            transfer=False,
        ),
    )
    base.update(kw)
    return EvaluateConfig(**base)


class Interrupt(Exception):
    pass


def test_resumed_evaluation_equals_uninterrupted_and_skips_finished_batches(honest, full, tmp_path):
    model, test = honest
    c = cfg(tmp_path / "b")

    def stop_in_autoattack(task, index):
        if task == "autoattack" and index == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_eval(model, test, c, CPU, model_id="m", on_batch=stop_in_autoattack)
    state_files = list((tmp_path / "b" / "state").glob("*.json"))
    assert len(state_files) == 1

    computed = []
    state = ResumeState(c.resume_dir, evaluation_key(c, test, 0, "m"))
    resumed = run_eval(
        model, test, c, CPU, state=state, on_batch=lambda task, i: computed.append((task, i))
    )
    # nothing finished before the interruption ran again: AutoAttack resumed at batch 2 of 4
    assert ("clean", 0) not in computed and ("cw_inf", 3) not in computed
    assert [i for t, i in computed if t == "autoattack"] == [2, 3]
    assert resumed.accuracy == full.accuracy
    assert resumed.eps_curve == full.eps_curve
    assert [c.as_dict() for c in resumed.checks] == [c.as_dict() for c in full.checks]
    # the state stays until its owner says the results are written (finish), then it is removed
    assert list((tmp_path / "b" / "state").glob("*.json"))
    state.finish()
    assert not list((tmp_path / "b" / "state").glob("*.json"))


def test_state_of_another_model_is_not_reused(honest, tmp_path):
    model, test = honest
    c = cfg(tmp_path, attacks=["fgsm"], sanity=SanityConfig(enabled=False), eps_curve=[])

    def stop(task, index):
        if task == "fgsm" and index == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_eval(model, test, c, CPU, model_id="first", on_batch=stop)
    computed = []
    run_eval(
        model, test, c, CPU, model_id="second", on_batch=lambda task, i: computed.append((task, i))
    )
    assert ("fgsm", 0) in computed and ("clean", 0) in computed


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # cut short (a full disk)
        lambda text: "not json at all",
        lambda text: json.dumps({"key": json.loads(text)["key"], "done": {"fgsm": {"0": "12"}}}),
        lambda text: json.dumps({"key": json.loads(text)["key"], "done": ["x"]}),
    ],
)
def test_damaged_resume_file_is_reported_and_treated_as_absent(honest, tmp_path, caplog, damage):
    """A damaged file would otherwise block every rerun until deleted by hand."""
    model, test = honest
    c = cfg(tmp_path, attacks=["fgsm"], sanity=SanityConfig(enabled=False), eps_curve=[])

    def stop(task, index):
        if task == "fgsm" and index == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_eval(model, test, c, CPU, model_id="m", on_batch=stop)
    (state,) = (tmp_path / "state").glob("*.json")
    state.write_text(damage(state.read_text()))
    computed = []
    with caplog.at_level("WARNING"):
        again = run_eval(
            model, test, c, CPU, model_id="m", on_batch=lambda t, i: computed.append((t, i))
        )
    assert f"ignoring the damaged evaluation state {state}" in caplog.text
    assert ("clean", 0) in computed and ("fgsm", 0) in computed  # started over
    full = run_eval(model, test, cfg(tmp_path / "full", **_no_extras()), CPU, model_id="m")
    assert again.accuracy == full.accuracy


def _no_extras() -> dict:
    return {"attacks": ["fgsm"], "sanity": SanityConfig(enabled=False), "eps_curve": []}


def test_resume_key_includes_the_code(honest, tmp_path, monkeypatch):
    """Results computed by other code are never reused."""
    from bmtard.evaluation import protocol

    model, test = honest
    c = cfg(tmp_path, **_no_extras())

    def stop(task, index):
        if task == "fgsm" and index == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_eval(model, test, c, CPU, model_id="m", on_batch=stop)
    monkeypatch.setattr(protocol, "loaded_code_sha256", lambda: "0" * 64)
    computed = []
    run_eval(model, test, c, CPU, model_id="m", on_batch=lambda t, i: computed.append((t, i)))
    assert ("clean", 0) in computed and ("fgsm", 0) in computed


def test_same_seed_same_numbers_and_accuracy_facts(honest, full, tmp_path):
    """A second evaluation with the same seed (and no resume folder) gives the same metrics."""
    model, test = honest
    a = run_eval(model, test, cfg(tmp_path, resume_dir=None), CPU, model_id="m", seed=0)
    assert a.metrics() == full.metrics()
    acc = a.accuracy
    assert acc["worst_case"] <= min(v for k, v in acc.items() if k != "worst_case")
    assert acc["autoattack"] <= min(acc["pgd_sat"], acc["pgd_trades"], acc["cw_inf"])
    assert a.weighted_robust["cw_inf"] == pytest.approx((acc["clean"] + acc["cw_inf"]) / 2)
    assert a.eps_curve["0"] == acc["clean"]
    assert a.eps_curve["4"] <= acc["clean"]


def test_per_class_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clean = torch.tensor([True, True, True, False, True, True])
    robust = torch.tensor([True, False, False, False, True, True])
    out = per_class(labels, clean, robust, ["a", "b", "c"])
    assert out["clean"] == {"a": 100.0, "b": 50.0, "c": 100.0}
    assert out["robust"] == {"a": 50.0, "b": 0.0, "c": 100.0}
    assert (out["worst_clean"], out["worst_clean_class"]) == (50.0, "b")
    assert (out["worst_robust"], out["worst_robust_class"]) == (0.0, "b")


# ------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ResNet-18 saved in our format and as a plain state_dict, and a 32x32 test split."""
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 0.0625)
    save_model(
        d / "student.pt",
        ModelSpec("resnet18", 0.0625, 10),
        model.state_dict(),
        TrainingRecord(stage="distill", epoch=3, selection="best"),
    )
    torch.save(model.state_dict(), d / "plain.pt")
    rng = np.random.default_rng(0)
    save_split(
        d / "test.npz",
        Split(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10),
    )
    return d


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default resume folder (.cache/evaluate) is relative


def run_cli(command: str) -> int:
    """``python -m bmtard.evaluation.command <command>`` in-process (paths here contain no
    spaces)."""
    return main(command.split())


def test_command_writes_metrics_plots_and_card(files, capsys):
    out = files / "eval"
    rc = run_cli(
        f"--checkpoint {files}/student.pt --data {files}/test.npz --out {out} --n-images 20 "
        "--attacks fgsm,pgd_sat --batch-size 10 --device cpu"
    )
    assert rc == 0
    metrics = json.loads((out / "evaluate.json").read_text())
    assert list(metrics) == ["clean", "fgsm", "pgd_sat", "sanity", "epoch"]  # no AA: no w_robust
    assert metrics["sanity"] in ("passed", "failed") and metrics["epoch"] == 3
    details = json.loads((out / "details.json").read_text())
    assert list(details["accuracy"]) == ["clean", "fgsm", "pgd_sat", "worst_case"]
    assert set(details["sanity"]) >= {"passed", "n_failed", "eps_monotone", "gradients"}
    assert set(details["weighted_robust"]) == {"fgsm", "pgd_sat"}
    with open(out / "eps_curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["eps"] for r in rows] == ["0", "2", "4", "8", "16"]
    with open(out / "per_class.csv") as f:
        assert len(list(csv.DictReader(f))) == 10
    card = json.loads((files / "student.card.json").read_text())  # next to the checkpoint
    keys = "architecture dataset threat_model eps n_test_points clean_acc autoattack_version"
    for key in (keys + " sanity checkpoint_sha256 attacks_acc").split():
        assert key in card, key
    assert card["checkpoint_sha256"] == sha256_file(files / "student.pt")
    assert (card["architecture"], card["dataset"], card["eps"]) == ("resnet18", "cifar10", "8/255")
    assert card["n_test_points"] == 20 and card["training"]["epoch"] == 3
    assert card["clean_acc"] == metrics["clean"]
    # what made the model and what made the numbers
    assert card["training"]["stage"] == "distill" and card["training"]["selection"] == "best"
    assert card["evaluation_code"] == code_version()
    assert len(card["protocol"]["data_sha256"]) == 64


def test_command_takes_a_plain_state_dict_with_arch(files):
    out = files / "plain"
    rc = run_cli(
        f"--checkpoint {files}/plain.pt --arch resnet18 --width 0.0625 --data {files}/test.npz "
        f"--out {out} --card {out}/card.json --n-images 10 --attacks fgsm --no-sanity --device cpu"
    )
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == "resnet18" and "sanity" not in card


def test_command_errors_are_one_line(files, capsys):
    common = f"--data {files}/test.npz --out {files}/bad --device cpu"
    rc = run_cli(f"--checkpoint {files}/plain.pt --arch wrn34_10 {common}")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "does not fit wrn34_10" in err[0] and "missing" in err[0]
    assert not (files / "bad").exists()
    rc = run_cli(f"--checkpoint {files}/student.pt {common} --eps -1")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "evaluate.eps = -1.0: must be >= 0" in err
    rc = run_cli(f"--checkpoint {files}/student.pt {common} --attacks deepfool")
    assert rc == 2 and "evaluate.attacks[0] = 'deepfool'" in capsys.readouterr().err
