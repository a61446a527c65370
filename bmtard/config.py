"""Parameters: ``params.yaml`` -> validated, frozen dataclasses.

Configuration flows one way: the YAML file is read once, checked completely (unknown keys, types,
ranges, choices) and turned into the dataclasses below; functions receive these dataclasses, never
the raw dict. A bad value stops with one line naming the key and what is allowed, before any work.

Units: every attack size (``eps``, ``step_size``) is in 1/255 of the [0, 1] pixel range.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bmtard.errors import ParamsError

# The architecture names that bmtard.models builds (a test keeps the two lists equal; config does
# not import the models so that the data stage does not depend on model code).
ARCHS = ("resnet18", "preact_resnet18", "mobilenet_v2", "resnet56", "wrn34_10")
DATASETS = ("cifar10", "cifar100")
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"
EVAL_ATTACKS = ("fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")


def _spec(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules (ge, gt, le, lt, choices, item_choices)."""
    if isinstance(default, list):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every training and evaluation stage."""

    seed: int = _spec(0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True  # cudnn.deterministic, as the official code
    num_threads: int = _spec(0, ge=0)  # CPU threads for torch; 0 = torch's default

    def __post_init__(self) -> None:
        d = self.device
        ok = d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())
        if not ok:
            raise ParamsError(f"device = {d!r}: allowed are {DEVICES_HELP}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how many are kept."""

    dataset: str = _spec("cifar10", choices=DATASETS)
    # An existing `cifar-10-batches-py` / `cifar-100-python` folder (or the folder holding it),
    # for machines without internet. null: download with torchvision into download_root.
    local_root: str | None = None
    download_root: str = "data/raw"
    # The official MD5 check. Set false only for a local subset (its files cannot match the MD5s);
    # the SHA-256 of every file read is recorded in the manifest either way.
    verify_md5: bool = True
    train_limit: int | None = _spec(None, ge=1)  # balanced per class; null = all
    test_limit: int | None = _spec(None, ge=1)


@dataclass(frozen=True)
class OptimConfig:
    """SGD with step decay: lr x gamma after each epoch listed in milestones (1-based)."""

    epochs: int = _spec(300, ge=1)
    batch_size: int = _spec(128, ge=1)
    lr: float = _spec(0.1, gt=0)
    momentum: float = _spec(0.9, ge=0, lt=1)
    weight_decay: float = _spec(2e-4, ge=0)
    milestones: list[int] = _spec([215, 260, 285])
    gamma: float = _spec(0.1, gt=0, le=1)

    def __post_init__(self) -> None:
        m = self.milestones
        if any(x < 1 for x in m) or list(m) != sorted(set(m)):
            raise ParamsError(f"milestones = {m}: must be strictly increasing epochs >= 1")


@dataclass(frozen=True)
class TrainAttackConfig:
    """The L-inf PGD attack used while training (eps, step_size in 1/255)."""

    eps: float = _spec(8.0, ge=0)
    step_size: float = _spec(2.0, gt=0)
    steps: int = _spec(10, ge=1)
    # gaussian: x + 0.001*N(0,1), not clamped before the first step (the official code);
    # uniform: U(-eps, eps) start, clamped to [0, 1] (the usual PGD start).
    init: str = _spec("gaussian", choices=("gaussian", "uniform"))


@dataclass(frozen=True)
class MonitorConfig:
    """In-training evaluation on the test split: clean accuracy and PGD-20 (step 0.003)."""

    every: int = _spec(20, ge=1)  # evaluate at epoch 1 and every `every` epochs ...
    dense_from: int = _spec(215, ge=1)  # ... and every epoch from this one on
    n_images: int | None = _spec(None, ge=1)  # null = the whole test split
    batch_size: int = _spec(256, ge=1)
    eps: float = _spec(8.0, ge=0)
    pgd_steps: int = _spec(20, ge=0)  # 0 = clean accuracy only
    pgd_step_size: float = _spec(0.765, gt=0)  # 0.003 * 255, as the official monitor


@dataclass(frozen=True)
class CleanTeacherConfig:
    """Standard (non-adversarial) training of the clean teacher."""

    arch: str = _spec("resnet56", choices=ARCHS)
    width: float = _spec(1.0, gt=0)
    checkpoint: str | None = None  # an existing state_dict to use instead of training
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            epochs=200, lr=0.1, weight_decay=5e-4, milestones=[100, 150]
        )
    )
    monitor: MonitorConfig = field(
        default_factory=lambda: MonitorConfig(every=10, dense_from=10**6, pgd_steps=0)
    )


@dataclass(frozen=True)
class RobustTeacherConfig:
    """Adversarial training of the robust teacher: TRADES (default) or PGD-AT (Madry)."""

    arch: str = _spec("wrn34_10", choices=ARCHS)
    width: float = _spec(1.0, gt=0)
    checkpoint: str | None = None
    method: str = _spec("trades", choices=("trades", "pgd_at"))
    trades_beta: float = _spec(6.0, ge=0)
    attack: TrainAttackConfig = field(default_factory=lambda: TrainAttackConfig(init="gaussian"))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=76, milestones=[75, 90, 100])
    )
    monitor: MonitorConfig = field(
        default_factory=lambda: MonitorConfig(every=10, dense_from=10**6)
    )


