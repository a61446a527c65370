"""How ``bench_step`` measures a step: wall-clock time synchronised with the device, peak memory,
FLOPs counted op by op, the card's datasheet peak, and a profile of the ops (torch alone)."""

from __future__ import annotations

import contextlib
import platform
import resource
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

#: dense peak FLOP/s by the vendors' datasheets, (name substring, {dtype: FLOP/s}), first match
#: wins. fp32 convolutions on these cards run as TF32 unless cudnn.allow_tf32 is off.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    """CUDA's peak allocated memory since ``reset_peak``, or the process's peak RSS on a CPU
    (cumulative over everything run so far), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def seconds_per_step(step: Callable[[], None], warmup: int, steps: int, device) -> float:
    """Wall-clock seconds of one call of ``step``, after ``warmup`` calls (compilation, cudnn
    autotuning, allocator growth), synchronised with the device around the timed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


class FlopCount(TorchDispatchMode):
    """Sums ``torch.utils.flop_counter``'s count of every op run inside it. This is
    ``FlopCounterMode`` without its per-module tracking, whose hooks refuse the
    ``autograd.grad`` on a leaf tensor that every PGD step makes."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


@contextlib.contextmanager
def inference_as_no_grad() -> Iterator[None]:
    """``torch.inference_mode`` as ``torch.no_grad`` meanwhile: ops under inference mode skip
    the dispatch modes, so a frozen teacher's forwards would not be counted. The arithmetic is
    the same."""
    real = torch.inference_mode
    torch.inference_mode = lambda mode=True: torch.no_grad()  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.inference_mode = real  # type: ignore[assignment]


def flops_of(step: Callable[[], None]) -> int:
    """The FLOPs of one call of ``step`` (eager; teachers under inference mode included)."""
    with inference_as_no_grad(), FlopCount() as counter:
        step()
    return counter.total


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The card's dense datasheet peak (FLOP/s) for ``precision`` (TF32 for fp32 where cudnn
    may use it), or None for a CPU or an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    dtype = precision
    if precision == "fp32" and torch.backends.cudnn.allow_tf32:
        dtype = "tf32"
    for key, peaks in PEAKS:
        if key in name:
            return peaks[dtype]
    return None


def profile_ops(step: Callable[[], None], device: torch.device, top: int) -> list[dict]:
    """One call of ``step`` under ``torch.profiler``: the ``top`` ops by self time (on the GPU
    where there is one, else on the CPU), each with its calls, self milliseconds and share of
    the step's summed self time. Counts and shares depend on the load far less than seconds."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def own(e) -> float:
        return float(getattr(e, attr, 0.0) or 0.0)

    total = sum(own(e) for e in events) or 1.0
    ranked = sorted(events, key=own, reverse=True)[:top]
    return [
        {"op": e.key, "calls": e.count, "self_ms": own(e) / 1e3, "share": own(e) / total}
        for e in ranked
    ]
