"""Parameter validation: every bad value stops with one line naming the key and what is allowed."""

import argparse
import copy
import dataclasses
import math
import typing
from pathlib import Path

import pytest
import yaml

from bmtard.config.params import MISSING_KEY, load_params, parse_params
from bmtard.config.schema import ARCHS, SECTIONS, Params, RunConfig, to_dict
from bmtard.core.errors import ParamsError

from conftest import ROOT, shipped_params

FILES = [shipped_params(), ROOT / "presets" / "quick.yaml", ROOT / "presets" / "small.yaml"]


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
    p = load_params(shipped_params())
    assert p.distill.method == "bmtard"
    d = p.distill.resolved("cifar10")
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
    assert d.kl_scale == 1.0
    clean, robust = p.clean_teacher.resolved("cifar10"), p.robust_teacher.resolved("cifar10")
    assert (clean.arch, robust.arch, robust.method) == (
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


BASE = yaml.safe_load(shipped_params().read_text())


def with_value(dotted, value):
    return with_values(**{dotted.replace(".", "__"): value})


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
        (
            "distill.checkpoint",
            "median",
            "distill.checkpoint = 'median': allowed are best, best_val, last",
        ),
        ("distill.optim.milestones", [260, 215], "distill.optim.milestones = [260, 215]: must be"),
        ("distill.balance.tau_min", 20.0, "distill.balance.tau_min = 20.0 > tau_max"),
        ("distill.balance.w_adv_init", 1.5, "distill.balance.w_adv_init = 1.5: must be <= 1"),
        ("robust_teacher.method", "mart", "robust_teacher.method = 'mart': allowed are trades"),
        ("data.train_limit", 0, "data.train_limit = 0: must be >= 1"),
        ("distill.optim", 3, "distill.optim = 3: expected a mapping with keys epochs, batch_size"),
        ("distill.optim.lr", float("nan"), "distill.optim.lr = nan: must be a finite number"),
        ("distill.optim.lr", float("inf"), "distill.optim.lr = inf: must be a finite number"),
        ("evaluate.eps", float("-inf"), "evaluate.eps = -inf: must be a finite number"),
        ("distill.optim.lr", 1e300, "distill.optim.lr = 1e+300: must be <= 100"),
        pytest.param(
            "distill.optim.lr",
            10**400,
            f"distill.optim.lr = 1{'0' * 36}...: must be a finite number",
            id="int-beyond-float",
        ),
        (
            "distill.optim.epochs",
            10**18,
            "distill.optim.epochs = 1000000000000000000: must be <= 100000",
        ),
        ("run.seed", 2**32, "run.seed = 4294967296: must be <= 4294967295"),
        ("distill.width", 9, "distill.width = 9: must be <= 8"),
        ("distill.optim.milestones", [0, 3], "distill.optim.milestones[0] = 0: must be >= 1"),
        ("distill.optim.milestones", [3, 3], "distill.optim.milestones = [3, 3]: must be strictly"),
        (
            "distill.optim.milestones",
            [1, 10**6],
            "distill.optim.milestones[1] = 1000000: must be <=",
        ),
        (
            "distill.optim.milestones",
            [1.0],
            "distill.optim.milestones[0] = 1.0: expected an integer",
        ),
        ("evaluate.eps_curve", [0, float("nan")], "evaluate.eps_curve[1] = nan: must be a finite"),
        ("evaluate.eps_curve", [-1, 2], "evaluate.eps_curve[0] = -1: must be >= 0"),
        ("evaluate.eps_curve", [0, 256], "evaluate.eps_curve[1] = 256: must be <= 255"),
        (
            "evaluate.eps_curve",
            [4, 2],
            "evaluate.eps_curve = [4.0, 2.0]: must be strictly increasing",
        ),
        ("run.device", "cuda:\u00b2", "run.device = 'cuda:\u00b2': allowed are"),
        (
            "data.download_root",
            "",
            "data.download_root = '': must be a non-empty string without NUL",
        ),
        ("evaluate.resume_dir", "a\0b", "evaluate.resume_dir = 'a\\x00b': must be a non-empty"),
        ("run.save_every_minutes", -1, "run.save_every_minutes = -1: must be >= 0"),
        ("run.save_every_minutes", 10081, "run.save_every_minutes = 10081: must be <= 10080"),
        ("run.save_every_minutes", "10m", "run.save_every_minutes = '10m': expected a number"),
        ("run.state_dir", 3, "run.state_dir = 3: expected a string"),
        (  # a bare `off` in YAML
            "run.attack_compile",
            False,
            "run.attack_compile = False: expected one of eager, inductor, cudagraphs "
            "(YAML reads a bare off/on/no/yes as a boolean: quote it)",
        ),
        ("run.attack_compile", 1, "run.attack_compile = 1: expected a string"),
        ("clean_teacher", [1, 2], "clean_teacher = [1, 2]: expected a mapping with keys arch"),
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


def load_error(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ParamsError) as e:
        load_params(path)
    text = str(e.value)
    assert "\n" not in text
    return text


SECTION_LIST = "run, data, clean_teacher, robust_teacher, distill, evaluate"


@pytest.mark.parametrize(
    "content, message",
    [
        ("", f"empty; required sections: {SECTION_LIST}"),
        ("# only a comment\n\n   \n", f"empty; required sections: {SECTION_LIST}"),
        ("---\n", f"empty; required sections: {SECTION_LIST}"),
        (
            "[run, data]\n",
            f"top level = ['run', 'data']: expected a mapping with keys {SECTION_LIST}",
        ),
        ("42\n", f"top level = 42: expected a mapping with keys {SECTION_LIST}"),
        (
            "just some words\n",
            f"top level = 'just some words': expected a mapping with keys {SECTION_LIST}",
        ),
        (
            "run: [unclosed\n",
            "not valid YAML (line 2: expected ',' or ']', but got '<stream end>')",
        ),
        ("a: b: c\n", "not valid YAML (line 1: mapping values are not allowed here)"),
        ("a: 1\n---\nb: 2\n", "not valid YAML (line 2: but found another document)"),
        ("seed: 2024-13-01\n", "not valid YAML (month must be in 1..12)"),
        (
            b"run:\n  seed: \xff\n",
            "not UTF-8 (byte 0xff at offset 13); expected a UTF-8 YAML text file",
        ),
        (
            "caf\u00e9: 1\n".encode("latin-1"),
            "not UTF-8 (byte 0xe9 at offset 3); expected a UTF-8 YAML text file",
        ),
        (
            b"\x00\x01\x02binary",
            "not valid YAML (unacceptable character #x0000: special characters are not allowed)",
        ),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_a_file_that_is_not_a_params_mapping_is_named(tmp_path: Path, content, message):
    path = tmp_path / "p.yaml"
    assert load_error(path, content) == f"{path}: {message}"


def test_a_directory_is_not_a_params_file(tmp_path: Path):
    with pytest.raises(ParamsError) as e:
        load_params(tmp_path)
    assert str(e.value) == f"{tmp_path}: is a directory; expected a YAML parameter file"


QUICK_TEXT = (ROOT / "presets" / "quick.yaml").read_text()


def test_duplicate_keys_are_refused_with_their_line_and_mapping(tmp_path: Path):
    path = tmp_path / "p.yaml"
    lines = QUICK_TEXT.splitlines(keepends=True)
    i = lines.index("    lr: 0.1\n", QUICK_TEXT[: QUICK_TEXT.index("distill:")].count("\n"))
    text = "".join(lines[: i + 1] + ["    lr: 0.5\n"] + lines[i + 1 :])
    assert load_error(path, text) == (
        f"{path}: line {i + 2}: duplicate key 'lr' in distill.optim; each key may be given once"
    )
    text = QUICK_TEXT + "run:\n  seed: 1\n"
    n = text.count("\n") - 1
    assert load_error(path, text) == (
        f"{path}: line {n}: duplicate key 'run' at the top level; each key may be given once"
    )
    text = QUICK_TEXT.replace("[0, 2, 4, 8, 16]", "[0, {a: 1, a: 2}]")
    assert "duplicate key 'a' in evaluate.eps_curve[1]" in load_error(path, text)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path):
    """A key given by a merge (<<) and again explicitly is an override, as YAML defines it."""
    text = QUICK_TEXT.replace("evaluate:", "evaluate:\n  <<: {n_images: 7, batch_size: 7}", 1)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    ev = load_params(path).evaluate
    assert (ev.n_images, ev.batch_size) == (200, 200)  # the preset's own values win


def without(dotted: str) -> dict:
    raw = copy.deepcopy(BASE)
    node = raw
    *parents, last = dotted.split(".")
    for k in parents:
        node = node[k]
    del node[last]
    return raw


@pytest.mark.parametrize(
    "key", ["run.seed", "distill.optim.lr", "evaluate.sanity.tolerance", "distill.optim"]
)
def test_every_key_must_be_given(key):
    with pytest.raises(ParamsError) as e:
        parse_params(without(key))
    assert str(e.value) == f"{key}: {MISSING_KEY}"
    assert MISSING_KEY == (
        "missing; every key must be given (params.yaml and presets/quick.yaml list them all)"
    )


@pytest.mark.parametrize("section", SECTIONS)
def test_every_section_must_be_given(section):
    with pytest.raises(ParamsError) as e:
        parse_params(without(section))
    assert str(e.value) == f"{section}: missing section; required sections: {SECTION_LIST}"


def test_load_params_requires_every_key(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(without("run.state_dir")))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(e.value) == f"{path}: run.state_dir: {MISSING_KEY}"


def test_incomplete_mode_fills_missing_keys_with_defaults():
    p = parse_params({"evaluate": {"n_images": 7, "sanity": {"enabled": False}}}, complete=False)
    assert p.evaluate.n_images == 7 and not p.evaluate.sanity.enabled
    assert p.evaluate.sanity.n_images == 1000 and p.run == RunConfig()
    assert p.distill == Params().distill
    with pytest.raises(ParamsError, match="evaluate.nimages: unknown key"):
        parse_params({"evaluate": {"nimages": 7}}, complete=False)
    with pytest.raises(ParamsError, match=r"evaluate.eps = nan: must be a finite number"):
        parse_params({"evaluate": {"eps": math.nan}}, complete=False)


def test_standalone_evaluate_command_uses_the_paper_defaults():
    from bmtard.evaluation.command import _config

    flags = dict(n_images=7, eps=None, batch_size=None, attacks="fgsm", no_sanity=True)
    args = argparse.Namespace(params=None, seed=None, device=None, **flags)
    cfg, seed, device = _config(args)
    assert (cfg.n_images, cfg.attacks, cfg.sanity.enabled) == (7, ["fgsm"], False)
    assert (cfg.eps, cfg.cw_kappa, seed, device) == (8.0, 50.0, 0, "auto")


def test_new_run_keys_have_their_documented_defaults():
    run = load_params(shipped_params()).run
    assert (run.save_every_minutes, run.state_dir) == (10.0, ".cache/train")
    assert (RunConfig().save_every_minutes, RunConfig().state_dir) == (10.0, ".cache/train")
    assert parse_params(with_value("run.state_dir", None)).run.state_dir is None
    assert parse_params(with_value("run.save_every_minutes", 0)).run.save_every_minutes == 0.0
    for path in FILES:
        assert list(yaml.safe_load(path.read_text())["run"]) == [
            "seed",
            "device",
            "deterministic",
            "num_threads",
            "save_every_minutes",
            "state_dir",
            "precision",
            "channels_last",
            "compile",
            "attack_fold_bn",
            "attack_bf16",
            "attack_no_param_grads",
            "attack_compile",
            "teachers_bf16",
            "processes",
            "divergence_factor",
        ]
    # the attack's fast path is off: the faithful numerics
    assert (run.attack_fold_bn, run.attack_bf16, run.attack_no_param_grads) == (False,) * 3
    assert (run.attack_compile, run.teachers_bf16) == ("eager", False) == (
        RunConfig().attack_compile, RunConfig().teachers_bf16,
    )  # fmt: skip
    with pytest.raises(ParamsError, match=r"^run\.attack_compile = 'off': allowed are eager"):
        parse_params(with_value("run.attack_compile", "off"))
    assert (run.processes, RunConfig().processes) == (1, 1)  # the faithful single process
    assert (run.divergence_factor, RunConfig().divergence_factor) == (1000.0, 1000.0)
    assert parse_params(with_value("run.divergence_factor", None)).run.divergence_factor is None
    with pytest.raises(ParamsError, match=r"run.divergence_factor = 1: must be > 1"):
        parse_params(with_value("run.divergence_factor", 1))


def leaves(cls: type, prefix: str = ""):
    """(dotted key, type, rules) of every non-section field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], f.metadata


def numeric(tp) -> bool:
    args = set(typing.get_args(tp)) or {tp}
    return bool(args & {int, float, list[int], list[float]})


NUMERIC = [(key, tp, rules) for key, tp, rules in leaves(Params) if numeric(tp)]


def test_every_numeric_key_has_both_bounds():
    assert len(NUMERIC) > 60
    for key, _, rules in NUMERIC:
        assert {"ge", "gt"} & set(rules) and {"le", "lt"} & set(rules), key


@pytest.mark.parametrize("key, tp, rules", NUMERIC, ids=[k for k, _, _ in NUMERIC])
def test_huge_and_non_finite_values_are_refused(key, tp, rules):
    if type(None) in typing.get_args(tp):  # X | None: X
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    is_list = typing.get_origin(tp) is list
    where = f"{key}[0]" if is_list else key
    bound = rules.get("le", rules.get("lt"))
    op = "<=" if "le" in rules else "<"
    for huge in (10**18, 1e300):
        value = [huge] if is_list else huge
        with pytest.raises(ParamsError) as e:
            parse_params(with_value(key, value))
        floats = float in (typing.get_args(tp) or (tp,)) or tp == list[float]
        if isinstance(huge, int) or floats:
            assert str(e.value) == f"{where} = {huge!r}: must be {op} {bound}"
        else:
            assert str(e.value) == f"{where} = {huge!r}: expected an integer"
    with pytest.raises(ParamsError) as e:
        parse_params(with_value(key, [math.nan] if is_list else math.nan))
    assert str(e.value).startswith(f"{where} = nan: ")
    assert str(e.value).endswith(("must be a finite number", "expected an integer"))


def test_null_is_allowed_only_where_documented():
    assert parse_params(with_value("data.train_limit", None)).data.train_limit is None
    with pytest.raises(ParamsError, match="distill.optim.lr = None: expected a number"):
        parse_params(with_value("distill.optim.lr", None))


def test_speed_keys_default_to_the_faithful_path_and_are_validated():
    run = load_params(shipped_params()).run
    assert (run.precision, run.channels_last, run.compile) == ("fp32", False, False)
    assert parse_params(with_value("run.precision", "bf16")).run.precision == "bf16"
    with pytest.raises(ParamsError, match=r"^run\.precision = 'fp16': allowed are fp32, bf16$"):
        parse_params(with_value("run.precision", "fp16"))
    with pytest.raises(ParamsError, match=r"^run\.compile = 'yes': expected true/false$"):
        parse_params(with_value("run.compile", "yes"))


def with_values(**dotted):
    raw = copy.deepcopy(BASE)
    for key, value in dotted.items():
        node = raw
        *parents, last = key.split("__")
        for k in parents:
            node = node[k]
        node[last] = value
    return raw


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"distill__checkpoint": "best_val"},
            "distill.checkpoint = best_val needs a validation split: set data.val_limit",
        ),
        (
            {"distill__method": "sat", "distill__igdm__alpha": 1.0},
            "distill.igdm.alpha = 1 with method sat: IGDM composes with ard, rslad, mtard, "
            "bmtard, adaad only (0 turns it off)",
        ),
        (
            {"distill__method": "ciard", "run__processes": 2},
            "run.processes = 2 with distill.method ciard: it trains a network besides the "
            "student, which several processes do not share; use 1",
        ),
        (
            {"distill__method": "peeraid", "distill__peeraid__output": "swa"},
            "distill.peeraid.output = swa with checkpoint best: the weight average is written at "
            "the end of the run; set checkpoint: last",
        ),
        (
            {"clean_teacher__optim__weight_decay": None},
            "clean_teacher.optim.weight_decay = null: must be given (null is allowed in distill",
        ),
        (
            {"robust_teacher__optim__schedule": None},
            "robust_teacher.optim.schedule = null: must be given (null is allowed in distill",
        ),
        ({"distill__optim__schedule": "cosine"}, "distill.optim.schedule = 'cosine': allowed are"),
        ({"data__val_limit": 0}, "data.val_limit = 0: must be >= 1"),
        ({"distill__checkpoint": "best_test"}, "distill.checkpoint = 'best_test': allowed are"),
    ],
)
def test_the_new_methods_settings_are_checked_in_one_line(values, message):
    with pytest.raises(ParamsError) as e:
        parse_params(with_values(**values))
    assert str(e.value).startswith(message), str(e.value)


def test_nulls_take_each_methods_published_settings():
    """adaad and dgad: 200 epochs, steps at 100/150, weight decay 5e-4; ciard: cosine_exp;
    peeraid: its lr steps and its loss settings per dataset; adaad's KL reduction per dataset;
    dgad's bracket bug on for a MobileNetV2 student only."""
    d = parse_params(BASE).distill

    def resolved(method, dataset="cifar10", **extra):
        return dataclasses.replace(d, method=method, **extra).resolved(dataset)

    for m in ("adaad", "dgad"):
        o = resolved(m).optim
        assert (o.epochs, o.milestones, o.weight_decay, o.schedule) == (
            200, [100, 150], 5e-4, "step",
        )  # fmt: skip
    o = resolved("ciard").optim
    assert (o.epochs, o.milestones, o.weight_decay, o.schedule) == (
        300, [215, 260, 285], 2e-4, "cosine_exp",
    )  # fmt: skip
    assert resolved("peeraid").optim.milestones == [214, 259, 284]
    assert resolved("bmtard").optim.schedule == "step"
    assert [resolved("adaad", ds).kl_reduction for ds in ("cifar10", "cifar100")] == [
        "mean", "batchmean",
    ]  # fmt: skip
    assert resolved("bmtard", "cifar100").kl_reduction == "mean"
    p10, p100 = resolved("peeraid").peeraid, resolved("peeraid", "cifar100").peeraid
    assert (p10.temperature, p10.gamma2, p10.lambda1, p10.lambda3) == (5.0, 0.1, 0.0, 1.0)
    assert p100.gamma2 == 1.0
    tiny = resolved("peeraid", "tiny_imagenet").peeraid
    assert (tiny.temperature, tiny.gamma2, tiny.lambda1, tiny.lambda2, tiny.lambda3) == (
        1.0, 100.0, 0.035, 35.0, 20.0,
    )  # fmt: skip
    given = dataclasses.replace(d.peeraid, gamma2=0.5)
    assert resolved("peeraid", peeraid=given).peeraid.gamma2 == 0.5  # a number overrides
    assert resolved("dgad").dgad.bracket_bug is False
    assert resolved("dgad", arch="mobilenet_v2").dgad.bracket_bug is True
    assert resolved("dgad", "tiny_imagenet", arch=None).dgad.bracket_bug is True  # its student


def test_best_val_is_allowed_with_a_validation_split():
    p = parse_params(with_values(distill__checkpoint="best_val", data__val_limit=500))
    assert (p.distill.checkpoint, p.data.val_limit) == ("best_val", 500)