@dataclass(frozen=True)
class BalanceConfig:
    """Entropy-Based Balance (temperatures) and Normalization Loss Balance (weights)."""

    tau_adv_init: float = _spec(1.0, gt=0)
    tau_nat_init: float = _spec(1.0, gt=0)
    tau_min: float = _spec(1.0, gt=0)
    tau_max: float = _spec(10.0, gt=0)
    tau_lr: float = _spec(0.001, ge=0)  # sign-step of the temperatures per batch
    w_adv_init: float = _spec(0.5, ge=0, le=1)  # w_nat = 1 - w_adv
    weight_lr: float = _spec(0.025, ge=0, le=1)  # EMA rate of the weights per batch

    def __post_init__(self) -> None:
        if self.tau_min > self.tau_max:
            raise ParamsError(f"tau_min = {self.tau_min} > tau_max = {self.tau_max}")
        for name in ("tau_adv_init", "tau_nat_init"):
            v = getattr(self, name)
            if not self.tau_min <= v <= self.tau_max:
                raise ParamsError(f"{name} = {v}: must lie in [tau_min, tau_max]")


@dataclass(frozen=True)
class DistillConfig:
    """B-MTARD distillation of the student from the two teachers."""

    arch: str = _spec("resnet18", choices=ARCHS)
    width: float = _spec(1.0, gt=0)
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: TrainAttackConfig = field(default_factory=TrainAttackConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    # mean: torch.mean over batch x classes, i.e. KL / C (the official code);
    # batchmean: the KL divergence averaged over the batch (the textbook scale).
    kl_reduction: str = _spec("mean", choices=("mean", "batchmean"))
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # best: highest (clean + PGD-20)/2 on the monitor, i.e. selected on the test set
    # (the official code); last: the final epoch, with no test-set selection.
    checkpoint: str = _spec("best", choices=("best", "last"))


@dataclass(frozen=True)
class SanityConfig:
    """Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness", and
    AutoAttack's own flags), run on the first ``n_images`` evaluated images. Accuracies in %."""

    enabled: bool = True
    n_images: int | None = _spec(1000, ge=1)  # null = every evaluated image
    large_eps: float = _spec(64.0, gt=0)  # at this eps (1/255) white-box accuracy must be ~0
    large_eps_max_acc: float = _spec(2.0, ge=0, le=100)  # ... at most this (%)
    strong_steps: int = _spec(100, ge=1)  # a stronger PGD: more steps ...
    strong_restarts: int = _spec(5, ge=1)  # ... and random restarts (step 2.5 eps / steps)
    square_queries: int = _spec(1000, ge=1)  # black-box Square (reference AutoAttack code)
    transfer: bool = True  # PGD crafted on the robust teacher, applied to the student
    gradient_samples: int = _spec(100, ge=1)  # images whose input gradients are inspected
    tolerance: float = _spec(1.0, ge=0)  # % points a comparison may miss by before it fails
    fail_stage: bool = False  # a failed check fails the stage (after writing every output)


@dataclass(frozen=True)
class EvaluateConfig:
    """Final attack evaluation of the student (and a short check of both teachers)."""

    n_images: int | None = _spec(None, ge=1)  # first n test images; null = all
    batch_size: int = _spec(256, ge=1)
    eps: float = _spec(8.0, ge=0)
    attacks: list[str] = _spec(list(EVAL_ATTACKS), item_choices=EVAL_ATTACKS)
    cw_kappa: float = _spec(50.0, ge=0)  # CW margin confidence, as the RSLAD/MTARD eval code
    teacher_n_images: int | None = _spec(None, ge=1)  # null = n_images
    # PGD-20 (step eps/4, uniform start) accuracy at each eps (1/255): a plot and a sanity check
    eps_curve: list[float] = _spec([0.0, 2.0, 4.0, 8.0, 16.0])
    # per-batch results are kept here so that an interrupted evaluation resumes (null = off)
    resume_dir: str | None = ".cache/evaluate"
    sanity: SanityConfig = field(default_factory=SanityConfig)

    def __post_init__(self) -> None:
        c = self.eps_curve
        if any(e < 0 for e in c) or list(c) != sorted(set(c)):
            raise ParamsError(f"eps_curve = {c}: must be strictly increasing values >= 0")


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clean_teacher: CleanTeacherConfig = field(default_factory=CleanTeacherConfig)
    robust_teacher: RobustTeacherConfig = field(default_factory=RobustTeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# --------------------------------------------------------------------------- loading


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return parse_params(raw or {})
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as loaded from YAML) into ``Params``."""
    return _build(Params, raw, "")


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(obj)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{prefix}{unknown[0]}: unknown key; allowed in {where}: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        values[name] = _convert(hints[name], value, f"{prefix}{name}", fields[name].metadata)
    try:
        return cls(**values)
    except ParamsError as e:  # a cross-field check in __post_init__ names its field locally
        raise ParamsError(f"{prefix}{e}") from None


def _convert(tp: Any, value: Any, key: str, rules: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, rules)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{key}.")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {_show(value)}: expected a list of {item_tp.__name__}")
        items = [_scalar(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        allowed = rules.get("item_choices")
        for i, v in enumerate(items):
            if allowed is not None and v not in allowed:
                raise ParamsError(f"{key}[{i}] = {v!r}: allowed are {', '.join(allowed)}")
        return items
    out = _scalar(tp, value, key)
    _check_rules(out, value, key, rules)
    return out


def _scalar(tp: type, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    raise ParamsError(f"{key} = {_show(value)}: expected {names.get(tp, tp.__name__)}")


def _check_rules(value: Any, written: Any, key: str, rules: Any) -> None:
    """Check ``value`` against ge/gt/le/lt/choices; messages quote the value as ``written``."""
    if "choices" in rules and value not in rules["choices"]:
        raise ParamsError(f"{key} = {written!r}: allowed are {', '.join(rules['choices'])}")
    for rule, op, ok in (
        ("ge", ">=", lambda b: value >= b),
        ("gt", ">", lambda b: value > b),
        ("le", "<=", lambda b: value <= b),
        ("lt", "<", lambda b: value < b),
    ):
        if rule in rules and not ok(rules[rule]):
            raise ParamsError(f"{key} = {written!r}: must be {op} {rules[rule]}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
