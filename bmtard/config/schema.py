"""The schema of ``params.yaml``: one frozen dataclass per section, their fields' types (closed
vocabularies as ``Literal``), ranges (``_spec``) and cross-field rules (``__post_init__``).

Configuration flows one way: the YAML file is read once by ``bmtard.config.params`` (the strict
loader), checked completely against this schema and turned into these dataclasses; functions
receive them, never the raw dict. The defaults below serve code and tests that build configs
directly, and the stand-alone evaluate command (``parse_params(complete=False)``); a params file
must give every key.

Units: every attack size (``eps``, ``step_size``) is in 1/255 of the [0, 1] pixel range.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from bmtard.config import attack_table, dataset_table, method_table, teacher_table
from bmtard.core.errors import ParamsError

# The architecture names that bmtard.models builds (a test keeps the two lists equal; config does
# not import the models so that the data stage does not depend on model code).
ARCHS = (
    "resnet18", "preact_resnet18", "mobilenet_v2", "resnet56", "wrn34_10", "wrn70_16",
    "wrn34_10_nosub", "wrn34_20_nosub", "dm_wrn28_10_cifar10", "dm_wrn28_10_cifar100",
    "dm_wrn70_16_cifar10",
)  # fmt: skip

# The closed vocabularies, as the types of their fields: the loader allows exactly their values
# (bmtard.config.params). Those of the tables are made from them (one fact, one place).
Arch = Literal[ARCHS]
Dataset = Literal[dataset_table.NAMES]
MethodName = Literal[method_table.NAMES]
Published = Literal[teacher_table.NAMES]  # the published teachers' names (of any dataset)
AttackName = Literal[attack_table.NAMES]
Precision = Literal["fp32", "bf16"]
AttackCompile = Literal["eager", "inductor", "cudagraphs"]
#: the training attack's start (bmtard.attacks.pgd)
TrainInit = Literal["gaussian", "uniform", "uniform_unclamped"]
#: the lr schedules (bmtard.methods.decays.lr_factor): step decay at the milestones, or CIARD's
LrSchedule = Literal["step", "cosine_exp"]
#: the checkpoint selection rules of the student (bmtard.training.selection)
Selection = Literal["best", "best_val", "last"]
TeacherMethod = Literal["trades", "pgd_at"]
KlReduction = Literal["mean", "batchmean"]
#: the weights a method with a weight average writes as the student
Output = Literal["student", "swa"]

DATASETS = typing.get_args(Dataset)
METHODS = typing.get_args(MethodName)
TRAIN_INITS = typing.get_args(TrainInit)
LR_SCHEDULES = typing.get_args(LrSchedule)
SELECTIONS = typing.get_args(Selection)
EVAL_ATTACKS = typing.get_args(AttackName)
DEVICES_HELP = "'auto', 'cpu', 'cuda' or 'cuda:N'"

# Upper bounds: far beyond any sensible run, low enough that a typo (an extra zero, 1e300) stops
# here instead of in the middle of a run. Attack sizes are in 1/255 (255 = the whole pixel range).
MAX_SEED = 2**32 - 1  # numpy's limit
MAX_THREADS = 1024
MAX_PROCESSES = 64  # training processes of one stage (one node)
MAX_EPOCHS = 100_000  # also milestones
MAX_BATCH = 65_536
MAX_IMAGES = 10**7  # image counts and limits
MAX_EPOCH_INDEX = 10**6  # monitor every / dense_from (10**6 = "never")
MAX_EPS = 255  # eps, step sizes
MAX_STEPS = 10_000  # attack steps
MAX_RESTARTS = 1000
MAX_WIDTH = 8  # channel multiplier (the presets use 0.05 .. 1.0)
MAX_LR = 100
MAX_TAU = 1000  # temperatures and their step
MAX_SAVE_MINUTES = 7 * 24 * 60  # a week
MAX_KL_SCALE = 1000
MAX_DIVERGENCE_FACTOR = 1e12


def _spec(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules (ge, gt, le, lt, choices); for a list field the
    rules apply to each item."""
    if isinstance(default, list):
        value = list(default)
        return field(default_factory=lambda: list(value), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every training and evaluation stage."""

    seed: int = _spec(0, ge=0, le=MAX_SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True  # cudnn.deterministic, as the official code
    num_threads: int = _spec(0, ge=0, le=MAX_THREADS)  # CPU threads for torch; 0 = torch's default
    # training state is saved at every epoch end and, within an epoch, every this many minutes
    # (0 = after every batch; at most a week)
    save_every_minutes: float = _spec(10.0, ge=0, le=MAX_SAVE_MINUTES)
    # where training state is kept so that a killed stage resumes (outside DVC's and Snakemake's
    # outputs; null = never saved)
    state_dir: str | None = ".cache/train"
    # how the training stages compute (evaluation is always fp32, NCHW, eager):
    # fp32 is the official code's numerics; bf16 autocasts the student's forwards and backward
    # (PGD included) and holds the teachers in bf16, with the losses in fp32
    precision: Precision = "fp32"
    channels_last: bool = False  # channels_last memory layout for every model
    compile: bool = False  # torch.compile every model's forward (helps on GPUs, rarely on CPUs)
    # the training attack's fast path (bmtard/runtime/execution.py), each off by default:
    attack_fold_bn: bool = False  # BatchNorm folded into the convolutions (eval-mode attacks)
    attack_bf16: bool = False  # the attack's forwards and backward under bf16 autocast
    attack_no_param_grads: bool = False  # no parameter gradients in any attack (exact)
    attack_compile: AttackCompile = "eager"  # the attacked student compiled; cudagraphs on CUDA
    teachers_bf16: bool = False  # the teachers held and run in bf16
    # processes per training stage (torchrun workers, data parallel, one GPU each; 1 = the
    # faithful single process); each takes an equal share of every batch (bmtard.core.distributed)
    processes: int = _spec(1, ge=1, le=MAX_PROCESSES)
    # a training loss above this many times ln(classes) (the cross-entropy of a uniform guess)
    # is a divergence: the stage stops as on a non-finite loss (null = only non-finite stops)
    divergence_factor: float | None = _spec(1000.0, gt=1, le=MAX_DIVERGENCE_FACTOR)

    def __post_init__(self) -> None:
        d = self.device
        ok = d in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,4}", d) is not None
        if not ok:
            raise ParamsError(f"device = {d!r}: allowed are {DEVICES_HELP}")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how many are kept."""

    dataset: Dataset = "cifar10"  # bmtard.config.dataset_table
    # An existing `cifar-10-batches-py` / `cifar-100-python` / `tiny-imagenet-200` folder (or the
    # folder holding it), for machines without internet. null: download into download_root.
    local_root: str | None = None
    download_root: str = "data/raw"
    # The official MD5 check (for a local Tiny-ImageNet folder, which has no per-file MD5s: that it
    # is complete, 500 train and 50 val images per class). Set false only for a local subset;
    # the SHA-256 of what was read is recorded in the manifest either way.
    verify_md5: bool = True
    train_limit: int | None = _spec(None, ge=1, le=MAX_IMAGES)  # balanced per class; null = all
    test_limit: int | None = _spec(None, ge=1, le=MAX_IMAGES)
    # images held out of the training split for validation (class-balanced, the last of each
    # class; never trained on by any stage): the student's distill.checkpoint best_val selects
    # on them; null = none
    val_limit: int | None = _spec(None, ge=1, le=MAX_IMAGES)


@dataclass(frozen=True)
class OptimConfig:
    """SGD with an lr schedule: ``step`` (lr x gamma after each epoch listed in milestones,
    1-based) or ``cosine_exp`` (CIARD's: constant, then cosine x exp over the second half of the
    run; the milestones then decay only the balance rates of the method).

    ``epochs``, ``milestones``, ``weight_decay`` and ``schedule`` may be null in ``distill.optim``
    only: the method's published values (``bmtard.config.method_table``), filled in by
    ``DistillConfig.resolved``."""

    epochs: int | None = _spec(300, ge=1, le=MAX_EPOCHS)
    batch_size: int = _spec(128, ge=1, le=MAX_BATCH)
    lr: float = _spec(0.1, gt=0, le=MAX_LR)
    momentum: float = _spec(0.9, ge=0, lt=1)
    weight_decay: float | None = _spec(2e-4, ge=0, le=1)
    # strictly increasing
    milestones: list[int] | None = _spec([215, 260, 285], ge=1, le=MAX_EPOCHS)
    gamma: float = _spec(0.1, gt=0, le=1)
    schedule: LrSchedule | None = "step"

    def __post_init__(self) -> None:
        m = self.milestones
        if m is not None and list(m) != sorted(set(m)):
            raise ParamsError(f"milestones = {m}: must be strictly increasing (no repeats)")


@dataclass(frozen=True)
class TrainAttackConfig:
    """The L-inf PGD attack used while training (eps, step_size in 1/255)."""

    eps: float = _spec(8.0, ge=0, le=MAX_EPS)
    step_size: float = _spec(2.0, gt=0, le=MAX_EPS)
    steps: int = _spec(10, ge=1, le=MAX_STEPS)
    # gaussian: x + 0.001*N(0,1), not clamped before the first step (the official code);
    # uniform: U(-eps, eps) start, clamped to [0, 1] (the usual PGD start);
    # uniform_unclamped: U(-eps, eps), not clamped before the first step (the official ARD);
    # null (distill.attack only): the method's (bmtard.config.method_table).
    init: TrainInit | None = "gaussian"

    def pgd_args(self) -> dict[str, Any]:
        """The keyword arguments of ``bmtard.attacks.pgd`` (eps and step_size in pixel units,
        converted by ``attack_table.pixels``); ``init`` resolved (not null)."""
        return {
            "eps": attack_table.pixels(self.eps),
            "step_size": attack_table.pixels(self.step_size),
            "steps": self.steps,
            "init": self.init,
        }


def _no_method_defaults(optim: OptimConfig, attack: TrainAttackConfig | None = None) -> None:
    """Teachers have no method table: their schedule and attack start must be given."""
    given = {
        "optim.epochs": optim.epochs,
        "optim.milestones": optim.milestones,
        "optim.weight_decay": optim.weight_decay,
        "optim.schedule": optim.schedule,
    }
    if attack is not None:
        given["attack.init"] = attack.init
    for key, value in given.items():
        if value is None:
            raise ParamsError(f"{key} = null: must be given (null is allowed in distill only)")


@dataclass(frozen=True)
class MonitorConfig:
    """In-training evaluation on the test split: clean accuracy and PGD-20 (step 0.003)."""

    every: int = _spec(20, ge=1, le=MAX_EPOCH_INDEX)  # evaluate at epoch 1 and every `every` ...
    dense_from: int = _spec(215, ge=1, le=MAX_EPOCH_INDEX)  # ... and every epoch from this one on
    n_images: int | None = _spec(None, ge=1, le=MAX_IMAGES)  # null = the whole test split
    batch_size: int = _spec(256, ge=1, le=MAX_BATCH)
    eps: float = _spec(8.0, ge=0, le=MAX_EPS)
    pgd_steps: int = _spec(20, ge=0, le=MAX_STEPS)  # 0 = clean accuracy only
    pgd_step_size: float = _spec(0.765, gt=0, le=MAX_EPS)  # 0.003 * 255, as the official monitor


@dataclass(frozen=True)
class CleanTeacherConfig:
    """Standard (non-adversarial) training of the clean teacher. A null ``arch`` is the dataset's
    (``bmtard.config.dataset_table``, filled in by ``resolved``)."""

    arch: Arch | None = "resnet56"
    width: float = _spec(1.0, gt=0, le=MAX_WIDTH)
    # the teacher's own seed (in place of run.seed), so that a student seed grid shares it
    seed: int = _spec(0, ge=0, le=MAX_SEED)
    # a file of weights to import instead of training: a published state_dict (with published,
    # that teacher's file wherever it is) or a bmtard model file
    checkpoint: str | None = None
    # a teacher of bmtard.config.teacher_table by name, imported instead of trained: it sets the
    # architecture (arch and width are not used); its file is checkpoint, or when that is null
    # teacher_table.default_path (teachers/<dataset>/<name>.pt)
    published: Published | None = None
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            epochs=200, lr=0.1, weight_decay=5e-4, milestones=[100, 150]
        )
    )
    monitor: MonitorConfig = field(
        default_factory=lambda: MonitorConfig(every=10, dense_from=10**6, pgd_steps=0)
    )

    def __post_init__(self) -> None:
        _no_method_defaults(self.optim)

    def resolved(self, dataset: str) -> CleanTeacherConfig:
        """This config with the architecture of its published teacher (width 1), or a null
        ``arch`` replaced by ``dataset``'s clean teacher."""
        return _with_arch(self, dataset_table.dataset(dataset).clean_teacher, dataset)


