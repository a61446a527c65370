"""The student-training methods of the paper's comparison, declared once (spec section 9).

Every reader derives from ``METHODS``: the allowed values of ``distill.method``
(``bmtard.config.params``), which teachers the pipeline trains and loads for a method (the teacher
stages, the distillation and the evaluation), and each method's published settings, which fill the
``null`` values of ``distill.optim.epochs``, ``distill.optim.milestones`` and
``distill.attack.init``. Plain data, no torch: the configuration imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: teacher roles (clean | robust)
CLEAN, ROBUST = "clean", "robust"
#: the pipeline's stage that trains each teacher (dvc.yaml)
TEACHER_STAGES = {CLEAN: "train_clean_teacher", ROBUST: "train_robust_teacher"}
#: the schedule of B-MTARD, MTARD and RSLAD's official code: 300 epochs, lr x 0.1 after 215/260/285
DISTILL_EPOCHS, DISTILL_MILESTONES = 300, (215, 260, 285)
#: AdaAD's (and DGAD's, a fork of it): 200 epochs, lr x 0.1 after 100 and 150, weight decay 5e-4
ADAAD_EPOCHS, ADAAD_MILESTONES, ADAAD_WEIGHT_DECAY = 200, (100, 150), 5e-4
WEIGHT_DECAY = 2e-4  # everyone else's


@dataclass(frozen=True)
class MethodSpec:
    """One way of training the student.

    teachers: the roles it learns from (none, the robust one, or both). epochs, milestones, init,
    weight_decay, schedule: its published schedule and training-attack start (``distill.optim``
    and ``distill.attack`` take these where they are null; ``schedule`` is an lr schedule of
    ``bmtard.training.schedule``: step decay at the milestones, or CIARD's cosine_exp, whose
    milestones decay only its balance rates). igdm: whether the IGDM module composes with it
    (``distill.igdm``). own_networks: it trains networks besides the student (a peer, a fine-tuned
    teacher), which are not wrapped for several processes. source: where the settings come from.
    """

    name: str  # the value of distill.method, and the method in records and tables
    label: str  # how tables and plots name it (the paper's)
    teachers: tuple[str, ...]
    epochs: int
    milestones: tuple[int, ...]
    init: str  # the training attack's start (bmtard.attacks.pgd INITS)
    # whether its official code follows the KL-helper convention that scales the KL terms by the
    # dataset's factor (x 10 on CIFAR-100: bmtard.config.dataset_table, distill.kl_scale null)
    kl_convention: bool
    source: str
    weight_decay: float = WEIGHT_DECAY
    schedule: str = "step"
    igdm: bool = False
    own_networks: bool = False
    fine_tunes: tuple[str, ...] = ()  # the teachers it trains further (loaded, not frozen)
    # the KL's reduction per dataset where distill.kl_reduction is null ("mean": over batch x
    # classes, the official helper's; "batchmean": the textbook KL); the default for the others
    kl_reduction: tuple[tuple[str, str], ...] = ()
    kl_reduction_default: str = "mean"
    # the module of bmtard.methods that holds it and registers its builder ("" = its name)
    module: str = ""

    def __post_init__(self) -> None:
        if not self.module:
            object.__setattr__(self, "module", self.name)


METHODS = (
    MethodSpec(
        "sat", "SAT", (), DISTILL_EPOCHS, DISTILL_MILESTONES, "uniform", False,
        "PGD-AT (Madry et al.) of the student alone: CE on PGD-CE examples from a uniform start; "
        "the schedule is not given by the paper, the distillation one is used",
    ),
    MethodSpec(
        "trades", "TRADES", (), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", False,
        "TRADES (Zhang et al.) of the student alone, beta distill.trades_beta, the TRADES code's "
        "KL attack from the 0.001-Gaussian start; the distillation schedule",
    ),
    MethodSpec(
        "ard", "ARD", (ROBUST,), 200, (100, 150), "uniform_unclamped", False,
        "ARD's main.py: robust teacher on clean x, tau 30, alpha 1, train-mode PGD-CE from an "
        "unclamped uniform start, 200 epochs with lr steps at 100 and 150; its nn.KLDivLoss has "
        "no CIFAR-100 factor",
        igdm=True,
    ),
    MethodSpec(
        "rslad", "RSLAD", (ROBUST,), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "RSLAD's code: robust teacher on clean x at tau 1, KL attack, weights 5/6 and 1/6",
        igdm=True,
    ),
    MethodSpec(
        "mtard", "MTARD", (CLEAN, ROBUST), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "MTARD's ECCV code: both teachers at tau 1, w_adv = 1 - w_nat (distill.balance's "
        "w_adv_init and weight_lr)",
        igdm=True,
    ),
    MethodSpec(
        "bmtard", "B-MTARD", (CLEAN, ROBUST), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "B-MTARD's official code: Entropy-Based Balance and Normalization Loss Balance",
        igdm=True, module="b_mtard",
    ),
    MethodSpec(
        "adaad", "AdaAD", (ROBUST,), ADAAD_EPOCHS, ADAAD_MILESTONES, "gaussian", False,
        "AdaAD's main.py and AT_helper.py (boyellow/AdaAD 9e5c6e5): the attack maximises the "
        "summed KL through the student and the teacher; alpha KL(T(x')||S(x')) + (1 - alpha) "
        "KL(T(x)||S(x)), alpha 1; nn.KLDivLoss's mean over batch x classes on CIFAR-10, sum / "
        "batch on CIFAR-100 (no Tiny-ImageNet branch: ours is CIFAR-100's); 200 epochs, lr steps "
        "at 100 and 150, weight decay 5e-4",
        weight_decay=ADAAD_WEIGHT_DECAY, igdm=True,
        kl_reduction=(("cifar10", "mean"),), kl_reduction_default="batchmean",
    ),
    MethodSpec(
        "dgad", "DGAD", (ROBUST,), ADAAD_EPOCHS, ADAAD_MILESTONES, "gaussian", False,
        "DGAD's main.py (kunsaram01/DGAD a0329c8, a fork of AdaAD): AdaAD's attack; the batch "
        "split by whether the teacher gets the clean image right, its logits swapped, per-sample "
        "KL sums over the configured batch size, and the consistency term; AdaAD's schedule",
        weight_decay=ADAAD_WEIGHT_DECAY,
    ),
    MethodSpec(
        "ciard", "CIARD", (CLEAN, ROBUST), DISTILL_EPOCHS, DISTILL_MILESTONES, "gaussian", True,
        "CIARD.py (CIARD2025/CIARD 93a9a2d): both teachers, B-MTARD's entropy balance, the push "
        "term on what the clean teacher gets wrong, the robust teacher fine-tuned in train mode "
        "from epoch 50; lr 0.1, then cosine x exp from epoch 150 (its milestones decay the "
        "balance rates only); the KL-helper convention on CIFAR-100 is ours (no official code)",
        schedule="cosine_exp", own_networks=True, fine_tunes=(ROBUST,),
    ),
    MethodSpec(
        "peeraid", "PeerAiD", (), DISTILL_EPOCHS, (214, 259, 284), "gaussian", False,
        "PeerAiD's main.py (jaewonalive/PeerAiD cd12e92): no pretrained teacher, a peer of the "
        "student's architecture trained with it on the student's adversarial examples, weight "
        "averaging of the student from epoch 214 with a BatchNorm pass at each epoch's end; lr "
        "steps at 214, 259 and 284",
        own_networks=True,
    ),
    MethodSpec(
        "saad", "SAAD", (ROBUST,), ADAAD_EPOCHS, ADAAD_MILESTONES, "gaussian", False,
        "SAAD's saad.py (HongsinLee/saad 295121c, no licence: written from its description): "
        "per-sample weights 5 (H - min H) from the teacher's Renyi entropy on x' on AdaAD's KL "
        "and IGDM's term (ramp epoch / epochs), the attack on the student against the teacher's "
        "logits linearised in x (its input gradient of the true class), weight averaging from "
        "epoch 95 with a BatchNorm pass, the average written at the last epoch; 200 epochs, lr "
        "steps at 100 and 150, weight decay 2e-4 (the code's; the paper says 5e-4)",
    ),
)  # fmt: skip

NAMES = tuple(m.name for m in METHODS)
BY_NAME = {m.name: m for m in METHODS}


def method(name: str) -> MethodSpec:
    """The spec of ``name`` (one of ``NAMES``)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: allowed are {', '.join(NAMES)}") from None


