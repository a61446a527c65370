"""The distillation KL and the entropy term against values computed by hand."""

import math

import pytest
import torch

from bmtard.methods.losses import kl_to_teacher, neg_entropy, teacher_probs


def hand_kl_row(p, z):
    lse = math.log(sum(math.exp(v) for v in z))
    return [pi * (math.log(pi + 1e-5) - (zi - lse)) for pi, zi in zip(p, z, strict=True)]


def test_kl_mean_is_over_batch_and_classes():
    p = torch.tensor([[0.75, 0.25, 0.0], [0.2, 0.3, 0.5]])
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0]])
    rows = [hand_kl_row(p[i].tolist(), z[i].tolist()) for i in range(2)]
    total = sum(sum(r) for r in rows)
    assert kl_to_teacher(z, p, "mean").item() == pytest.approx(total / 6, rel=1e-6)
    assert kl_to_teacher(z, p, "batchmean").item() == pytest.approx(total / 2, rel=1e-6)
    # the official scale is the batch-mean KL divided by the number of classes
    ratio = kl_to_teacher(z, p, "batchmean") / kl_to_teacher(z, p, "mean")
    assert ratio.item() == pytest.approx(3.0)


def test_kl_is_teacher_to_student_and_has_gradient_for_student_only():
    p = teacher_probs(torch.tensor([[2.0, 0.0]]), tau=1.0)
    z = torch.tensor([[0.0, 2.0]], requires_grad=True)
    loss = kl_to_teacher(z, p)
    loss.backward()
    assert loss.item() > 0 and z.grad is not None
    # the KL of a distribution with itself is ~0 (only the 1e-5 guard remains)
    assert abs(kl_to_teacher(torch.tensor([[2.0, 0.0]]), p).item()) < 1e-4


def test_bad_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        kl_to_teacher(torch.zeros(1, 2), torch.full((1, 2), 0.5), "sum")


def test_temperature_softens_teacher_only():
    logits = torch.tensor([[3.0, 1.0]])
    p1, p4 = teacher_probs(logits, 1.0), teacher_probs(logits, 4.0)
    assert p1[0, 0].item() == pytest.approx(math.exp(3) / (math.exp(3) + math.exp(1)))
    assert p4[0, 0].item() == pytest.approx(math.exp(0.75) / (math.exp(0.75) + math.exp(0.25)))


def test_neg_entropy_is_minus_entropy_over_classes():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expected = (0.5 * math.log(0.5 + 1e-5) * 2 + 1.0 * math.log(1.0 + 1e-5)) / 4
    assert neg_entropy(p).item() == pytest.approx(expected, rel=1e-6)
    assert neg_entropy(torch.tensor([[0.25] * 4])).item() < 0