@dataclass(frozen=True)
class RobustTeacherConfig:
    """Adversarial training of the robust teacher: TRADES (default) or PGD-AT (Madry). A null
    ``arch`` is the dataset's (``bmtard.config.dataset_table``, filled in by ``resolved``)."""

    arch: Arch | None = "wrn34_10"
    width: float = _spec(1.0, gt=0, le=MAX_WIDTH)
    seed: int = _spec(0, ge=0, le=MAX_SEED)  # the teacher's own seed (in place of run.seed)
    checkpoint: str | None = None  # as clean_teacher.checkpoint
    published: Published | None = None  # as clean_teacher.published
    method: TeacherMethod = "trades"
    trades_beta: float = _spec(6.0, ge=0, le=1000)
    attack: TrainAttackConfig = field(default_factory=lambda: TrainAttackConfig(init="gaussian"))
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=76, milestones=[75, 90, 100])
    )
    monitor: MonitorConfig = field(
        default_factory=lambda: MonitorConfig(every=10, dense_from=10**6)
    )

    def __post_init__(self) -> None:
        _no_method_defaults(self.optim, self.attack)

    def resolved(self, dataset: str) -> RobustTeacherConfig:
        """This config with the architecture of its published teacher (width 1), or a null
        ``arch`` replaced by ``dataset``'s robust teacher."""
        return _with_arch(self, dataset_table.dataset(dataset).robust_teacher, dataset)


