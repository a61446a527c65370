"""Per-image results of attacks, batch by batch, with progress bars and resume after interruption.

Long evaluations (AutoAttack on 10,000 images) are cut into batches; after every batch its result
(which images stayed correctly classified) is saved to a small JSON state file. A rerun with the
same model, data and protocol (the same ``key``) takes finished batches from the file and only
attacks the rest; the file is removed once the results are written. Each batch's attack is
seeded from (seed, task, batch index), so a resumed run gives exactly the numbers of an
uninterrupted one. (The packaged reference AutoAttack, pyautoattack 0.2.0, has a state file of its
own, but restoring it fails in that release, so resuming happens here, between batches.)
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bmtard.attacks.pgd import pgd_ce
from bmtard.config.attack_table import pixels
from bmtard.core import faults
from bmtard.core.io import digest, write_json
from bmtard.core.paths import from_project
from bmtard.data.loader import Batches
from bmtard.data.splits import Split

log = logging.getLogger(__name__)

#: (model, x, y) -> x_adv
Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]


def pgd_attack(eps: float, steps: int = 20, step_size: float | None = None) -> Attack:
    """PGD-CE at eps (1/255) from a uniform start; step eps/4 unless given (in 1/255)."""
    step = pixels(eps / 4 if step_size is None else step_size)
    return functools.partial(pgd_ce, eps=pixels(eps), step_size=step, steps=steps, init="uniform")


def batch_seed(seed: int, task: str, index: int) -> int:
    """The seed of one batch of one task: independent of what ran before it."""
    return int(digest([seed, task, index])[:8], 16)


class ResumeState:
    """Per-batch results saved in ``folder/<key>.json``; a file with another key is ignored, a
    damaged one (e.g. cut short by a full disk) is reported and treated as absent."""

    def __init__(self, folder: str | Path | None, key: str) -> None:
        # from the project folder: a DVC queue's temporary copy goes with its experiment
        self.path = None if folder is None else from_project(folder) / f"{key[:16]}.json"
        self.key = key
        self.done: dict[str, dict[str, str]] = {}
        if self.path is not None and self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
                done = saved["done"] if saved.get("key") == key else {}
                if not all(
                    isinstance(bits, str) and set(bits) <= {"0", "1"}
                    for batches in done.values()
                    for bits in batches.values()
                ):
                    raise ValueError("unexpected content")
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                log.warning("ignoring the damaged evaluation state %s (%s)", self.path, e)
                done = {}
            self.done = done
            if done:
                n = sum(len(v) for v in done.values())
                log.info("resuming evaluation from %s (%d finished batches)", self.path, n)

    def get(self, task: str, index: int) -> Tensor | None:
        bits = self.done.get(task, {}).get(str(index))
        return None if bits is None else torch.tensor([b == "1" for b in bits])

    def put(self, task: str, index: int, mask: Tensor) -> None:
        self.done.setdefault(task, {})[str(index)] = "".join("1" if b else "0" for b in mask)
        if self.path is not None:
            write_json(self.path, {"key": self.key, "done": self.done})

    def finish(self) -> None:
        """The evaluation is complete and written: drop the state file."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@contextmanager
def resumable(folder: str | Path | None) -> Iterator[Callable[[str], ResumeState]]:
    """The per-batch resume states of the evaluations in the block, by key, under ``folder``
    (None: kept in memory only): each state opened in it is dropped when the block ends
    normally, its results written; a block that raises (a kill, a full disk) keeps them, and the
    same command resumes from them."""
    opened: list[ResumeState] = []

    def open_state(key: str) -> ResumeState:
        state = ResumeState(folder, key)
        opened.append(state)
        return state

    yield open_state
    for state in opened:
        state.finish()


@dataclass(frozen=True)
class Task:
    """One column of results: an attack (None = clean) on the first ``n`` images, with
    ``restarts`` independent runs (an image counts as robust only if it survives all)."""

    name: str
    attack: Attack | None
    n: int
    restarts: int = 1


class Runner:
    """Evaluates tasks on the first images of a split and remembers each task's mask.

    Attacks draw their random starts from a seed of their own (``batch_seed``) inside
    ``torch.random.fork_rng``, so evaluating never changes the random stream of a training run.
    """

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        *,
        batch_size: int,
        device: torch.device,
        seed: int,
        state: ResumeState | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.model = model
        self.split = split
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.state = state or ResumeState(None, "")
        self.on_batch = on_batch  # called after each computed batch (tests interrupt here)
        self.masks: dict[str, Tensor] = {}
        self._batches: dict[int, Batches] = {}

    def mask(self, task: Task) -> Tensor:
        """Bool (task.n,): image i is still classified correctly under the task's attack.

        The model runs in eval mode (its mode is restored afterwards)."""
        if task.name in self.masks:
            return self.masks[task.name]
        if task.n not in self._batches:
            self._batches[task.n] = Batches(
                self.split, self.batch_size, device=self.device, limit=task.n
            )
        parts = []
        was_training = self.model.training
        self.model.eval()
        try:
            bar = tqdm(
                self._batches[task.n], desc=task.name, unit="batch", leave=False, disable=None
            )
            for index, (x, y) in enumerate(bar):
                done = self.state.get(task.name, index)
                if done is None:
                    done = self._batch(task, index, x, y)
                    self.state.put(task.name, index, done)
                    faults.hit("eval_batch")
                    if self.on_batch is not None:
                        self.on_batch(task.name, index)
                parts.append(done)
        finally:
            self.model.train(was_training)
        out = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)
        self.masks[task.name] = out
        return out

    def _batch(self, task: Task, index: int, x: Tensor, y: Tensor) -> Tensor:
        ok = torch.ones(len(y), dtype=torch.bool)
        devices = [x.device] if x.device.type == "cuda" else []
        for restart in range(task.restarts):  # each restart attacks only the survivors
            idx = ok.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xs, ys = x[idx.to(x.device)], y[idx.to(y.device)]
            if task.attack is not None:
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(batch_seed(self.seed, f"{task.name}/{restart}", index))
                    xs = task.attack(self.model, xs, ys)
            with torch.no_grad():
                ok[idx] = (self.model(xs).argmax(1) == ys).cpu()
        return ok
