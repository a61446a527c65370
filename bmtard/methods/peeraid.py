"""PeerAiD (Jung, Jang, Song, Lee, CVPR 2024): adversarial distillation from a peer that is trained
with the student, on the student's adversarial examples, plus weight averaging (SWA) of the
student at the end of training.

Written from the description of the official code (jaewonalive/PeerAiD at cd12e92, GPL-3.0:
nothing is copied): ``main.py::train_kd`` (the losses), ``attack_function.py::LinfPeerAttack``
(the attack) and ``utils/SWA.py`` (``moving_average``, ``bn_update``). Hyper-parameters from
``training_scripts/resnet18_*.sh`` (the loss weights and temperatures, command-line arguments of
``main.py``) and ``configs/PeerAiD_resnet18_*.json`` (epochs, lr, its decay epochs, batch size,
weight decay).

One step, per batch (x in [0, 1], y the labels):

1. the peer, in eval mode under ``no_grad``, gives its logits on the clean x (the attack's
   target); the peer goes back to train mode;
2. x' = PGD on the student in eval mode maximising sum KL(softmax(peer(x)) || softmax(S(x')))
   (temperature 1), from x + 0.001 N(0, 1) unclamped (the attack config: 10 steps of 2/255 in an
   8/255 ball), x' detached; the student back in train mode;
3. z_p = peer(x'), z_s1 = S(x') (train mode);
   L_peer = g1 CE(z_p, y) + g2 T_r^2 KL_mean(softmax(z_s1 / T_r) || softmax(z_p / T_r));
4. z_s = S(x') again, z_n = S(x) (train mode);
   L_student = l1 CE(z_s, y) + l2 T^2 KL_mean(softmax(z_p.detach() / T) || softmax(z_s / T))
                             + l3 T^2 KL_mean(softmax(z_n / T) || softmax(z_s / T));
5. one backward of L_peer + L_student reaches both networks; the student's optimizer (the loop's)
   and the peer's (this method's, in ``after_step``) both step.

KL_mean is ``nn.KLDivLoss()``'s default: p (log p - log q) averaged over the B x C elements, i.e.
the batch-mean KL divided by C; there is no 1e-5 guard (unlike the MTARD/B-MTARD helper).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from bmtard.attacks.pgd import pgd
from bmtard.config import method_table
from bmtard.config.schema import TrainAttackConfig
from bmtard.core.errors import BmtardError
from bmtard.data.loader import Batches
from bmtard.methods.contract import Build, Method
from bmtard.methods.decays import lr_factor
from bmtard.methods.losses import KL_REDUCTIONS, reduce_kl
from bmtard.methods.registry import register
from bmtard.models.checkpoint import ModelSpec
from bmtard.runtime.execution import Execution, logits32

#: PeerAiD's published loss settings per dataset, as its ResNet-18 training scripts pass them
#: (``training_scripts/resnet18_{cifar10,cifar100,tinyimagenet}.sh``, identical to README's
#: commands): ``--temperature`` (T), ``--re_kd_temperature`` (T_r), ``--gamma1/2``, ``--lamb1/2/3``.
#: The WideResNet-34-10 scripts use the same values per dataset.
PUBLISHED = method_table.PEERAID  # the one table, in the configuration layer

#: the first epoch (1-based) at whose end the student is averaged: the official ``swa_s_start`` is
#: the student's first lr-decay epoch, 214, compared (``epoch >= 214``) with a 0-based epoch, so
#: the first average closes the 215th epoch, the first one at the decayed lr
OFFICIAL_SWA_FROM = 215

#: what the pipeline may write as the student (``distill.peeraid.output``)
OUTPUTS = ("student", "swa")


def kl_div(log_q: Tensor, p: Tensor, reduction: str = "mean") -> Tensor:
    """``nn.KLDivLoss``: KL(p || q) from log q (B, C) and p (B, C), elementwise
    p (log p - log q) (0 where p = 0), gradients to both arguments.

    'mean': over all B x C elements (``nn.KLDivLoss()``'s default, the official code);
    'batchmean': summed over classes, averaged over the batch (the KL divergence itself).
    """
    return reduce_kl(F.kl_div(log_q, p, reduction="none"), reduction)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def average_into(average: nn.Module, model: nn.Module, n_averaged: int) -> None:
    """One step of the equal-weight running average of parameters (``utils/SWA.py``
    ``moving_average`` with alpha = 1 / (n_averaged + 1)): avg <- avg (1 - alpha) + w alpha,
    parameters only (BatchNorm's statistics come from ``recompute_batch_norm``). With
    n_averaged = 0 the average becomes a copy of ``model``'s parameters (avg x 0 + w x 1)."""
    alpha = 1.0 / (n_averaged + 1)
    with torch.no_grad():
        for p_avg, p in zip(average.parameters(), model.parameters(), strict=True):
            p_avg.mul_(1.0 - alpha)
            p_avg.add_(p * alpha)


def recompute_batch_norm(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
    """BatchNorm's running statistics as the average over one pass of ``batches`` (``utils/SWA.py``
    ``bn_update``): running mean 0 and variance 1, then each batch of b images (after n) with
    momentum b / (n + b) in train mode, so each statistic ends as the image-weighted mean of the
    batches' statistics (the unbiased batch variance for the running variance); the modules'
    momenta are restored afterwards. x: (B, C, H, W) on the model's device; no gradients."""
    norms = _batch_norms(model)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    training = model.training
    for m in norms:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
    model.train()
    n = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                b = len(x)
                for m in norms:
                    m.momentum = b / (n + b)
                model(x)
                n += b
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(training)


@dataclass(eq=False)
class PeerAiD(Method):
    """PeerAiD's step, its peer's optimizer and the weight average of the student.

    Arguments (units; the official default):
      student: the trained model, the one the loop passes to ``batch_loss`` (its weights are
          averaged at the ends of epochs; the loop owns its optimizer).
      peer: the peer, a fresh model of the student's architecture (built by the caller from the
          run's seed, on the device, laid out and compiled like the student, e.g.
          ``Execution.student(peer)``); trained here in train mode.
      attack: the training attack (``TrainAttackConfig``: 8/255, 2/255, 10 steps, init
          ``gaussian`` = x + 0.001 N(0, 1) unclamped, the official start).
      lr_at: epoch (1-based) -> the peer's lr during that epoch. The official peer has the
          student's schedule: 0.1, / 10 at its (0-based) epochs 214, 259, 284, i.e.
          ``lambda e: optim.lr * lr_factor(e, optim)`` with milestones [214, 259, 284].
      bn_batches: epoch (1-based) -> the training batches (x (B, C, H, W) in [0, 1] on the device,
          y) of the BatchNorm pass that closes each averaged epoch: one whole pass over the
          training split, augmented and shuffled like training (the official code reuses its
          training loader); deterministic for a given epoch (e.g. a ``bmtard.data.loader.Batches``
          of its own, with another seed: ``b.set_epoch(epoch); return b``), and drawing nothing
          from the global random generators is best.
      temperature: T of the student's two KL terms; peer_temperature: T_r of the peer's KL
          term; gamma1, gamma2: weights of the peer's CE and KL terms; lambda1, lambda2,
          lambda3: weights of the student's CE, KL-to-peer and KL-to-clean terms. Their
          published values per dataset are ``PUBLISHED`` (the method table's); the defaults
          here are CIFAR-10's.
      swa_from: the first epoch (1-based) at whose end the student is averaged
          (``OFFICIAL_SWA_FROM`` = 215, see there; it follows the first lr milestone).
      momentum, weight_decay: the peer's SGD (0.9, 2e-4; no Nesterov, no dampening).
      kl_reduction: 'mean' (official quirk: ``nn.KLDivLoss()`` averages over B x C, so the KL
          terms are the batch-mean KL / C) | 'batchmean' (the KL divergence). All three KL terms.
      peer_kl_trains_student: official quirk, True: the peer's KL target softmax(S(x') / T_r) is
          not detached, so L_peer also trains the student (towards the peer). False: detached.
      second_student_forward: official quirk, True: the student runs twice on x' in train mode
          (one output for L_peer, one for L_student; equal values, but BatchNorm's running
          statistics take two updates from x'). False: one forward, used by both losses.
      live_clean_target: official quirk, True: the clean logits z_n = S(x) of the third KL term
          are not detached (as in TRADES, gradient through both arguments). False: detached.
      swa: the model that holds the average (the student's architecture; its initial weights are
          never used: the first average replaces them). None: a deep copy of ``student`` (pass
          one built like the student when the student is compiled).
      execution: bf16 autocast for the forwards and the attack (losses in fp32), layout.

    Order of the official step: ``student_optimizer.zero_grad(); peer_optimizer.zero_grad()``, the
    attack, the forwards, ``(loss_peer + loss_student).backward()``, then
    ``peer_optimizer.step(); student_optimizer.step()``. Here the peer's gradients are cleared at
    the start of ``batch_loss`` and the peer steps in ``after_step``, i.e. after the student: the
    two parameter sets are disjoint and both gradients come from the one backward, so the order
    changes nothing.

    The weight average (``end_epoch``, official ``train_kd``'s end): from epoch ``swa_from`` on,
    the average's parameters become the equal-weight mean of the student's at the ends of the
    averaged epochs (``swa_n`` of them), then its BatchNorm statistics are recomputed over one
    pass of ``bn_batches(epoch)`` (``recompute_batch_norm``; in fp32, with no autocast).

    ``networks()`` is always {"peer", "swa"}; ``swa_n`` = 0 (``status``) says the average holds
    nothing yet. ``output_model("student" | "swa")`` is the model to write as the student. One
    process only: the peer is not DDP-wrapped, so the caller refuses run.processes > 1.

    Deviations: the pipeline seeds every generator (the official code sets no seed); the BN pass
    runs under ``no_grad`` (the official one builds an unused graph; same values).
    """

    student: nn.Module
    peer: nn.Module
    attack: TrainAttackConfig
    lr_at: Callable[[int], float]
    bn_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]]
    temperature: float = PUBLISHED["cifar10"]["temperature"]
    peer_temperature: float = PUBLISHED["cifar10"]["peer_temperature"]
    gamma1: float = PUBLISHED["cifar10"]["gamma1"]
    gamma2: float = PUBLISHED["cifar10"]["gamma2"]
    lambda1: float = PUBLISHED["cifar10"]["lambda1"]
    lambda2: float = PUBLISHED["cifar10"]["lambda2"]
    lambda3: float = PUBLISHED["cifar10"]["lambda3"]
    swa_from: int = OFFICIAL_SWA_FROM
    momentum: float = 0.9
    weight_decay: float = 2e-4
    kl_reduction: str = "mean"
    peer_kl_trains_student: bool = True
    second_student_forward: bool = True
    live_clean_target: bool = True
    swa: nn.Module | None = None
    execution: Execution = field(default_factory=Execution)
    # the weights written as the student (distill.peeraid.output): "student" = its own (the
    # selected epoch's), "swa" = the weight average at the end (``output``)
    output_choice: str = "student"
    swa_n: int = field(default=0, init=False)
    peer_optimizer: torch.optim.SGD = field(init=False)

    def __post_init__(self) -> None:
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(
                f"kl_reduction = {self.kl_reduction!r}: allowed are {', '.join(KL_REDUCTIONS)}"
            )
        if self.temperature <= 0 or self.peer_temperature <= 0:
            raise ValueError("temperature and peer_temperature must be > 0")
        if self.swa_from < 1:
            raise ValueError(f"swa_from = {self.swa_from}: must be an epoch >= 1 (1-based)")
        if self.swa is None:
            if getattr(self.student, "_compiled_call_impl", None) is not None:
                raise ValueError("the student is compiled: pass swa, a model built like it")
            self.swa = copy.deepcopy(self.student)
        mine = [(k, v.shape) for k, v in self.swa.state_dict().items()]
        theirs = [(k, v.shape) for k, v in self.student.state_dict().items()]
        if mine != theirs:
            raise ValueError("swa must have the student's architecture (its state_dict's keys)")
        self.swa.requires_grad_(False)
        self.peer.train()
        self.peer_optimizer = torch.optim.SGD(
            self.peer.parameters(),
            lr=self.lr_at(1),
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    # the step

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """PeerAiD's L_peer + L_student on one batch: x (B, C, H, W) in [0, 1], y (B,).
        The loss's backward reaches the student and the peer."""
        if _unwrap(model) is not self.student:
            raise ValueError("PeerAiD: batch_loss got another model than its student")
        ex, peer = self.execution, self.peer
        x = ex.layout(x)
        self.peer_optimizer.zero_grad(set_to_none=True)
        peer.eval()  # the attack's target: the peer's clean prediction, BN on running statistics
        with torch.no_grad(), ex.autocast():
            p_target = F.softmax(logits32(peer(x)), dim=1)
        peer.train()

        def kl_sum(logits: Tensor) -> Tensor:  # nn.KLDivLoss(reduce=False), then torch.sum
            return F.kl_div(
                F.log_softmax(logits32(logits), dim=1), p_target, reduction="none"
            ).sum()

        model.eval()
        with ex.attacking(model) as target:
            x_adv = pgd(target, x, kl_sum, **self.attack.pgd_args())
        model.train()
        with ex.autocast():
            z_p = logits32(peer(x_adv))
            z_s1 = logits32(model(x_adv))
            z_s = logits32(model(x_adv)) if self.second_student_forward else z_s1
            z_n = logits32(model(x))
        loss_peer, peer_ce, peer_kl = self._peer_loss(z_p, z_s1, y)
        loss_student, student_ce, kl_peer, kl_clean = self._student_loss(z_s, z_p, z_n, y)
        loss = loss_peer + loss_student
        return loss, {
            "loss": loss.detach(),
            "loss_peer": loss_peer.detach(),
            "loss_student": loss_student.detach(),
            "peer_ce": peer_ce.detach(),
            "peer_kl": peer_kl.detach(),
            "student_ce": student_ce.detach(),
            "student_kl_peer": kl_peer.detach(),
            "student_kl_clean": kl_clean.detach(),
            "peer_adv_acc": (z_p.detach().argmax(1) == y).float().mean(),
            "student_adv_acc": (z_s.detach().argmax(1) == y).float().mean(),
        }

    def _peer_loss(self, z_p: Tensor, z_s1: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """L_peer = g1 CE(z_p, y) + g2 T_r^2 KL(softmax(z_s1/T_r) || softmax(z_p/T_r));
        returns (L_peer, CE, KL)."""
        tr = self.peer_temperature
        target = z_s1 if self.peer_kl_trains_student else z_s1.detach()
        ce = F.cross_entropy(z_p, y)
        kl = kl_div(
            F.log_softmax(z_p / tr, dim=1), F.softmax(target / tr, dim=1), self.kl_reduction
        )
        return self.gamma1 * ce + self.gamma2 * tr * tr * kl, ce, kl

    def _student_loss(
        self, z_s: Tensor, z_p: Tensor, z_n: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """L_student = l1 CE(z_s, y) + l2 T^2 KL(softmax(z_p/T) || softmax(z_s/T))
        + l3 T^2 KL(softmax(z_n/T) || softmax(z_s/T)), z_p detached; returns
        (L_student, CE, KL to the peer, KL to the clean logits)."""
        t, red = self.temperature, self.kl_reduction
        clean = z_n if self.live_clean_target else z_n.detach()
        log_q = F.log_softmax(z_s / t, dim=1)
        ce = F.cross_entropy(z_s, y)
        kl_peer = kl_div(log_q, F.softmax(z_p.detach() / t, dim=1), red)
        kl_clean = kl_div(log_q, F.softmax(clean / t, dim=1), red)
        loss = self.lambda1 * ce + self.lambda2 * t * t * kl_peer + self.lambda3 * t * t * kl_clean
        return loss, ce, kl_peer, kl_clean

    # the hooks

    def start_epoch(self, epoch: int) -> None:
        """The peer's lr for ``epoch`` (1-based): ``lr_at(epoch)``."""
        lr = self.lr_at(epoch)
        for group in self.peer_optimizer.param_groups:
            group["lr"] = lr

    def after_step(self) -> None:
        """The peer's SGD step, on the gradients of the loss's backward."""
        self.peer_optimizer.step()

    def end_epoch(self, epoch: int) -> None:
        """From ``swa_from`` on: average the student into ``swa``, then its BatchNorm pass."""
        if epoch < self.swa_from:
            return
        average_into(self.swa, self.student, self.swa_n)
        self.swa_n += 1
        ex = self.execution
        recompute_batch_norm(self.swa, ((ex.layout(x), y) for x, y in self.bn_batches(epoch)))

    def networks(self) -> dict[str, nn.Module]:
        """The peer and the weight average (always both; ``swa_n`` = 0: nothing averaged yet)."""
        return {"peer": self.peer, "swa": self.swa}

    def output(self) -> dict[str, Tensor] | None:
        """The weight average's weights where ``output_choice`` is 'swa' (None: the student's)."""
        if self.output_choice == "student":
            return None
        model = self.output_model(self.output_choice)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def output_model(self, output: str) -> nn.Module:
        """The model to write as the student: 'student' or 'swa' (the weight average, which must
        hold at least one average)."""
        if output == "student":
            return self.student
        if output == "swa":
            if self.swa_n == 0:
                raise BmtardError(
                    f"distill.peeraid.output = swa: nothing was averaged (swa_from = "
                    f"{self.swa_from}, after the run's last epoch); lower distill.peeraid.swa_from"
                )
            return self.swa
        raise ValueError(f"output = {output!r}: allowed are {', '.join(OUTPUTS)}")

    # the state

    def status(self) -> dict[str, float]:
        return {
            "swa_n": float(self.swa_n),
            "peer_lr": float(self.peer_optimizer.param_groups[0]["lr"]),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "peer": self.peer.state_dict(),
            "peer_optimizer": self.peer_optimizer.state_dict(),
            "swa": self.swa.state_dict(),
            "swa_n": self.swa_n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])
        self.swa.load_state_dict(state["swa"])
        self.swa_n = int(state["swa_n"])


@register("peeraid")
def from_config(b: Build) -> Method:
    """The peer (the student's architecture, initialised after the student from the run's
    seed), its lr the student's schedule, its BatchNorm pass a shuffled, augmented pass over the
    training split of its own (another seed than the training batches')."""
    c, p = b.cfg, b.cfg.peeraid
    spec = ModelSpec(c.arch, c.width, b.data.num_classes)
    peer = b.execution.student(spec.build().to(b.device))
    swa = b.execution.student(spec.build().to(b.device))
    passes = Batches(
        b.data.train, c.optim.batch_size, device=b.device, shuffle=True, augment=True,
        seed=b.seed + 1,
    )  # fmt: skip

    def bn_batches(epoch: int) -> Batches:
        passes.set_epoch(epoch)
        return passes

    return PeerAiD(
        b.student, peer, c.attack, lr_at=lambda e: c.optim.lr * lr_factor(e, c.optim),
        bn_batches=bn_batches, temperature=p.temperature, peer_temperature=p.peer_temperature,
        gamma1=p.gamma1, gamma2=p.gamma2, lambda1=p.lambda1, lambda2=p.lambda2,
        lambda3=p.lambda3, swa_from=p.swa_from, momentum=c.optim.momentum,
        weight_decay=c.optim.weight_decay, kl_reduction=c.kl_reduction,
        peer_kl_trains_student=p.peer_kl_trains_student,
        second_student_forward=p.second_student_forward, live_clean_target=p.live_clean_target,
        swa=swa, execution=b.execution, output_choice=p.output,
    )  # fmt: skip