def _with_arch(cfg: Any, arch: str, dataset: str) -> Any:
    """``cfg`` with its published teacher's architecture at width 1, or ``arch`` where its own
    is null."""
    if cfg.published is not None:
        spec = teacher_table.teacher(cfg.published, dataset)
        return dataclasses.replace(cfg, arch=spec.arch, width=1.0)
    return cfg if cfg.arch is not None else dataclasses.replace(cfg, arch=arch)


@dataclass(frozen=True)
class BalanceConfig:
    """Entropy-Based Balance (temperatures) and Normalization Loss Balance (weights)."""

    tau_adv_init: float = _spec(1.0, gt=0, le=MAX_TAU)
    tau_nat_init: float = _spec(1.0, gt=0, le=MAX_TAU)
    tau_min: float = _spec(1.0, gt=0, le=MAX_TAU)
    tau_max: float = _spec(10.0, gt=0, le=MAX_TAU)
    tau_lr: float = _spec(0.001, ge=0, le=MAX_TAU)  # sign-step of the temperatures per batch
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
class ARDConfig:
    """ARD's loss: alpha * T^2 * KL at temperature T + (1 - alpha) * CE (official defaults)."""

    temperature: float = _spec(30.0, gt=0, le=MAX_TAU)
    alpha: float = _spec(1.0, ge=0, le=1)


