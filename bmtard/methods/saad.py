"""SAAD: Sample-wise Adaptive Adversarial Distillation (Lee & Chung, "Sample-wise Adaptive
Weighting for Transfer Consistency in Adversarial Distillation", TMLR 2026, arXiv 2512.10275): the
``saad`` method (the robust teacher; ``distill.saad``).

Written from the paper and the description of its code (HongsinLee/saad at 295121c, no licence:
nothing is copied): ``saad.py`` (the loop), ``attacks.py::saad_inner_loss`` (the attack) and
``utils.py`` (``samplewise_kl_div``, ``samplewise_renyi_entropy``). Its settings, published once
in the method table (``bmtard.config.method_table``: the schedule, ``SAAD`` per dataset) and
``distill.saad``.

One step, per batch (x in [0, 1], y the labels; student and teacher in eval mode for the attack):

1. the teacher on x, with its input gradient g of the true classes' logits sum_i T(x_i)[y_i];
2. x' = PGD on the student from x + 0.001 N(0, 1) (unclamped; the attack config: 10 steps of
   2/255 in 8/255), maximising the summed KL(softmax(T~) || softmax(S(x'))) where T~ is T(x) with
   each true-class logit moved by ``linearization`` * <g_i, x' - x>: the teacher linearised around
   x, the gradient flowing through that correction (never through the teacher again);
3. d = x' - x; the teacher (no gradient) on x' and on x - d (not clamped);
4. the student in train mode on x', x - d, x (three forwards, in this order, each moving BN);
5. H_i: the Renyi entropy of order ``renyi_order`` of softmax(T(x'_i)) (order 1: Shannon, both
   with a 1e-12 guard); w_i = ``entropy_scale`` (H_i - min H), w_norm its min-max scaling;
6. loss = mean_i [ w_i (KL_i(T(x') || S(x')) + igdm_alpha (epoch / ramp) KL_i(T(x') - T(x - d) ||
   S(x') - S(x - d))) + ``clean_weight`` (1 - w_norm_i) KL_i(T(x) || S(x)) ], every KL_i summed
   over the classes (``nn.KLDivLoss(reduction='none').sum(1)``).

Weight averaging (``torch.optim.swa_utils``, as the code): from the end of epoch ``swa_from`` on,
at each epoch's end the student is averaged (equal weights) and the average's BatchNorm statistics
recomputed over one pass of the training split (``update_bn``); after the last epoch the code does
that pass once more (``final_bn_pass``). The average is what the code evaluates and saves: its
protocol is ``distill.saad.output: swa`` with ``distill.checkpoint: last``; by default the harness
writes the student selected as for every method (``output: student``, as PeerAiD's).

Quirks kept, each with its switch: the 5 of w is hard-coded (the code's ``--entropy_scale`` is
never read): ``entropy_scale``; the IGDM ramp divides by the run's epochs, not IGDM's fixed 200:
``ramp_epochs``; x - d is not clamped: ``clamp_minus``; the second BatchNorm pass:
``final_bn_pass``. Not kept: the repository's AdaAD and IGDM baseline scripts call their attack with
the step and the radius swapped (8/255 steps in a 2/255 ball); SAAD's own attack is not affected,
and this harness's AdaAD and IGDM use the configured attack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, update_bn

from bmtard.attacks.pgd import pgd_input
from bmtard.config.method_table import ROBUST
from bmtard.config.schema import TrainAttackConfig
from bmtard.data.loader import Batches
from bmtard.methods.adaad import teacher_forward
from bmtard.methods.contract import Build, Method
from bmtard.methods.dgad import kl_per_sample
from bmtard.methods.registry import register
from bmtard.models.checkpoint import ModelSpec
from bmtard.runtime.execution import Execution, logits32

#: the guards of the code's entropy and of its min-max scaling
ENTROPY_GUARD, SCALE_GUARD = 1e-12, 1e-8
#: what the pipeline may write as the student (``distill.saad.output``)
OUTPUTS = ("student", "swa")


def renyi_entropy(logits: Tensor, order: float) -> Tensor:
    """Per-sample Renyi entropy of softmax(logits) (B, C) -> (B,): log(sum_c p_c^order) /
    (1 - order), and for an order within 1e-6 of 1 the Shannon entropy -sum_c p_c log p_c; a
    1e-12 guard inside each log, as the code."""
    p = F.softmax(logits, dim=1)
    if abs(order - 1.0) < 1e-6:
        return -(p * torch.log(p + ENTROPY_GUARD)).sum(dim=1)
    return torch.log((p**order).sum(dim=1) + ENTROPY_GUARD) / (1.0 - order)


def sample_weights(entropy: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The code's weights from the teacher's entropies (B,): w = scale (H - min H) (clamped at
    0, which changes nothing), and w_norm = (w - min w) / (max w - min w + 1e-8)."""
    w = (scale * (entropy - entropy.min())).clamp(min=0.0)
    return w, (w - w.min()) / (w.max() - w.min() + SCALE_GUARD)


