"""Everything a training stage needs to continue after a kill, in one typed structure, and the
file that keeps it.

A ``TrainingState`` is taken at the end of every epoch and, inside long epochs, every
``run.save_every_minutes``. It holds the model, the optimizer (momentum buffers), the method's
state (B-MTARD's temperatures, weights and reference losses), the position (epoch, batch and the
running sums of the epoch's logged values), every random generator that affects the result
(torch CPU and CUDA, which also draw the PGD noise; numpy; Python; the loader's
shuffle/augmentation generator), the checkpoint selection (best so far, its epoch and weights)
and the logged curves so far (replayed into dvclive and TensorBoard on resume, so the curves
have each step once).

The file is ``<run.state_dir>/<stage>/<key>.pt``; the key digests the stage, its output path,
its parameters, its inputs' SHA-256s and the code (``bmtard.core.provenance``), so a state is only
ever reused by the very same run. It is written atomically (a kill mid-write leaves the previous
state), outside every output that DVC or Snakemake deletes, and removed once the stage has
written its outputs. A damaged file is reported and ignored (the stage starts over).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bmtard.core import faults
from bmtard.core.io import save_torch, write_atomic

log = logging.getLogger(__name__)

FORMAT = "bmtard.training-state/1"


@dataclass
class Progress:
    """Where training stands: ``epoch`` epochs are finished and ``batch`` batches of the next
    one; ``sums`` holds that partial epoch's logged values summed with batch-size weights over
    ``count`` images."""

    epoch: int = 0
    batch: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0


@dataclass
class RandomState:
    """Every global random generator: torch (CPU, and each CUDA device), numpy, Python."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]
    numpy: dict[str, Any]
    python: list[Any]

    @classmethod
    def capture(cls) -> RandomState:
        np_state = np.random.get_state(legacy=False)
        inner = np_state["state"]
        return cls(
            torch_cpu=torch.get_rng_state(),
            torch_cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            numpy={
                "bit_generator": np_state["bit_generator"],
                "key": torch.from_numpy(inner["key"].astype(np.int64)),
                "pos": int(inner["pos"]),
                "has_gauss": int(np_state["has_gauss"]),
                "gauss": float(np_state["gauss"]),
            },
            python=_listify(random.getstate()),
        )

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        n = self.numpy
        np.random.set_state(
            {
                "bit_generator": n["bit_generator"],
                "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                "has_gauss": n["has_gauss"],
                "gauss": n["gauss"],
            }
        )
        random.setstate(_tuplify(self.python))


def _listify(x: Any) -> Any:
    return [_listify(v) for v in x] if isinstance(x, tuple) else x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


@dataclass
class TrainingState:
    """One saved moment of a training stage (see the module docstring)."""

    key: str
    progress: Progress
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    method: dict[str, Any]
    loader: dict[str, Any]
    rng: RandomState
    selection: dict[str, Any]
    history: list[dict[str, float]]  # the logged metrics of each finished epoch, with "step"
    cost: dict[str, Any] = field(default_factory=dict)  # what the run cost so far (core.cost)

    def to_payload(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        return d

    @classmethod
    def from_payload(cls, d: dict[str, Any]) -> TrainingState:
        return cls(
            key=d["key"],
            progress=Progress(**d["progress"]),
            model=d["model"],
            optimizer=d["optimizer"],
            method=d["method"],
            loader=d["loader"],
            rng=RandomState(**d["rng"]),
            selection=d["selection"],
            history=d["history"],
            cost=d.get("cost", {}),
        )


class StateStore:
    """The training-state file of one run of one stage (``folder`` None: nothing is saved)."""

    def __init__(self, folder: str | Path | None, stage: str, key: str) -> None:
        self.stage_dir = None if folder is None else Path(folder) / stage
        self.key = key
        self.path = None if self.stage_dir is None else self.stage_dir / f"{key[:16]}.pt"

    def load(self) -> TrainingState | None:
        """The saved state of this run, or None (none saved; a damaged file is reported)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if payload.get("format") != FORMAT or payload.get("key") != self.key:
                raise ValueError("another run's or an older format's state")
            return TrainingState.from_payload(payload)
        except Exception as e:  # any damage means "start over", never a crash
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            log.warning(
                "ignoring the damaged training state %s (%s); starting over", self.path, first
            )
            return None

    def save(self, state: TrainingState) -> None:
        """Write ``state`` atomically (a kill during the write leaves the previous file)."""
        if self.path is None:
            return

        def writer(tmp: Path) -> None:
            save_torch(state.to_payload(), tmp)
            faults.hit("state_write", before=lambda: _cut_in_half(tmp))

        write_atomic(self.path, writer)

    def discard(self) -> None:
        """The stage's outputs are written: the state is no longer needed."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def others(self) -> list[Path]:
        """Saved states of this stage made by other parameters, inputs or code (never used)."""
        if self.stage_dir is None or not self.stage_dir.is_dir():
            return []
        return sorted(p for p in self.stage_dir.glob("*.pt") if p != self.path)


def _cut_in_half(path: Path) -> None:
    """For the crash tests: leave ``path`` half-written, as a kill during the write would."""
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