@dataclass(frozen=True)
class IGDMConfig:
    """IGDM (Lee et al., ICLR 2025) on the method's loss: + alpha * (epoch / ramp_epochs) *
    KL(softmax(T(x+beta d) - T(x-gamma d)) || softmax(S(x+beta d) - S(x-gamma d))), d the method's
    own adversarial perturbation, T its robust teacher (bmtard.methods.igdm)."""

    alpha: float = _spec(0.0, ge=0, le=1000)  # 0 = off
    beta: float = _spec(1.0, ge=0, le=100)
    gamma: float = _spec(1.0, ge=0, le=100)
    ramp_epochs: int = _spec(200, ge=1, le=MAX_EPOCHS)  # the official 200, not clamped at 1
    clamp_minus: bool = False  # clamp x - gamma d to [0, 1] (the official code does not)


@dataclass(frozen=True)
class AdaADConfig:
    """AdaAD's loss: alpha * KL(T(x') || S(x')) + (1 - alpha) * KL(T(x) || S(x))."""

    alpha: float = _spec(1.0, ge=0, le=1)


@dataclass(frozen=True)
class DGADConfig:
    """DGAD's loss: the split KL terms + beta * the consistency term (bmtard.methods.dgad)."""

    beta: float = _spec(1.0, ge=0, le=1000)
    # divide by the configured batch size, as the official code (its "128"), not the batch's
    fixed_divisor: bool = True
    # the official MobileNetV2 branch's bracket bug (a product of the two KL terms); null = on
    # for a mobilenet_v2 student, off for the others
    bracket_bug: bool | None = None
    # a batch the teacher gets all wrong has no AT term (the code stops there with a division
    # by zero); false: divide by zero, the NaN stops the run
    guard_all_st: bool = True

    def resolved(self, dataset: str, student: str) -> DGADConfig:
        """A null ``bracket_bug`` on for a MobileNetV2 student (the official branch's)."""
        if self.bracket_bug is not None:
            return self
        return dataclasses.replace(self, bracket_bug=student == "mobilenet_v2")