def saad_attack(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: TrainAttackConfig,
    linearization: float = 1.0,
    execution: Execution | None = None,
) -> tuple[Tensor, Tensor]:
    """SAAD's inner maximisation (the code's ``saad_inner_loss``): PGD on the student (eval mode)
    against the teacher's logits on x with the true class's logit linearised in the
    perturbation (step 2 of the module docstring). x (B, C, H, W) in [0, 1], y (B,). Returns
    (x' detached in [0, 1], the teacher's fp32 logits on x, detached: the loss reuses them)."""
    ex = execution or Execution()
    net = student.module if isinstance(student, DistributedDataParallel) else student
    net.eval()
    teacher.eval()
    target = ex.attack_model(net)
    x = x.detach()
    x_in = x.clone().requires_grad_(True)
    with torch.enable_grad():
        z_t = teacher_forward(teacher, x_in, ex)
        rows = torch.arange(len(y), device=y.device)
        (g,) = torch.autograd.grad(z_t[rows, y].sum(), x_in)
    z_t = z_t.detach()

    def objective(x_adv: Tensor) -> Tensor:
        shift = linearization * torch.einsum("bchw,bchw->b", g, x_adv - x)
        corrected = z_t.scatter_add(1, y[:, None], shift[:, None])
        with ex.attack_autocast():
            z_s = logits32(target(x_adv))
        # nn.KLDivLoss(reduction='sum')
        return F.kl_div(F.log_softmax(z_s, dim=1), F.softmax(corrected, dim=1), reduction="sum")

    return pgd_input(x, objective, **attack.pgd_args()), z_t


