"""Several processes in one training stage (``run.processes``, under torchrun), data parallel.

A stage with ``run.processes: N > 1`` runs itself as N workers with torchrun's launcher
(``bmtard.core.launch``); each worker finds its rank in torchrun's environment. The plan:

- every rank draws the same global batch (the loader's seed is shared) and keeps its contiguous
  share of the rows (``shard``), so the N shares of a step are exactly the single-process batch;
- the student is wrapped in DistributedDataParallel for the training forwards (``wrap``); the
  gradient of every rank's loss, scaled by ``loss_scale``, averages to the gradient of the mean
  over the global batch, as one process computes it. On CUDA its BatchNorm layers become
  SyncBatchNorm, so the batch statistics are those of the global batch, as the methods compute
  them in one process; torch's SyncBatchNorm refuses CPU tensors, so on the CPU (gloo) each
  rank normalises its share with its own statistics (and DDP copies rank 0's running ones);
- the attacks run the unwrapped module (``bmtard.attacks.pgd``): their gradient is with respect to
  the input only;
- the balance of B-MTARD and MTARD (temperatures, weights, reference losses) is updated from
  losses and entropies averaged over the global batch (``batch_mean``), so it is identical on
  every rank;
- a stop (SIGTERM) is agreed by every rank at each step (``any_rank``), so all stop at the same
  batch; only rank 0 saves the training state, monitors, logs and writes outputs (``on_main``).

With one process nothing here communicates and every function returns its input unchanged: the
single-process run is the faithful one, bit for bit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bmtard.core.errors import ParamsError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a rank waits for the others in one collective (rank 0 monitors alone meanwhile)
TIMEOUT = timedelta(hours=2)


def world() -> int:
    """The number of processes of this stage (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


#: rank r seeds its random generators with seed + r * RANK_SEED_STRIDE (the attacks' random
#: starts differ between ranks; rank 0 draws what a single process draws)
RANK_SEED_STRIDE = 1_000_003


def rank_seed(seed: int) -> int:
    """This rank's seed for a run seeded with ``seed`` (``seed`` itself on rank 0)."""
    return seed + rank() * RANK_SEED_STRIDE


def launched_size(env: dict[str, str] | None = None) -> int:
    """The number of processes torchrun started (its ``WORLD_SIZE``), 1 outside torchrun."""
    env = os.environ if env is None else env
    value = env.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def start(processes: int, device: torch.device) -> torch.device:
    """Join the process group of this torchrun worker; return its device (on CUDA the GPU of
    its local rank). ``processes`` is ``run.processes``: it must equal torchrun's world size."""
    size = launched_size()
    if size != processes:
        raise ParamsError(
            f"run.processes = {processes}, but torchrun started {size} processes: set "
            f"run.processes: {size} (the stage starts torchrun itself when it is above 1)"
        )
    if device.type == "cuda":
        if device.index is not None:
            raise ParamsError(
                f"run.device = '{device}' with run.processes = {processes}: each process takes "
                "one GPU of its own; use run.device: auto or cuda"
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ParamsError(
                f"run.processes = {processes}, but only {torch.cuda.device_count()} GPU(s) are "
                "visible to this stage (CUDA_VISIBLE_DEVICES)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        # CPU tensors (the stop flag, the epoch's sums) over gloo; the model's over NCCL
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    if not is_main():  # one log (and one progress bar, bmtard.training.loop): rank 0's
        logging.getLogger().setLevel(logging.WARNING)
    log.info("%d processes (%s), this is rank %d on %s", world(), backend, rank(), device)
    return device


def stop() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, of_rank: int | None = None, size: int | None = None) -> slice:
    """The rows of a batch of ``n`` that ``of_rank`` (default: this rank) keeps: contiguous,
    the first ``n % size`` ranks one row more."""
    r = rank() if of_rank is None else of_rank
    w = world() if size is None else size
    base, extra = divmod(n, w)
    begin = r * base + min(r, extra)
    return slice(begin, begin + base + (1 if r < extra else 0))


def loss_scale(local: int, total: int, size: int | None = None) -> float:
    """The factor on a rank's batch-mean loss so that DDP's average of the gradients over the
    ``size`` ranks (default: all) is the gradient of the mean over all ``total`` rows, ``local``
    of them on this rank."""
    return local * (world() if size is None else size) / total


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` for the training forwards: itself with one process, else its DDP wrapper (with
    SyncBatchNorm on CUDA). The parameters stay ``model``'s: the optimizer, the saved state and
    the selection keep using ``model``."""
    if world() == 1:
        return model
    if device.type == "cuda":
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BN children in place
        # every rank's running statistics are then the same: no buffer broadcast per forward
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index], broadcast_buffers=False
        )
    return nn.parallel.DistributedDataParallel(model)


def batch_mean(n: int, *values: Tensor) -> tuple[Tensor, ...]:
    """Per-rank means over ``n`` rows each -> the means over the global batch (float64), the
    same on every rank. One process: the values themselves, untouched."""
    if world() == 1:
        return values
    n_t = torch.tensor(float(n), dtype=torch.float64, device=values[0].device)
    stacked = torch.stack([*(v.detach().to(torch.float64) * n for v in values), n_t])
    dist.all_reduce(stacked)
    return tuple(stacked[:-1] / stacked[-1])


def sums(values: dict[str, float], count: int) -> tuple[dict[str, float], int]:
    """An epoch's per-rank sums and image count -> the sums and count over every rank."""
    if world() == 1:
        return values, count
    keys = sorted(values)
    t = torch.tensor([*(values[k] for k in keys), float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t[:-1].tolist(), strict=True)), int(t[-1])


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """For each flag, whether it is true on any rank (every rank calls this at the same point;
    one small host-side all-reduce, no wait for the device)."""
    if world() == 1:
        return flags
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only (e.g. a decision that writes files) and give its result to every
    rank (it must pickle)."""
    if world() == 1:
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]