@dataclass(frozen=True)
class CIARDConfig:
    """CIARD's robust teacher fine-tuning, push term and switches (bmtard.methods.ciard)."""

    teacher_lr: float = _spec(1e-4, ge=0, le=MAX_LR)
    teacher_momentum: float = _spec(0.1, ge=0, lt=1)
    teacher_weight_decay: float = _spec(2e-4, ge=0, le=1)
    teacher_from: int = _spec(50, ge=1, le=MAX_EPOCHS)  # the teacher trains after this epoch
    push_temperature: float = _spec(5.0, gt=0, le=MAX_TAU)  # on the student's side of the push
    weighted: bool = False  # w_adv L1 + w_nat L2 (March 2025); false: L1 + L2 (the code's HEAD)
    per_step_decay: bool = True  # the code's decay of the balance rates on every milestone batch
    teacher_clean_pass: bool = True  # the robust teacher's unused forward on x (moves its BN)


@dataclass(frozen=True)
class PeerAiDConfig:
    """PeerAiD's losses (null: the published value on the data's dataset) and weight averaging
    (bmtard.methods.peeraid)."""

    temperature: float | None = _spec(None, gt=0, le=MAX_TAU)  # T of the student's KL terms
    peer_temperature: float | None = _spec(None, gt=0, le=MAX_TAU)  # T_r of the peer's KL
    gamma1: float | None = _spec(None, ge=0, le=1000)  # the peer's CE
    gamma2: float | None = _spec(None, ge=0, le=1000)  # the peer's KL to the student
    lambda1: float | None = _spec(None, ge=0, le=1000)  # the student's CE
    lambda2: float | None = _spec(None, ge=0, le=1000)  # the student's KL to the peer
    lambda3: float | None = _spec(None, ge=0, le=1000)  # the student's KL to its clean self
    # weight averaging of the student at the end of this epoch and each later one (the code's
    # 0-based "epoch >= 214": the first epoch at the decayed lr)
    swa_from: int = _spec(215, ge=1, le=MAX_EPOCHS)
    # the weights written as the student: its own, or the weight average (needs checkpoint last)
    output: Output = "student"
    peer_kl_trains_student: bool = True  # the peer's KL target S(x') is not detached (the code)
    second_student_forward: bool = True  # the student runs twice on x' (the code; BN moves twice)
    live_clean_target: bool = True  # S(x) in the student's third KL is not detached (the code)

    def check(self, distill: DistillConfig) -> None:
        _needs_last("peeraid", self.output, distill.checkpoint)

    def resolved(self, dataset: str, student: str) -> PeerAiDConfig:
        """Each null loss setting by its published value on ``dataset``
        (``method_table.PEERAID``)."""
        published = method_table.peeraid_settings(dataset)
        given = {k: v for k, v in published.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **given) if given else self


