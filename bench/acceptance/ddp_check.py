"""Several processes as the distill stage runs them (``bmtard.core.distributed``), checked against
one process on the whole batch. Run by torchrun:

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        bench/acceptance/ddp_check.py OUT.json [cuda|cpu]

Each rank takes its share of one fixed batch (``distributed.shard``), the student is wrapped as
the stage wraps it (``distributed.wrap``: DDP, and SyncBatchNorm on CUDA, over NCCL), and one
training forward and backward run with the loss scaled by ``distributed.loss_scale``. Rank 0 then
compares the gathered logits, the averaged gradients and the running statistics with one process
on the whole batch (fp32, TF32 off) and writes the gaps to OUT.json. On a CPU (gloo) the model
runs in eval mode: torch's SyncBatchNorm needs a GPU, so only CUDA checks the batch statistics.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, run as a script

from bmtard.core import distributed  # noqa: E402
from bmtard.models import build_model  # noqa: E402

BATCH = 16


def main(out: Path, kind: str) -> None:
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    device = distributed.start(distributed.launched_size(), torch.device(kind))
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 0.125).to(device)
    single = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(BATCH, 3, 32, 32, generator=g), torch.randint(0, 10, (BATCH,), generator=g)
    x, y = x.to(device), y.to(device)
    train = device.type == "cuda"  # SyncBatchNorm: batch statistics over the ranks
    wrapped = distributed.wrap(model.train(train), device)
    rows = distributed.shard(BATCH)
    z = wrapped(x[rows])
    (F.cross_entropy(z, y[rows]) * distributed.loss_scale(len(z), BATCH)).backward()
    parts = [torch.empty_like(z) for _ in range(distributed.world())]
    dist.all_gather(parts, z.detach().contiguous())
    if distributed.is_main():
        z1 = single.train(train)(x)
        F.cross_entropy(z1, y).backward()
        grads = zip(model.parameters(), single.parameters(), strict=True)
        stats = zip(model.state_dict().values(), single.state_dict().values(), strict=True)
        record = {
            "world": distributed.world(),
            "backend": dist.get_backend(),
            "sync_batch_norm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),
            "logit_gap": (torch.cat(parts) - z1).abs().max().item(),
            "grad_gap": max(
                (p.grad - q.grad).abs().max().item() / (q.grad.abs().max().item() or 1.0)
                for p, q in grads
            ),
            "stats_gap": max((a - b).abs().max().item() for a, b in stats if a.is_floating_point()),
        }
        out.write_text(json.dumps(record) + "\n")
    distributed.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "cuda")
