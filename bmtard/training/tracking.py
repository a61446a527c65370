"""Per-epoch curves to dvclive (for ``dvc plots`` / ``dvc exp show``) and TensorBoard.

dvclive is used with ``dvcyaml=False`` (the stage's files are declared in dvc.yaml by hand; by
default dvclive would rewrite dvc.yaml) and ``save_dvc_exp=False`` (``dvc exp run`` records the
experiment itself). Where dvclive is not installed (e.g. a bare GPU machine) only TensorBoard is
written, with a warning.

A stage opens its tracker only after every input was checked; the folders are then replaced
(a resumed stage replays the saved history into them, see ``replay``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    """Writes scalars of one stage to ``live_dir`` (dvclive) and ``tb_dir`` (TensorBoard)."""

    def __init__(self, live_dir: str | Path, tb_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = Path(tb_dir)
        if tb_dir.exists():  # a rerun replaces the curves instead of appending a second run
            shutil.rmtree(tb_dir)
        self.tb = SummaryWriter(str(tb_dir))
        try:
            from dvclive import Live
        except ImportError:
            log.warning("dvclive is not installed: writing TensorBoard curves only")
            self.live = None
        else:
            self.live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` (name -> float) at ``step`` (the epoch)."""
        for name, value in metrics.items():
            self.tb.add_scalar(name, value, step)
        if self.live is not None:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(name, value)
            self.live.next_step()
        self.tb.flush()

    def replay(self, history: list[dict[str, float]]) -> None:
        """Log a resumed run's earlier epochs again (each {"step": epoch, **metrics}), so the
        fresh curves hold every step once."""
        for entry in history:
            self.log(int(entry["step"]), {k: v for k, v in entry.items() if k != "step"})

    def summary(self, values: dict[str, Any]) -> None:
        """Final values shown by ``dvc exp show`` (in dvclive's metrics.json)."""
        if self.live is not None:
            self.live.summary.update(values)

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
        self.tb.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