@dataclass(frozen=True)
class SAADConfig:
    """SAAD's sample weights, its IGDM term, its attack and weight averaging (bmtard.methods.saad;
    null: the published value, ``method_table.SAAD`` on the data's dataset, or the run's epochs)."""

    igdm_alpha: float | None = _spec(None, ge=0, le=1000)  # the IGDM term's weight
    # its ramp alpha * epoch / ramp_epochs; null: the run's epochs (the code's epoch / epochs)
    ramp_epochs: int | None = _spec(None, ge=1, le=MAX_EPOCHS)
    clean_weight: float = _spec(0.0, ge=0, le=1000)  # (1 - w_norm) KL(T(x) || S(x)), --beta
    renyi_order: float = _spec(
        1.0, gt=0, le=100
    )  # the teacher's entropy on x', --gamma (1: Shannon)
    entropy_scale: float = _spec(5.0, ge=0, le=1000)  # w = scale (H - min H): the code's 5
    linearization: float = _spec(
        1.0, ge=0, le=100
    )  # the attack's teacher correction, --lambda_inner
    swa_from: int = _spec(95, ge=1, le=MAX_EPOCHS)  # averaging at the end of this epoch and later
    # the weights written as the student: the student's own (selected by distill.checkpoint, the
    # harness's protocol) or the weight average (the code's protocol: with checkpoint last)
    output: Output = "student"
    final_bn_pass: bool = True  # the code's second BatchNorm pass after the last epoch's
    clamp_minus: bool = False  # clamp x - d of the IGDM term to [0, 1] (the code does not)

    def check(self, distill: DistillConfig) -> None:
        _needs_last("saad", self.output, distill.checkpoint)

    def resolved(self, dataset: str, student: str) -> SAADConfig:
        """A null ``igdm_alpha`` by its published value on ``dataset``."""
        if self.igdm_alpha is not None:
            return self
        return dataclasses.replace(self, **method_table.saad_settings(dataset))