#: PeerAiD's published loss settings per dataset (distill.peeraid's nulls): its
#: training_scripts/resnet18_{cifar10,cifar100,tinyimagenet}.sh (--temperature T,
#: --re_kd_temperature T_r, --gamma1/2, --lamb1/2/3); its WRN-34-10 scripts use the same values
PEERAID = {
    "cifar10": {"temperature": 5.0, "peer_temperature": 1.0, "gamma1": 1.0, "gamma2": 0.1,
                "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0},
    "cifar100": {"temperature": 5.0, "peer_temperature": 1.0, "gamma1": 1.0, "gamma2": 1.0,
                 "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0},
    "tiny_imagenet": {"temperature": 1.0, "peer_temperature": 1.0, "gamma1": 1.0, "gamma2": 100.0,
                      "lambda1": 0.035, "lambda2": 35.0, "lambda3": 20.0},
}  # fmt: skip


#: SAAD's published IGDM weight per dataset (distill.saad.igdm_alpha null): its saad.py's
#: comment "igdm_alpha = 1 for cifar10, 10 for cifar100, tinyimagenet" (main.sh: 1 on CIFAR-10)
SAAD = {
    "cifar10": {"igdm_alpha": 1.0},
    "cifar100": {"igdm_alpha": 10.0},
    "tiny_imagenet": {"igdm_alpha": 10.0},
}


def saad_settings(dataset: str) -> dict[str, float]:
    """SAAD's published settings on ``dataset``."""
    return dict(SAAD[dataset])


def peeraid_settings(dataset: str) -> dict[str, float]:
    """PeerAiD's published loss settings on ``dataset``."""
    return dict(PEERAID[dataset])


def kl_reduction(name: str, dataset: str) -> str:
    """The KL reduction ``name``'s official code uses on ``dataset``."""
    spec = method(name)
    return dict(spec.kl_reduction).get(dataset, spec.kl_reduction_default)


def needs(methods: str | list[str] | tuple[str, ...], role: str) -> bool:
    """Whether any of ``methods`` learns from the ``role`` teacher (clean | robust)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    return any(role in method(n).teachers for n in names)


def need_only(methods: str | list[str] | tuple[str, ...], role: str) -> tuple[str, ...]:
    """A stand-in for ``methods`` that keeps only whether one of them learns from the ``role``
    teacher: every method of the table that does, or every one that does not. A teacher stage
    given it does what it would do for ``methods``, and the stand-in changes only when that need
    does (Snakemake reruns a job, and every job after it, when its command changes)."""
    needed = needs(methods, role)
    return tuple(n for n in NAMES if needs(n, role) == needed)
