"""A tiny B-MTARD distillation whose balance state is recorded after every batch, run by
tests/test_distributed.py in one process and as torchrun workers:

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_trajectory.py FOLDER

Each rank writes FOLDER/trajectory-<rank>.json: [[tau_adv, tau_nat, w_adv, w_nat], ...] per
batch, then the student's parameters' sum (equal on every rank when DDP keeps them in step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, as a script

from bmtard.config.schema import BalanceConfig, OptimConfig, TrainAttackConfig  # noqa: E402
from bmtard.core import distributed  # noqa: E402
from bmtard.data.loader import Batches  # noqa: E402
from bmtard.data.splits import Split  # noqa: E402
from bmtard.methods.b_mtard import BMTARD
from bmtard.methods.balance import Balance  # noqa: E402
from bmtard.methods.contract import Method  # noqa: E402
from bmtard.models import build_model  # noqa: E402
from bmtard.models.checkpoint import ModelSpec  # noqa: E402
from bmtard.training.loop import Parts, fit, make_optimizer  # noqa: E402

WIDTH = 0.0625
BATCH = 16  # global batch: 8 images per rank with two processes
EPOCHS = 3  # of 4 batches (64 images)


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
    labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)].numpy()
    return Split(images, labels)


def _teacher(seed: int, scale: float) -> torch.nn.Module:
    """A random tiny teacher; ``scale`` sharpens its outputs, so that the two teachers' entropies
    are close and Entropy-Based Balance moves the temperatures both ways."""
    torch.manual_seed(seed)
    m = build_model("resnet18", 10, WIDTH)
    with torch.no_grad():
        m.linear.weight.mul_(scale)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


class Recording(Method):
    """B-MTARD's step, with its balance state appended to ``steps`` after every batch."""

    def __init__(self, method: BMTARD) -> None:
        self.method, self.steps = method, []

    def batch_loss(self, model, x, y):
        out = self.method.batch_loss(model, x, y)
        b = self.method.balance
        self.steps.append([float(b.tau_adv), float(b.tau_nat), float(b.w_adv), float(b.w_nat)])
        return out

    def status(self):
        return self.method.status()

    def state_dict(self):
        return self.method.state_dict()

    def load_state_dict(self, state):
        self.method.load_state_dict(state)


def trajectory() -> tuple[list[list[float]], float]:
    """Train the tiny student (CPU); return the per-batch balance state and the parameters' sum."""
    device = torch.device("cpu")
    cfg = BalanceConfig(tau_lr=0.05, weight_lr=0.2, tau_max=3.0)
    attack = TrainAttackConfig(eps=8.0, step_size=2.0, steps=2, init="gaussian")
    method = Recording(
        BMTARD(_teacher(21, 6.0), _teacher(22, 6.0), attack, Balance.from_config(cfg), "mean")
    )
    torch.manual_seed(0)
    student = ModelSpec("resnet18", WIDTH, 10).build().to(device)
    optim = OptimConfig(epochs=EPOCHS, batch_size=BATCH, lr=0.05, milestones=[100])
    batches = Batches(_split(64, 1), BATCH, device=device, shuffle=True, augment=True, seed=0)
    parts = Parts(student, method, batches, make_optimizer(student, optim))
    fit(parts, optim, section="distill", monitor=lambda e: None, on_epoch=lambda e, m: None)
    total = float(sum(p.detach().double().sum() for p in student.parameters()))
    return method.steps, total


if __name__ == "__main__":
    torch.set_num_threads(1)
    distributed.start(distributed.launched_size(), torch.device("cpu"))
    steps, total = trajectory()
    out = Path(sys.argv[1]) / f"trajectory-{distributed.rank()}.json"
    out.write_text(json.dumps({"steps": steps, "param_sum": total}))
    distributed.stop()