@dataclass(frozen=True)
class DistillConfig:
    """Training of the student: B-MTARD, or a baseline of the paper's comparison
    (``bmtard.config.method_table``). Null ``optim.epochs``, ``optim.milestones`` and
    ``attack.init`` take the method's published values, a null ``arch`` and ``kl_scale`` the
    dataset's (``bmtard.config.dataset_table``); ``resolved`` fills them in."""

    method: MethodName = "bmtard"
    arch: Arch | None = "resnet18"
    width: float = _spec(1.0, gt=0, le=MAX_WIDTH)
    optim: OptimConfig = field(default_factory=OptimConfig)
    attack: TrainAttackConfig = field(default_factory=TrainAttackConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)  # bmtard; mtard: its w_ keys
    ard: ARDConfig = field(default_factory=ARDConfig)
    trades_beta: float = _spec(6.0, ge=0, le=1000)  # trades
    adaad: AdaADConfig = field(default_factory=AdaADConfig)
    dgad: DGADConfig = field(default_factory=DGADConfig)
    ciard: CIARDConfig = field(default_factory=CIARDConfig)
    peeraid: PeerAiDConfig = field(default_factory=PeerAiDConfig)
    saad: SAADConfig = field(default_factory=SAADConfig)
    igdm: IGDMConfig = field(default_factory=IGDMConfig)  # on ard, rslad, mtard, bmtard, adaad
    # mean: torch.mean over batch x classes, i.e. KL / C (the official code);
    # batchmean: the KL divergence averaged over the batch (the textbook scale);
    # null: the method's official reduction on the dataset (mean; adaad: batchmean off CIFAR-10)
    kl_reduction: KlReduction | None = None
    # the factor on the KL terms of rslad, mtard and bmtard; null: the official convention, x 10
    # on CIFAR-100 (the mean over 100 classes), 1 elsewhere (bmtard.config.dataset_table)
    kl_scale: float | None = _spec(1.0, gt=0, le=MAX_KL_SCALE)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # best: highest (clean + PGD-20)/2 on the monitor, i.e. selected on the test set
    # (the official code); best_val: the same on the validation split (data.val_limit), never
    # on the test set; last: the final epoch, with no selection.
    checkpoint: Selection = "best"

    def resolved(self, dataset: str) -> DistillConfig:
        """This config with every null replaced by the method's published value or, for ``arch``
        and ``kl_scale``, by ``dataset``'s; and each method's own section by its ``resolved``
        (``dataset``, the student's arch) where it has one (PeerAiD's published loss settings,
        DGAD's bracket bug)."""
        spec = method_table.method(self.method)
        data = dataset_table.dataset(dataset)
        o, a = self.optim, self.attack

        def given(value: Any, default: Any) -> Any:
            return default if value is None else value

        optim = dataclasses.replace(
            o,
            epochs=given(o.epochs, spec.epochs),
            milestones=given(o.milestones, list(spec.milestones)),
            weight_decay=given(o.weight_decay, spec.weight_decay),
            schedule=given(o.schedule, spec.schedule),
        )
        attack = dataclasses.replace(a, init=given(a.init, spec.init))
        convention = data.kl_scale if spec.kl_convention else 1.0
        arch = given(self.arch, data.student)
        sections = {
            f.name: getattr(self, f.name).resolved(dataset, arch)
            for f in dataclasses.fields(self)
            if hasattr(getattr(self, f.name), "resolved")
        }
        out = dataclasses.replace(
            self,
            arch=arch,
            kl_scale=given(self.kl_scale, convention),
            kl_reduction=given(self.kl_reduction, method_table.kl_reduction(self.method, dataset)),
            optim=optim,
            attack=attack,
            **sections,
        )
        return self if out == self else out

    def __post_init__(self) -> None:
        spec = method_table.method(self.method)
        if self.igdm.alpha > 0 and not spec.igdm:
            on = ", ".join(m.name for m in method_table.METHODS if m.igdm)
            raise ParamsError(
                f"igdm.alpha = {self.igdm.alpha:g} with method {self.method}: IGDM composes "
                f"with {on} only (0 turns it off)"
            )
        own = getattr(self, self.method, None)  # the method's own section (distill.<method>)
        if hasattr(own, "check"):
            own.check(self)


def _needs_last(section: str, output: str, checkpoint: str) -> None:
    """A method that writes its weight average as the student needs ``checkpoint: last``."""
    if output == "swa" and checkpoint != "last":
        raise ParamsError(
            f"{section}.output = swa with checkpoint {checkpoint}: the weight average is "
            f"written at the end of the run; set checkpoint: last (or {section}.output: student)"
        )


