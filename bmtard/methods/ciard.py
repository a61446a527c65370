"""CIARD (Lu et al., ICCV 2025, arXiv 2509.12633): B-MTARD's two teachers and entropy balance, a
push away from the clean teacher's wrong predictions, and a robust teacher fine-tuned during the
distillation.

Written from the description of the official code (CIARD2025/CIARD at 93a9a2d, no licence:
nothing is copied): ``CIARD.py`` (a module-level training loop with the loss, ``push_loss``,
``scale_to_magnitude``, the balance and both lr schedules) and
``mtard_loss.py::robust_inner_loss_push`` (the attack and the forwards on x'); the weighted loss
of the March 2025 ``CIARD_cifar10.py`` (ec8a38e, renamed CIARD.py in ffc264c).

One step, per batch (x in [0, 1], y the labels), in the official order, which decides which
forward moves which BatchNorm statistics:

1. z_sn = S(x), the student in train mode, with graph;
2. T_nat(x), the clean teacher (frozen, eval mode);
3. T_rob(x) under ``no_grad``, the robust teacher in **train** mode: unused, it only moves the
   teacher's BatchNorm running statistics (``teacher_clean_pass``);
4. x' = PGD-CE on the student alone, in eval mode (the attack config: 10 steps of 2/255 in an
   8/255 ball from x + 0.001 N(0, 1), unclamped: ``init: gaussian``);
5. z_sa = S(x') (train mode), z_ta = T_rob(x') (train mode; with graph when the teacher trains
   this epoch), z_tna = T_nat(x') (eval mode);
6. L1 = KL(softmax(z_ta / tau_adv) || S(x')), L2 = KL(softmax(T_nat(x) / tau_nat) || S(x)) with
   the official KL helper (``bmtard.methods.losses.kl_to_teacher``: mean over B x C, 1e-5 guard;
   the teacher detached and tempered, the student not);
   the temperatures take one entropy sign step (``bmtard.methods.balance.entropy_step``, B-MTARD's
   Entropy-Based Balance, from the next batch on), and the MTARD-style weights w_adv, w_nat one
   EMA step from the first batch's reference losses (``weight_step``, ``reference_losses``);
7. the push term on the samples whose clean teacher is wrong on x' (argmax z_tna != y):
   L3 = KL(softmax(z_tna) || softmax(z_sa / push_temperature)) (the temperature on the
   **student's** side only), 0 when no sample qualifies; its weight
   s = 10^(min(floor log10 L1, floor log10 L2) - floor log10 L3) brings it to the magnitude of
   the others and carries no gradient;
8. loss = L1 + L2 - s L3 (``weighted``: w_adv L1 + w_nat L2 - s L3); the push is subtracted, so
   it is maximised, and it is not bounded above;
9. after the student's step (``after_step``): CE(z_ta, y) backward and a step of the teacher's own
   SGD, on every batch of every epoch after ``teacher_from``.

The robust teacher becomes part of the method: this class **takes ownership** of the module it
is given (as loaded from its file, frozen, fp32): it makes its parameters trainable, puts it in
train mode for the whole run, lays it out (and compiles it) like the student, and trains it with
its own SGD (momentum 0.1, weight decay 2e-4, lr teacher_lr x cosine x exp from ``teacher_from``
to ``teacher_until``, set in ``start_epoch``). Its weights, BatchNorm buffers and optimizer are in
``state_dict``; ``networks()`` names it ``robust_teacher`` for the student's checkpoint. It is not
wrapped for several processes: the caller refuses ``run.processes > 1`` for this method.

Official quirks kept by default, each with its switch:

- ``weighted`` (False): HEAD's total is L1 + L2, the weights w_adv, w_nat computed every batch
  but unused (the commit "update code", 255be6b, 2025-05-16, a rebuttal ablation); True is the
  March 2025 version's w_adv L1 + w_nat L2 (the push weight s still from the unweighted L1, L2).
- ``per_step_decay`` (True): ``CIARD.py``'s batch loop multiplies the balance rates (eta_w,
  eta_tau) by ``rate_decay`` "if epoch in [215, 260, 285]", i.e. after **every batch** of those
  epochs (391 times at batch 128), so tau and w freeze within epoch 215 (eta_tau and eta_w
  underflow to exactly 0.0 after its 321st and 323rd batches). False decays them once per
  milestone as B-MTARD does: the rates times ``rate_decay`` per milestone finished before the
  epoch.
- ``teacher_clean_pass`` (True): the robust teacher's forward on the clean x (train mode, no
  graph) that the official code computes for a commented-out push term: it only moves the
  teacher's BatchNorm statistics. False skips it.

Precision and synchronisation: bf16 autocast and channels_last through ``Execution`` as the other
methods (the losses in fp32 on ``logits32``; the clean teacher via ``Execution.teacher_logits``;
the trained teacher keeps fp32 weights and runs under autocast, like the student). A step does
not wait for the device: the official code reads L1, L2, L3 with ``.item()`` to compute s and
selects the push samples with ``nonzero``; here floor(log10 .) is a count of thresholds exceeded
(``magnitude``, equal to the official ``math.floor(math.log10(.))`` for every float32 value) and
the power of ten is looked up in a float32 table of the official ``10 ** d`` values, so s is the
official float bit for bit; the push samples are selected by masking the teacher's probabilities
(exactly 0 on the other rows) and the mean is rescaled by B / n (equal to the official mean up to
the rounding of the sum).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.method_table import CLEAN, ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.methods.balance import Balance
from bmtard.methods.contract import Build, Method
from bmtard.methods.decays import cosine_exp, decay_factor
from bmtard.methods.losses import kl_to_teacher, neg_entropy, teacher_probs
from bmtard.methods.registry import register
from bmtard.runtime.execution import Execution, logits32

#: the official milestones of the balance rates' decay (``distill.optim.milestones``)
OFFICIAL_MILESTONES = (215, 260, 285)
#: the official ``scale_to_magnitude`` adds this to a loss that is exactly 0 before its log10
ZERO_LOSS = 1e-7
#: the range of floor(log10 |v|) ``magnitude`` resolves: every positive float32 (1e-45 .. 3e38)
MAGNITUDES = range(-50, 51)
#: the range of exponents d of the push weight 10^d that ``push_scale`` looks up
EXPONENTS = range(-2 * 51, 2 * 51 + 1)


def teacher_lr_factor(epoch: int, start: int, end: int) -> float:
    """The robust teacher's lr multiplier in ``epoch`` (1-based): 0 up to ``start`` (it trains
    only when epoch > start), then ``cosine_exp`` from ``start`` to ``end``: about 1 just after
    ``start``, about 0 at ``end``. The official code sets lr 1e-4 already at epoch ``start`` but
    steps only when epoch > start, so 0 there changes nothing."""
    if epoch <= start:
        return 0.0
    if end <= start:
        raise ValueError(f"the teacher's lr schedule ends at epoch {end}, not after {start}")
    return cosine_exp(epoch, start, end)


@functools.cache
def _tables(device: torch.device) -> tuple[Tensor, Tensor]:
    """On ``device``: the float64 thresholds 10^k, k in MAGNITUDES, and the float32 weights
    10 ** d, d in EXPONENTS, as the official Python expression evaluates them (an int for d >= 0,
    a float below; torch rounds either to float32 as it does a Python scalar times a tensor)."""
    thresholds = torch.tensor([float(10**k) for k in MAGNITUDES], dtype=torch.float64)
    weights = torch.tensor([float(10**d) for d in EXPONENTS], dtype=torch.float32)
    return thresholds.to(device), weights.to(device)


def magnitude(v: Tensor) -> Tensor:
    """floor(log10 |v|) of a 0-dim tensor, as an int64 0-dim tensor on its device, without
    reading it back; 0 counts as 1e-7 (the official ``scale_to_magnitude``). Exact for every
    float32 value (a float32 is never strictly between 10^k and its float64 rounding)."""
    x = v.detach().to(torch.float64).abs()
    x = torch.where(x == 0, ZERO_LOSS, x)
    thresholds, _ = _tables(x.device)
    return (x >= thresholds).sum() + (MAGNITUDES.start - 1)


def push_scale(l_adv: Tensor, l_nat: Tensor, l_push: Tensor) -> Tensor:
    """The push weight s = 10^(min(floor log10 L1, floor log10 L2) - floor log10 L3) as a float32
    0-dim tensor without gradient (the official ``scale_to_magnitude`` on ``.item()`` values, bit
    for bit); NaN if any loss is not finite (where the official code raises)."""
    d = torch.minimum(magnitude(l_adv), magnitude(l_nat)) - magnitude(l_push)
    _, weights = _tables(d.device)
    s = torch.take(weights, (d - EXPONENTS.start).clamp(0, len(EXPONENTS) - 1))
    finite = torch.isfinite(torch.stack([l_adv.detach(), l_nat.detach(), l_push.detach()])).all()
    return torch.where(finite, s, float("nan"))


@dataclass
class CIARD(Method):
    """One CIARD step per batch (module docstring), with no host-device synchronisation.

    teacher_adv: the robust teacher as loaded (fp32, any mode): taken over and trained.
    teacher_nat: the clean teacher, frozen (``Execution.teacher``).
    attack: the student's training attack (official: 10 steps of 2/255, eps 8/255, ``gaussian``).
    balance: tau_adv, tau_nat, w_adv, w_nat and their rates (``Balance.from_config`` of
        ``distill.balance``; official: tau 1 in [1, 10], tau_lr 0.001, w 0.5, weight_lr 0.025).
    teacher_lr, teacher_momentum, teacher_weight_decay: the teacher's SGD (official 1e-4, 0.1,
        2e-4; no Nesterov, no dampening).
    teacher_from: the teacher trains in the epochs after this one (official 50: ``epoch > 50``).
    teacher_until: where its cosine x exp lr ends (official 300, the last epoch).
    push_temperature: the student's temperature inside the push term (official 5).
    milestones, rate_decay: the balance rates' decay (``distill.optim.milestones`` and ``gamma``;
        official [215, 260, 285] and 0.1).
    weighted, per_step_decay, teacher_clean_pass: the switches of the module docstring.
    kl_reduction, kl_scale: as B-MTARD's, on L1 and L2 (``kl_reduction`` on L3 too; L3's scale
        follows L1 and L2 through s).

    Logs: loss, loss_adv (L1), loss_nat (L2), loss_push (L3), push_scale (s, 0 when no sample
    qualifies), push_frac (the share of the batch pushed), teacher_ce (the robust teacher's CE
    on x', also in the epochs it does not train). ``status``: tau_adv, tau_nat, w_adv, w_nat,
    teacher_lr.
    """

    teacher_adv: nn.Module
    teacher_nat: nn.Module
    attack: TrainAttackConfig
    balance: Balance
    teacher_lr: float = 1e-4
    teacher_momentum: float = 0.1
    teacher_weight_decay: float = 2e-4
    teacher_from: int = 50
    teacher_until: int = 300
    push_temperature: float = 5.0
    milestones: Sequence[int] = OFFICIAL_MILESTONES
    rate_decay: float = 0.1
    weighted: bool = False
    per_step_decay: bool = True
    teacher_clean_pass: bool = True
    kl_reduction: str = "mean"
    kl_scale: float = 1.0
    execution: Execution = field(default_factory=Execution)

    def __post_init__(self) -> None:
        t = self.teacher_adv
        low = sorted({str(p.dtype) for p in t.parameters() if p.dtype != torch.float32})
        if low:
            raise ValueError(
                f"CIARD trains the robust teacher: pass it in fp32 as loaded, not through "
                f"Execution.teacher (its parameters are {', '.join(low)})"
            )
        t.requires_grad_(True)
        t.train()
        self.execution.student(t)
        self.optimizer = torch.optim.SGD(
            t.parameters(),
            lr=0.0,
            momentum=self.teacher_momentum,
            weight_decay=self.teacher_weight_decay,
        )
        self.milestones = tuple(self.milestones)
        self.epoch = 0  # set by start_epoch
        self._pending: Tensor | None = None  # the teacher's CE, stepped in after_step

    @property
    def teacher_trains(self) -> bool:
        """Whether the robust teacher takes a step on this epoch's batches (epoch > from)."""
        return self.epoch > self.teacher_from

    def start_epoch(self, epoch: int) -> None:
        """Learn the epoch (1-based) and set the teacher's lr for it."""
        self.epoch = epoch
        lr = self.teacher_lr * teacher_lr_factor(epoch, self.teacher_from, self.teacher_until)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ex, b, teacher = self.execution, self.balance, self.teacher_adv
        x = ex.layout(x)
        model.train()
        teacher.train()
        with ex.autocast():
            z_sn = logits32(model(x))  # 1. moves the student's BatchNorm first
        z_tn = ex.teacher_logits(self.teacher_nat, x)  # 2.
        if self.teacher_clean_pass:  # 3. moves only the teacher's BatchNorm statistics
            with torch.no_grad(), ex.autocast():
                teacher(x)
        model.eval()  # 4. BN on running statistics while crafting
        with ex.attacking(model) as target:
            x_adv = pgd_ce(target, x, y, **self.attack.pgd_args())
        model.train()
        with ex.autocast():  # 5.
            z_sa = logits32(model(x_adv))
            with torch.set_grad_enabled(self.teacher_trains):
                z_ta = logits32(teacher(x_adv))
        z_tna = ex.teacher_logits(self.teacher_nat, x_adv)

        # 6. distillation terms and the balance (temperatures from the next batch on)
        p_ta = teacher_probs(z_ta.detach(), b.tau_adv)
        p_tn = teacher_probs(z_tn, b.tau_nat)
        loss_adv = self.kl_scale * kl_to_teacher(z_sa, p_ta, self.kl_reduction)
        loss_nat = self.kl_scale * kl_to_teacher(z_sn, p_tn, self.kl_reduction)
        once = decay_factor(self.epoch, self.milestones, self.rate_decay)  # per milestone
        rates = 1.0 if self.per_step_decay else once
        b.update_temperatures(neg_entropy(p_ta), neg_entropy(p_tn), rates)
        b.update_weights(loss_adv, loss_nat, rates)
        if self.weighted:
            loss = b.w_adv.to(loss_adv.dtype) * loss_adv + b.w_nat.to(loss_nat.dtype) * loss_nat
        else:
            loss = loss_adv + loss_nat
        if self.per_step_decay and self.epoch in self.milestones:  # the official per-batch decay
            b.tau_lr *= self.rate_decay
            b.weight_lr *= self.rate_decay

        # 7.-8. the push away from the clean teacher's wrong predictions on x'
        wrong = z_tna.argmax(dim=1) != y
        count = wrong.sum()
        p_push = F.softmax(z_tna, dim=1) * wrong[:, None]  # 0 on the rows not pushed
        z_push = z_sa / self.push_temperature
        loss_push = kl_to_teacher(z_push, p_push, self.kl_reduction) * len(y) / count.clamp_min(1)
        scale = torch.where(count > 0, push_scale(loss_adv, loss_nat, loss_push), 0.0)
        loss = loss - scale * loss_push

        teacher_ce = F.cross_entropy(z_ta, y)
        self._pending = teacher_ce if self.teacher_trains else None
        return loss, {
            "loss": loss.detach(),
            "loss_adv": loss_adv.detach(),
            "loss_nat": loss_nat.detach(),
            "loss_push": loss_push.detach(),
            "push_scale": scale.detach(),
            "push_frac": wrong.float().mean(),
            "teacher_ce": teacher_ce.detach(),
        }

    def after_step(self) -> None:
        """9. The robust teacher's step on CE(T_rob(x'), y), after the student's."""
        if self._pending is None:
            return
        ce, self._pending = self._pending, None
        self.optimizer.zero_grad(set_to_none=True)
        ce.backward()
        self.optimizer.step()

    def networks(self) -> dict[str, nn.Module]:
        return {"robust_teacher": self.teacher_adv}

    def status(self) -> dict[str, float]:
        return {**self.balance.status(), "teacher_lr": self.optimizer.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        """The balance (tau, w, the reference losses, the rates as they decay), the robust
        teacher's weights and BatchNorm buffers, and its optimizer (live tensors: save them)."""
        return {
            "balance": self.balance.state_dict(),
            "teacher": self.teacher_adv.state_dict(),
            "teacher_optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.balance.load_state_dict(state["balance"])
        self.teacher_adv.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["teacher_optimizer"])
        self._pending = None


@register("ciard")
def from_config(b: Build) -> Method:
    c, t, k = b.cfg, b.teachers, b.cfg.ciard
    return CIARD(
        t[ROBUST], t[CLEAN], c.attack, Balance.from_config(c.balance, b.device),
        teacher_lr=k.teacher_lr, teacher_momentum=k.teacher_momentum,
        teacher_weight_decay=k.teacher_weight_decay, teacher_from=k.teacher_from,
        teacher_until=c.optim.epochs, push_temperature=k.push_temperature,
        milestones=tuple(c.optim.milestones), rate_decay=c.optim.gamma, weighted=k.weighted,
        per_step_decay=k.per_step_decay, teacher_clean_pass=k.teacher_clean_pass,
        kl_reduction=c.kl_reduction, kl_scale=c.kl_scale,
        execution=b.execution,
    )  # fmt: skip
