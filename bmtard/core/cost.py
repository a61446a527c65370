"""What a stage's work cost: wall time, the device, images processed and per second, peak memory
and GPU-seconds, summed over every start of a resumed run.

The cost is written beside a stage's result (``<model>.cost.json``, the evaluation's
``metrics/cost.json``) and gathered into the model card, ``metrics/details.json`` (its ``cost``)
and the comparison; never into the checkpoint file (its record included) or the metrics that DVC
compares, whose bytes must be the same for two runs of the same settings (an interrupted one,
another engine's): two runs never take the same time.

Peak memory: on a GPU, the most CUDA memory torch allocated on the run's device (reset at each
start); on a CPU, the process's peak resident set size (``ru_maxrss``). Across the starts of a
resumed run: the largest.
"""

from __future__ import annotations

import platform
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bmtard.core.io import write_json

if TYPE_CHECKING:  # torch is imported where a cost is measured, not where one is read
    import torch

#: what a cost file holds (``kind``): the cost of a stage, or a stage that had nothing to do
FORMAT = "bmtard.cost/1"


def device_name(device: torch.device) -> str:
    """The device as a person names it: the GPU's model, or the CPU and its threads."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"{cpu_model()}, {n} thread{'' if n == 1 else 's'}"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else its architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine() or 'unknown'} CPU"


@dataclass(frozen=True)
class Cost:
    """A stage's cost so far. seconds: wall time of its work (every start summed); images: the
    images its steps processed (training: per epoch the training split; evaluation: the test
    images evaluated, each by every attack); peak_memory_mb and its ``memory`` kind;
    gpu_seconds: seconds times the GPUs it held (0 on a CPU); starts: how many processes did the
    work (1 unless resumed)."""

    stage: str
    device: str = ""
    devices: int = 0
    seconds: float = 0.0
    images: int = 0
    peak_memory_mb: float = 0.0
    memory: str = ""
    gpu_seconds: float = 0.0
    starts: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 and self.images else None

    def as_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, **asdict(self)}
        out["images_per_second"] = self.images_per_second
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Cost | None:
        """A cost as written (None for an absent or unreadable one)."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            return None
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _peak_mb(device: torch.device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    # Linux gives ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"


class CostMeter:
    """Measures one start of a stage's work, on top of what earlier starts cost (``before``, a
    saved ``Cost``): ``add_images(n)`` as the work goes, ``cost()`` the total so far."""

    def __init__(
        self, stage: str, device: torch.device, gpus: int = 1, before: Cost | None = None
    ) -> None:
        self.stage, self.device = stage, device
        self.gpus = gpus if device.type == "cuda" else 0
        self.before = before or Cost(stage)
        self.images = 0
        if device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(device)
        self.start = time.monotonic()

    def add_images(self, n: int) -> None:
        self.images += int(n)

    def cost(self, images: int | None = None) -> Cost:
        """The total so far; ``images``: this start's images, where the caller counts them
        (instead of ``add_images``)."""
        seconds = time.monotonic() - self.start
        peak, kind = _peak_mb(self.device)
        b = self.before
        return replace(
            b,
            device=device_name(self.device),
            devices=max(self.gpus, 1),
            seconds=b.seconds + seconds,
            images=b.images + (self.images if images is None else int(images)),
            peak_memory_mb=max(b.peak_memory_mb, peak),
            memory=kind,
            gpu_seconds=b.gpu_seconds + seconds * self.gpus,
            starts=b.starts + 1,
        )


def cost_path(model: str | Path) -> Path:
    """Where the cost of the stage that wrote ``model`` goes: beside it, ``<model>.cost.json``."""
    model = Path(model)
    return model.with_name(model.stem + ".cost.json")


def write_cost(path: str | Path, cost: Cost) -> None:
    """Write a cost file atomically."""
    write_json(path, cost.as_dict())


def read_cost(path: str | Path) -> Cost | None:
    """A cost file's content (None where there is none or it is not one)."""
    import json

    try:
        return Cost.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError):
        return None
