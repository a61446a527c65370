"""Distillation losses exactly as the official B-MTARD code computes them (spec section 3), and the
one switch of every KL's reduction (``reduce_kl``: B-MTARD's helper, AdaAD's and PeerAiD's
``nn.KLDivLoss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: the guard inside the teacher's log in the official ``kl_loss`` helper
LOG_GUARD = 1e-5
#: the reductions of the KL terms (``distill.kl_reduction``)
KL_REDUCTIONS = ("mean", "batchmean")


def teacher_probs(logits: Tensor, tau: float) -> Tensor:
    """softmax(logits / tau) over classes; logits (B, C). Only the teachers are tempered."""
    return F.softmax(logits / tau, dim=1)


def kl_to_teacher(student_logits: Tensor, p_teacher: Tensor, reduction: str = "mean") -> Tensor:
    """KL(p_teacher || softmax(student_logits)) with the official 1e-5 guard.

    Elementwise p_t * (log(p_t + 1e-5) - log_softmax(z_s)), shape (B, C), then
    'mean': the mean over all B x C elements, i.e. (batch-mean KL) / C (the official code);
    'batchmean': sum over classes, mean over the batch (the textbook KL).
    """
    elem = p_teacher * (torch.log(p_teacher + LOG_GUARD) - F.log_softmax(student_logits, dim=1))
    return reduce_kl(elem, reduction)


def reduce_kl(elem: Tensor, reduction: str, *, factor_first: bool = False) -> Tensor:
    """A KL's elementwise terms (B, C) reduced: 'mean' over all B x C elements (the official
    helpers, ``nn.KLDivLoss()``'s default), or 'batchmean' summed and averaged over the batch
    (the textbook KL): sum / B, or with ``factor_first`` (1 / B) * sum as AdaAD's CIFAR-100
    branch writes it (the same number up to the last bit)."""
    if reduction == "mean":
        return elem.mean()
    if reduction == "batchmean":
        return (1 / elem.shape[0]) * elem.sum() if factor_first else elem.sum() / elem.shape[0]
    raise ValueError(f"reduction = {reduction!r}: allowed are {', '.join(KL_REDUCTIONS)}")


def neg_entropy(p: Tensor) -> Tensor:
    """mean over B x C of p * log(p + 1e-5): the official entropy term, = -H / C (negative)."""
    return (p * torch.log(p + LOG_GUARD)).mean()