@dataclass(eq=False)
class SAAD(Method):
    """One SAAD step per batch and its weight average (module docstring).

    teacher: the robust teacher, frozen (``Execution.teacher``). student: the model the loop
    trains (the average follows it). swa: a model built like the student that holds the average.
    attack: eps and step in 1/255 (the code: 10 steps of 2/255 in 8/255, ``gaussian`` start).
    igdm_alpha, ramp_epochs: the IGDM term's weight alpha * epoch / ramp_epochs (the code: 1 on
    CIFAR-10, 10 on CIFAR-100 and Tiny-ImageNet, ramp = the run's epochs). clean_weight,
    renyi_order, entropy_scale, linearization: the code's --beta (0), --gamma (1), its 5 and
    --lambda_inner (1). swa_from: the first epoch (1-based) at whose end the student is averaged
    (95). bn_batches: epoch -> the training batches of the BatchNorm pass (a ``Batches`` of its
    own). output_choice: "swa" (the average, the code's protocol) or "student". final_bn_pass,
    clamp_minus: the quirks of the module docstring.

    Logs: loss, loss_adv (mean KL on x'), loss_igdm (mean of its term, ramp included), loss_nat
    (mean KL on x), weight (mean w). ``status``: swa_n (epochs averaged so far).
    """

    teacher: nn.Module
    student: nn.Module
    swa: nn.Module
    attack: TrainAttackConfig
    bn_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]]
    igdm_alpha: float = 1.0
    ramp_epochs: int = 200
    clean_weight: float = 0.0
    renyi_order: float = 1.0
    entropy_scale: float = 5.0
    linearization: float = 1.0
    swa_from: int = 95
    output_choice: str = "student"
    final_bn_pass: bool = True
    clamp_minus: bool = False
    execution: Execution = field(default_factory=Execution)
    epoch: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.output_choice not in OUTPUTS:
            raise ValueError(f"output = {self.output_choice!r}: allowed are {', '.join(OUTPUTS)}")
        if self.swa_from < 1:
            raise ValueError(f"swa_from = {self.swa_from}: must be an epoch >= 1 (1-based)")
        self.average = AveragedModel(self.swa)  # n_averaged 0: the first update copies

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batch_loss(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.epoch < 1:
            raise RuntimeError("SAAD: start_epoch(epoch) must be called before batch_loss")
        ex = self.execution
        x = ex.layout(x)
        x_adv, t_nat = saad_attack(model, self.teacher, x, y, self.attack, self.linearization, ex)
        delta = x_adv - x
        x_minus = x - delta
        if self.clamp_minus:
            x_minus = x_minus.clamp(0, 1)
        t_adv = ex.teacher_logits(self.teacher, x_adv)
        t_minus = ex.teacher_logits(self.teacher, x_minus)
        model.train()
        with ex.autocast():
            s_adv = logits32(model(x_adv))
            s_minus = logits32(model(x_minus))
            s_nat = logits32(model(x))
        w, w_norm = sample_weights(renyi_entropy(t_adv, self.renyi_order), self.entropy_scale)
        kl_adv = kl_per_sample(s_adv, t_adv)
        kl_nat = kl_per_sample(s_nat, t_nat)
        ramp = self.igdm_alpha * (self.epoch / self.ramp_epochs)
        igdm = ramp * kl_per_sample(s_adv - s_minus, t_adv - t_minus)
        per_sample = w * (kl_adv + igdm) + self.clean_weight * (1 - w_norm) * kl_nat
        loss = per_sample.mean()
        return loss, {
            "loss": loss.detach(),
            "loss_adv": kl_adv.detach().mean(),
            "loss_igdm": igdm.detach().mean(),
            "loss_nat": kl_nat.detach().mean(),
            "weight": w.detach().mean(),
        }

    def end_epoch(self, epoch: int) -> None:
        if epoch >= self.swa_from:
            self.average.update_parameters(self.student)
            update_bn(self.bn_batches(epoch), self.average)

    def output(self) -> dict[str, Tensor] | None:
        if self.output_choice != "swa":
            return None
        if self.final_bn_pass and int(self.average.n_averaged) > 0:
            update_bn(self.bn_batches(self.epoch + 1), self.average)
        return self.average.module.state_dict()

    def status(self) -> dict[str, float]:
        return {"swa_n": float(self.average.n_averaged)}

    def state_dict(self) -> dict[str, Any]:
        return {"swa": self.average.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["swa"])


@register("saad")
def from_config(b: Build) -> Method:
    """The average in a model built like the student; its BatchNorm passes over the training
    split, shuffled and augmented like training, from a seed of their own."""
    c, s = b.cfg, b.cfg.saad
    spec = ModelSpec(c.arch, c.width, b.data.num_classes)
    swa = b.execution.student(spec.build().to(b.device))
    passes = Batches(
        b.data.train, c.optim.batch_size, device=b.device, shuffle=True, augment=True,
        seed=b.seed + 1,
    )  # fmt: skip

    def bn_batches(epoch: int) -> Batches:
        passes.set_epoch(epoch)
        return passes

    return SAAD(
        b.teachers[ROBUST], b.student, swa, c.attack, bn_batches,
        igdm_alpha=s.igdm_alpha, ramp_epochs=s.ramp_epochs or c.optim.epochs,
        clean_weight=s.clean_weight, renyi_order=s.renyi_order,
        entropy_scale=s.entropy_scale, linearization=s.linearization, swa_from=s.swa_from,
        output_choice=s.output, final_bn_pass=s.final_bn_pass, clamp_minus=s.clamp_minus,
        execution=b.execution,
    )  # fmt: skip
