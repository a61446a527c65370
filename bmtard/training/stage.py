"""What every training stage does around the loop: resume or start, monitor, log, select, save.

Order of work, so that a failure never costs what was already there: every input is checked
first (the caller loads data and teachers); then free disk space; then the saved state of this
very run is looked up (``bmtard.training.state``); only then are the curves (dvclive, TensorBoard)
opened, and on resume the saved history is replayed into them; the outputs are written at the
end, after which the state is removed and the outputs are hard-linked under
``<run.state_dir>/last-good/`` (Snakemake deletes a job's outputs before it reruns the job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bmtard.config.schema import MonitorConfig, OptimConfig, RunConfig, to_dict
from bmtard.core import distributed
from bmtard.core.cost import Cost, CostMeter, cost_path, write_cost
from bmtard.core.errors import BmtardError
from bmtard.core.io import digest
from bmtard.core.outputs import check_free_space, keep_last_good, last_good_copy, restore
from bmtard.core.paths import from_project, writable_folder
from bmtard.core.provenance import loaded_code_sha256
from bmtard.core.stop import StopRequest
from bmtard.data.loader import Batches
from bmtard.data.splits import Split
from bmtard.data.stage_data import StageData
from bmtard.evaluation.accuracy import monitor as run_monitor
from bmtard.methods.contract import Method
from bmtard.models.checkpoint import ModelSpec, TrainingRecord, save_model, saved_record
from bmtard.runtime.execution import UNUSED_BY, Execution
from bmtard.training.loop import (
    LossLimit,
    NoSaver,
    Parts,
    Stopped,
    fit,
    make_optimizer,
)
from bmtard.training.schedule import should_monitor
from bmtard.training.selection import Selection
from bmtard.training.state import Progress, RandomState, StateStore, TrainingState
from bmtard.training.tracking import Tracker

log = logging.getLogger(__name__)

#: run.* keys that change how a run is saved, or when it stops as diverged, not what it computes
#: (left out of the state key and the record)
NOT_IN_KEY = ("save_every_minutes", "state_dir", "divergence_factor")


@dataclass(frozen=True)
class Outputs:
    """Where a training stage writes: the model file, the dvclive and TensorBoard folders, and
    beside the model what it cost (``cost``)."""

    model: Path
    live: Path
    tb: Path

    @property
    def cost(self) -> Path:
        return cost_path(self.model)

    def kept(self) -> list[Path]:
        """What a finished result is made of (kept as the last good outputs)."""
        return [self.model, self.live, self.tb, self.cost]


def state_root(run: RunConfig) -> Path | None:
    """``run.state_dir`` from the project folder (``bmtard.core.paths.from_project``: a DVC
    queue's temporary copy is deleted with its experiment, a killed one too); None: no state."""
    return None if run.state_dir is None else from_project(run.state_dir)


def check_state_dir(run: RunConfig) -> None:
    """Before any work: ``run.state_dir`` can be created and written (one line if not)."""
    writable_folder(run.state_dir, "run.state_dir", ", or null to train without saving state")


def loss_limit(run: RunConfig, num_classes: int) -> LossLimit | None:
    """The divergence rule: a loss above ``run.divergence_factor`` x ln(classes), the
    cross-entropy of a uniform guess (2.3 on 10 classes), stops the run; None when off."""
    factor = run.divergence_factor
    if factor is None:
        return None
    rule = f"{factor:g} x ln({num_classes} classes), run.divergence_factor"
    return LossLimit(factor * math.log(max(num_classes, 2)), rule)


def run_record(run: RunConfig, section: str) -> dict:
    """The run settings that shape the result of stage ``section``: all but how the state is
    saved and the switches the stage has no use for (``bmtard.runtime.execution.UNUSED_BY``)."""
    unused = (*NOT_IN_KEY, *UNUSED_BY.get(section, ()))
    return {k: v for k, v in to_dict(run).items() if k not in unused}


def result_key(section: str, record: TrainingRecord) -> str:
    """Digest of what makes a result this result: stage, parameters, inputs and code. Saved in
    the model's record, with the model wherever it is copied (a DVC queue's temporary copy too):
    a finished run with the same key needs no training (``finished_before``)."""
    made_of = [
        section,
        record.run,
        record.params,
        record.method,
        record.data,
        record.teachers,
        loaded_code_sha256(),
    ]
    if record.source_sha256 is not None:  # an imported model: the bytes of the file it came from
        made_of.append(record.source_sha256)
    return digest(made_of)


def state_key(result: str, out: Path) -> str:
    """Digest of what makes a run this run: its result key (``result_key``) and its output
    path (the name of its saved training state)."""
    return digest([result, str(out)])


def train_and_save(
    model: nn.Module,
    method: Method,
    spec: ModelSpec,
    data: StageData,
    *,
    section: str,
    optim: OptimConfig,
    monitor: MonitorConfig,
    selection: str,
    run: RunConfig,
    device: torch.device,
    outputs: Outputs,
    record: TrainingRecord,
    execution: Execution | None = None,
    stop: StopRequest | None = None,
) -> Selection:
    """Train (or continue training) ``model``; write the selected epoch's model and the curves.

    ``record`` describes the run (stage, method, params, data, teachers, code); the epoch,
    selection rule and selected metrics are added when the model is saved. ``execution`` lays
    out and compiles the model (the method computes with it too).
    """
    (execution or Execution()).student(model)
    stop = StopRequest() if stop is None else stop  # (an unset request is falsy)
    record = dataclasses.replace(record, run=run_record(run, section))
    key = result_key(section, record)  # before training: later imports must not change it
    store = StateStore(state_root(run), section, state_key(key, outputs.model))
    model_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    check_free_space(section, model_bytes, outputs.model, store.stage_dir)
    main = distributed.is_main()  # with several processes, only rank 0 writes
    for other in store.others() if main else []:
        log.warning(
            "%s: %s was saved by a run with other parameters, inputs or code: not used "
            "(delete it to free %.1f MB)", section, other, other.stat().st_size / 2**20,
        )  # fmt: skip
    batches = Batches(
        data.train, optim.batch_size, device=device, shuffle=True, augment=True, seed=run.seed
    )
    parts = Parts(model, method, batches, make_optimizer(model, optim))
    sel = Selection(selection)
    judged = _monitored_split(section, selection, data)
    history: list[dict[str, float]] = []
    start, before = _resume(store, parts, sel, history)
    gpus = run.processes if device.type == "cuda" else 0
    meter = CostMeter(section, device, gpus, before)
    per_epoch = batches.num_images * distributed.world()  # every rank's share of each batch
    done_at_start = start.epoch * per_epoch + start.count

    def cost(progress: Progress) -> Cost:
        """The cost so far, with the images of the steps done since this start."""
        return meter.cost(images=progress.epoch * per_epoch + progress.count - done_at_start)

    with Tracker(outputs.live, outputs.tb) if main else contextlib.nullcontext() as tracker:
        if main:
            tracker.replay(history)

        def check(epoch: int) -> dict[str, float] | None:
            if not main or not should_monitor(epoch, optim.epochs, monitor):
                return None
            return run_monitor(model, judged, monitor, device, run.seed, on_batch=_stopper(stop))

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if not main:
                return
            history.append({"step": epoch, **metrics})
            tracker.log(epoch, metrics)
            sel.consider(epoch, optim.epochs, metrics, model, method.networks())

        saver = (
            _Saver(store, parts, sel, history, run.save_every_minutes, cost) if main else NoSaver()
        )
        log.info(
            "%s: %d train images, %d monitor images (%s split), epochs %d-%d of %d on %s",
            section, batches.num_images, judged.n_first(monitor.n_images),
            "validation" if judged is data.val else "test",
            start.epoch + 1, optim.epochs, optim.epochs, device,
        )  # fmt: skip
        fit(
            parts, optim, section=section, monitor=check, on_epoch=on_epoch, start=start,
            saver=saver, stop=stop, limit=loss_limit(run, data.num_classes),
        )  # fmt: skip
        if not main:
            return sel
        tracker.summary(
            {
                "selected_epoch": sel.best_epoch,
                "selection": selection,
                **{
                    f"selected_{k}": v
                    for k, v in sel.best_metrics.items()
                    if k in ("clean_acc", "pgd_acc")
                },
            }
        )
        final = dataclasses.replace(
            record,
            epoch=sel.best_epoch,
            selection=selection,
            selected_metrics=sel.best_metrics,
            key=key,
        )
        if sel.weights is None:  # the last epoch is always monitored; NaN scores select none
            raise BmtardError(f"{section}: no epoch was selected (the monitor measured nothing)")
        weights = method.output() or sel.weights  # PeerAiD's weight average, where asked for
        write_model(section, outputs.model, spec, weights, final, store, sel.networks)
        write_cost(outputs.cost, cost(Progress(optim.epochs)))
    finish(outputs, run, store)
    return sel


def _monitored_split(section: str, selection: str, data: StageData) -> Split:
    """The split the monitor measures: the validation split for ``best_val`` (the test split is
    then never used to choose the model), else the test split."""
    if selection != "best_val":
        return data.test
    if data.val is None or not len(data.val):
        raise BmtardError(
            f"{section}: checkpoint best_val selects on the validation split, and the data has "
            "none: set data.val_limit and run the download stage again"
        )
    return data.val


def finished_before(section: str, outputs: Outputs, record: TrainingRecord, run: RunConfig) -> bool:
    """Whether this very run (the same stage, output, parameters, inputs and code: the same key)
    already finished. Its outputs are then in place, or are put back from the last good copy
    (Snakemake deletes them before it reruns a job), and nothing needs training. A run whose
    training state is still saved has not finished."""
    record = dataclasses.replace(record, run=run_record(run, section))
    key = result_key(section, record)
    store = StateStore(state_root(run), section, state_key(key, outputs.model))
    if store.path is not None and store.path.exists():
        return False
    paths = [outputs.model, outputs.live, outputs.tb]
    if all(p.exists() for p in paths) and _key_of(outputs.model) == key:
        log.info("%s: %s is this run's finished result: kept", section, outputs.model)
        _cost_kept(section, outputs)
        return True
    root = state_root(run)
    if root is None:
        return False
    folder = root / "last-good"
    copies = [last_good_copy(p, folder) for p in paths]
    if all(c is not None and c.exists() for c in copies) and _key_of(copies[0]) == key:
        restore(outputs.kept(), folder)
        log.info("%s: %s is this run's finished result: put back", section, copies[0])
        _cost_kept(section, outputs)
        return True
    return False


def _cost_kept(section: str, outputs: Outputs) -> None:
    """A kept result keeps the cost file of the run that made it; one from before costs were
    recorded gets a file that says so (every stage's outputs include one)."""
    if not outputs.cost.exists():
        write_cost(outputs.cost, Cost(section, notes={"recorded": False}))


def _key_of(path: Path | None) -> str | None:
    record = saved_record(path) if path is not None else None
    return None if record is None else record.key


def write_model(
    section: str,
    path: Path,
    spec: ModelSpec,
    weights: dict[str, torch.Tensor],
    record: TrainingRecord,
    store: StateStore | None = None,
    networks: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Save the stage's model (with its method's other ``networks``, by name); a failed write
    (e.g. a full disk) is one line that says the trained state is kept and a rerun writes the
    outputs without training again."""
    try:
        save_model(path, spec, weights, record, networks)
    except (OSError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        kept = (
            f"the trained state is kept in {store.path}: free space and run the same command "
            "again (it writes the outputs without training again)"
            if store is not None and store.path is not None and store.path.is_file()
            else "free space and run the stage again"
        )
        raise BmtardError(f"{section}: cannot write {path} ({first}); {kept}") from None


def finish(outputs: Outputs, run: RunConfig, store: StateStore | None) -> None:
    """The outputs are complete: keep a hard-linked copy of them, then drop the saved state."""
    root = state_root(run)
    if root is not None:
        keep_last_good([p for p in outputs.kept() if p.exists()], root / "last-good")
    if store is not None:
        store.discard()


def _resume(
    store: StateStore, parts: Parts, sel: Selection, history: list[dict[str, float]]
) -> tuple[Progress, Cost | None]:
    """Restore every part from this run's saved state, if there is one; return where to start
    and what the run cost before."""
    state = store.load()
    if state is None:
        return Progress(), None
    parts.model.load_state_dict(state.model)
    parts.optimizer.load_state_dict(state.optimizer)
    parts.method.load_state_dict(state.method)
    parts.batches.load_state_dict(state.loader)  # type: ignore[attr-defined]
    sel.load_state_dict(state.selection)
    history[:] = state.history
    state.rng.restore()
    p = state.progress
    if not distributed.is_main():
        # rank 0 saved the sums of every rank, and its own random state: start this rank's
        # sums afresh, and give its attacks' noise a stream of its own again
        p = dataclasses.replace(p, sums={}, count=0)
        torch.manual_seed(distributed.rank_seed(torch.initial_seed() + p.epoch) % 2**63)
    log.info("resuming from %s, the state %s", store.path, describe(p))
    return p, Cost.from_dict(state.cost)


class _Saver:
    """Saves the training state when the loop asks (at epoch ends), and says a save is due
    every ``minutes`` within an epoch."""

    def __init__(
        self,
        store: StateStore,
        parts: Parts,
        sel: Selection,
        history: list[dict[str, float]],
        minutes: float,
        cost: Callable[[Progress], Cost],
    ) -> None:
        self.store, self.parts, self.sel, self.history = store, parts, sel, history
        self.cost = cost
        self.every_s = minutes * 60
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.store.path is not None and time.monotonic() - self.last >= self.every_s

    def save(self, progress: Progress) -> str:
        if self.store.path is None:
            return ""
        p = self.parts
        state = TrainingState(
            key=self.store.key,
            progress=dataclasses.replace(progress, sums=dict(progress.sums)),
            model=p.model.state_dict(),
            optimizer=p.optimizer.state_dict(),
            method=p.method.state_dict(),
            loader=p.batches.state_dict(),  # type: ignore[attr-defined]
            rng=RandomState.capture(),
            selection=self.sel.state_dict(),
            history=self.history,
            cost=self.cost(progress).as_dict(),
        )
        self.store.save(state)
        self.last = time.monotonic()
        return f"the state {describe(progress)} ({self.store.path})"


def describe(progress: Progress) -> str:
    """'after epoch 3' or 'at epoch 4, batch 17' (17 batches of epoch 4 done)."""
    if progress.batch == 0:
        return f"after epoch {progress.epoch}"
    return f"at epoch {progress.epoch + 1}, batch {progress.batch}"


def _stopper(stop: StopRequest):
    def on_batch(task: str, index: int) -> None:
        if stop:
            raise Stopped

    return on_batch
