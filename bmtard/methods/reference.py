"""The B-MTARD step as the official code structures it: the baseline of ``bench/`` and the
reference of the numerics tests.

Written by us after the structure of the official training loop (zhaoshiji123/MTARD-extension,
``resnet18_mtard_cifar10.py``): fp32 everywhere; batches from a ``torch.utils.data.DataLoader``
(one process, as ``num_workers=0``) whose torchvision transforms crop and flip each image on the
CPU; and the balance rules in Python floats, so that every step reads the losses and entropies
back with ``.item()`` (a host-device synchronisation each time). The arithmetic is exactly that
of ``bmtard.methods.b_mtard`` in fp32 (the tests check that the two agree bit for bit on a CPU);
only the structure differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.schema import BalanceConfig, TrainAttackConfig
from bmtard.data.splits import Split
from bmtard.methods.losses import kl_to_teacher, neg_entropy, teacher_probs


def _sign(v: float) -> float:
    return float(v > 0) - float(v < 0)


@dataclass
class FloatBalance:
    """The two balance rules on Python floats, line by line as the official loop has them."""

    tau_adv: float
    tau_nat: float
    w_adv: float
    w_nat: float
    cfg: BalanceConfig
    l0: list[float] = field(default_factory=list)  # [L0_adv, L0_nat] once known

    @classmethod
    def from_config(cls, cfg: BalanceConfig) -> FloatBalance:
        return cls(cfg.tau_adv_init, cfg.tau_nat_init, cfg.w_adv_init, 1.0 - cfg.w_adv_init, cfg)

    def step(self, e_adv: float, e_nat: float, l_adv: float, l_nat: float, factor: float) -> None:
        """Move τ (entropies e = mean p log p) and w (losses); rates decayed by ``factor``."""
        c = self.cfg
        if e_adv != 0 and e_nat != 0:
            tau_lr = c.tau_lr * factor
            self.tau_adv = self.tau_adv - tau_lr * _sign(e_adv / e_nat - 1)
            self.tau_nat = self.tau_nat - tau_lr * _sign(e_nat / e_adv - 1)
            self.tau_adv = min(max(self.tau_adv, c.tau_min), c.tau_max)
            self.tau_nat = min(max(self.tau_nat, c.tau_min), c.tau_max)
        if not self.l0:
            self.l0 = [l_adv, l_nat]
        rel_adv, rel_nat = l_adv / self.l0[0], l_nat / self.l0[1]
        mean = (rel_adv + rel_nat) / 2
        r_adv, r_nat = rel_adv / mean, rel_nat / mean
        lr = c.weight_lr * factor
        self.w_nat = self.w_nat - lr * (self.w_nat - r_nat / (r_adv + r_nat))
        self.w_adv = self.w_adv - lr * (self.w_adv - r_adv / (r_adv + r_nat))
        self.w_adv, self.w_nat = max(self.w_adv, 0.0), max(self.w_nat, 0.0)
        total = self.w_adv + self.w_nat
        self.w_adv, self.w_nat = self.w_adv / total, self.w_nat / total


def official_step(
    student: nn.Module,
    teacher_adv: nn.Module,
    teacher_nat: nn.Module,
    x: Tensor,
    y: Tensor,
    optimizer: torch.optim.Optimizer,
    balance: FloatBalance,
    attack: TrainAttackConfig,
    factor: float = 1.0,
    kl_reduction: str = "mean",
) -> dict[str, float]:
    """One B-MTARD step, fp32, with ``.item()`` reads as the official loop does them.

    x (B, C, H, W) in [0, 1] on the model's device, y (B,). Returns the step's floats.
    """
    student.eval()
    x_adv = pgd_ce(
        student, x, y, eps=attack.eps / 255, step_size=attack.step_size / 255,
        steps=attack.steps, init=attack.init,
    )  # fmt: skip
    student.train()
    optimizer.zero_grad()
    z_sa = student(x_adv)
    z_sn = student(x)
    with torch.no_grad():
        p_ta = teacher_probs(teacher_adv(x_adv), balance.tau_adv)
        p_tn = teacher_probs(teacher_nat(x), balance.tau_nat)
    loss_adv = kl_to_teacher(z_sa, p_ta, kl_reduction)
    loss_nat = kl_to_teacher(z_sn, p_tn, kl_reduction)
    e_adv, e_nat = neg_entropy(p_ta).item(), neg_entropy(p_tn).item()  # a sync each
    l_adv, l_nat = loss_adv.item(), loss_nat.item()  # and each
    balance.step(e_adv, e_nat, l_adv, l_nat, factor)
    loss = balance.w_adv * loss_adv + balance.w_nat * loss_nat
    loss.backward()
    optimizer.step()
    return {"loss": loss.item(), "loss_adv": l_adv, "loss_nat": l_nat}


class _ImageDataset(Dataset):
    """A split's images as PIL images through torchvision transforms (per image, on the CPU)."""

    def __init__(self, split: Split) -> None:
        from torchvision import transforms  # only the baseline needs torchvision

        self.split = split
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.split.images[i])), int(self.split.labels[i])


def official_loader(split: Split, batch_size: int, seed: int = 0) -> DataLoader:
    """The official data path: shuffled DataLoader, one process, CPU transforms per image."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        _ImageDataset(split), batch_size=batch_size, shuffle=True, num_workers=0, generator=gen
    )


def device_batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Each batch moved to the device as the official loop does (``.float().cuda()``)."""
    for x, y in loader:
        yield x.float().to(device), y.to(device)
