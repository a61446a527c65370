"""Parameter validation: every bad value stops with one line naming the key and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from bmtard.config import ARCHS, Params, load_params, parse_params, to_dict
from bmtard.errors import ParamsError

from conftest import ROOT

FILES = [ROOT / "params.yaml", ROOT / "presets" / "quick.yaml"]


def keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, prefix + k + ".")
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shipped_files_are_valid_and_complete(path):
    params = load_params(path)
    assert isinstance(params, Params)
    # every parameter is spelled out (none left to a hidden default)
    assert keys(yaml.safe_load(path.read_text())) == keys(to_dict(Params()))


def test_params_yaml_holds_the_paper_settings():
    p = load_params(ROOT / "params.yaml")
    d = p.distill
    assert (d.arch, d.optim.epochs, d.optim.batch_size, d.optim.lr) == ("resnet18", 300, 128, 0.1)
    assert (d.optim.momentum, d.optim.weight_decay, d.optim.milestones) == (
        0.9,
        2e-4,
        [215, 260, 285],
    )
    assert (d.attack.eps, d.attack.step_size, d.attack.steps, d.attack.init) == (
        8,
        2,
        10,
        "gaussian",
    )
    b = d.balance
    assert (b.tau_min, b.tau_max, b.tau_lr, b.weight_lr, b.w_adv_init) == (1, 10, 0.001, 0.025, 0.5)
    assert (d.kl_reduction, d.checkpoint) == ("mean", "best")
    assert (d.monitor.every, d.monitor.dense_from, d.monitor.pgd_steps) == (20, 215, 20)
    assert d.monitor.pgd_step_size == pytest.approx(0.003 * 255)
    assert (p.clean_teacher.arch, p.robust_teacher.arch, p.robust_teacher.method) == (
        "resnet56",
        "wrn34_10",
        "trades",
    )
    assert p.robust_teacher.trades_beta == 6.0
    assert p.evaluate.eps == 8 and p.evaluate.attacks == [
        "fgsm",
        "pgd_sat",
        "pgd_trades",
        "cw_inf",
        "autoattack",
    ]


def test_model_registry_matches_config_names():
    from bmtard.models import ARCHS as BUILT

    assert tuple(BUILT) == ARCHS


BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(dotted, value):
    raw = copy.deepcopy(BASE)
    node = raw
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    node[last] = value
    return raw


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("evaluate.eps", -1, "evaluate.eps = -1: must be >= 0"),
        ("distill.arch", "vgg16", "distill.arch = 'vgg16': allowed are resnet18, preact_resnet18"),
        ("distill.optim.epochs", 0, "distill.optim.epochs = 0: must be >= 1"),
        ("distill.optim.epochs", 2.5, "distill.optim.epochs = 2.5: expected an integer"),
        ("distill.optim.epochs", True, "distill.optim.epochs = True: expected an integer"),
        ("distill.optim.lr", "fast", "distill.optim.lr = 'fast': expected a number"),
        ("evaluate.attacks", ["pgd_sat", "deepfool"], "evaluate.attacks[1] = 'deepfool': allowed"),
        ("evaluate.attacks", "fgsm", "evaluate.attacks = 'fgsm': expected a list"),
        ("data.dataset", "mnist", "data.dataset = 'mnist': allowed are cifar10, cifar100"),
        ("run.device", "tpu", "run.device = 'tpu': allowed are"),
        (
            "distill.kl_reduction",
            "sum",
            "distill.kl_reduction = 'sum': allowed are mean, batchmean",
        ),
        ("distill.checkpoint", "median", "distill.checkpoint = 'median': allowed are best, last"),
        ("distill.optim.milestones", [260, 215], "distill.optim.milestones = [260, 215]: must be"),
        ("distill.balance.tau_min", 20.0, "distill.balance.tau_min = 20.0 > tau_max"),
        ("distill.balance.w_adv_init", 1.5, "distill.balance.w_adv_init = 1.5: must be <= 1"),
        ("robust_teacher.method", "mart", "robust_teacher.method = 'mart': allowed are trades"),
        ("data.train_limit", 0, "data.train_limit = 0: must be >= 1"),
        ("distill.optim", 3, "distill.optim: expected a mapping"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(key, value, message):
    with pytest.raises(ParamsError) as e:
        parse_params(with_value(key, value))
    text = str(e.value)
    assert message in text and "\n" not in text


def test_unknown_key_lists_the_allowed_ones():
    raw = with_value("distill.optim.lr_max", 0.3)
    with pytest.raises(
        ParamsError,
        match=r"distill\.optim\.lr_max: unknown key; allowed in "
        r"distill\.optim: epochs, batch_size, lr",
    ):
        parse_params(raw)
    with pytest.raises(ParamsError, match="trainer: unknown key; allowed in top level: run, data"):
        parse_params({**BASE, "trainer": {}})


def test_file_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ParamsError, match="p.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump(with_value("evaluate.eps", -8)))
    with pytest.raises(ParamsError, match=r"p\.yaml: evaluate\.eps = -8"):
        load_params(bad)


def test_null_is_allowed_only_where_documented():
    assert parse_params(with_value("data.train_limit", None)).data.train_limit is None
    with pytest.raises(ParamsError, match="distill.optim.lr = None: expected a number"):
        parse_params(with_value("distill.optim.lr", None))