@dataclass(frozen=True)
class SanityConfig:
    """Gradient-masking checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness", and
    AutoAttack's own flags), run on the first ``n_images`` evaluated images. Accuracies in %."""

    enabled: bool = True
    n_images: int | None = _spec(1000, ge=1, le=MAX_IMAGES)  # null = every evaluated image
    large_eps: float = _spec(64.0, gt=0, le=MAX_EPS)  # at this eps white-box accuracy must be ~0
    large_eps_max_acc: float = _spec(2.0, ge=0, le=100)  # ... at most this (%)
    strong_steps: int = _spec(100, ge=1, le=MAX_STEPS)  # a stronger PGD: more steps ...
    strong_restarts: int = _spec(5, ge=1, le=MAX_RESTARTS)  # ... and restarts (step 2.5 eps/steps)
    square_queries: int = _spec(1000, ge=1, le=10**6)  # black-box Square (reference AutoAttack)
    transfer: bool = True  # PGD crafted on the robust teacher, applied to the student
    gradient_samples: int = _spec(100, ge=1, le=MAX_IMAGES)  # images whose gradients are inspected
    tolerance: float = _spec(1.0, ge=0, le=100)  # % points a comparison may miss by before it fails
    fail_stage: bool = False  # a failed check fails the stage (after writing every output)


@dataclass(frozen=True)
class EvaluateConfig:
    """Final attack evaluation of the student (and a short check of both teachers)."""

    n_images: int | None = _spec(None, ge=1, le=MAX_IMAGES)  # first n test images; null = all
    batch_size: int = _spec(256, ge=1, le=MAX_BATCH)
    eps: float = _spec(8.0, ge=0, le=MAX_EPS)
    attacks: list[AttackName] = _spec(list(EVAL_ATTACKS))
    cw_kappa: float = _spec(50.0, ge=0, le=10**6)  # CW margin confidence, as the RSLAD/MTARD code
    teacher_n_images: int | None = _spec(None, ge=1, le=MAX_IMAGES)  # null = n_images
    # PGD-20 (step eps/4, uniform start) accuracy at each eps (1/255): a plot and a sanity check
    eps_curve: list[float] = _spec([0.0, 2.0, 4.0, 8.0, 16.0], ge=0, le=MAX_EPS)
    # per-batch results are kept here so that an interrupted evaluation resumes (null = off)
    resume_dir: str | None = ".cache/evaluate"
    sanity: SanityConfig = field(default_factory=SanityConfig)

    def __post_init__(self) -> None:
        c = self.eps_curve
        if list(c) != sorted(set(c)):
            raise ParamsError(f"eps_curve = {c}: must be strictly increasing (no repeats)")


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    clean_teacher: CleanTeacherConfig = field(default_factory=CleanTeacherConfig)
    robust_teacher: RobustTeacherConfig = field(default_factory=RobustTeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        if self.distill.checkpoint == "best_val" and self.data.val_limit is None:
            raise ParamsError(
                "distill.checkpoint = best_val needs a validation split: set data.val_limit "
                "(images held out of the training split)"
            )
        for section in ("clean_teacher", "robust_teacher"):
            name = getattr(self, section).published
            if name is not None:  # a name of the table, but of this dataset?
                teacher_table.teacher(name, self.data.dataset, f"{section}.published")
        n = self.run.processes
        if n > 1 and method_table.method(self.distill.method).own_networks:
            raise ParamsError(
                f"run.processes = {n} with distill.method {self.distill.method}: it trains a "
                "network besides the student, which several processes do not share; use 1"
            )
        for section in ("clean_teacher", "robust_teacher", "distill"):
            size = getattr(self, section).optim.batch_size
            if size % n:
                raise ParamsError(
                    f"run.processes = {n} must divide {section}.optim.batch_size ({size}): "
                    "each process takes an equal share of every batch"
                )


SECTIONS = tuple(f.name for f in dataclasses.fields(Params))


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config dataclass (for logging and checkpoints)."""
    return dataclasses.asdict(obj)
