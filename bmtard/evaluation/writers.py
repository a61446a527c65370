"""The evaluation's files, each written atomically:

metrics JSON     what runs are compared by, flat: accuracy (%) clean and per attack,
                 w_robust, the sanity verdict, the epoch of the weights (DVC metrics: the
                 columns of ``dvc exp show``)
details JSON     every number: accuracies with the worst case, weighted robust accuracy per
                 attack, eps-curve, worst class, the teachers' accuracy, each sanity check, and
                 what the student, its teachers and the evaluation cost (the card's ``cost``;
                 the one part that differs between two runs of the same settings)
eps_curve.csv    eps (1/255) -> PGD-20 accuracy (%)              (a DVC plot)
per_class.csv    class -> clean and worst-case robust accuracy (%) (a DVC plot)
model card       ``bmtard.evaluation.card.ModelCard``
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bmtard.core.io import write_atomic, write_json
from bmtard.evaluation.card import ModelCard
from bmtard.evaluation.protocol import Evaluation


def _csv(rows: list[list[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write_outputs(
    ev: Evaluation,
    *,
    metrics: str | Path,
    details: str | Path,
    card: ModelCard,
    card_path: str | Path,
    plots: str | Path,
    selected_epoch: int | None = None,
    teachers: dict | None = None,
) -> None:
    """Write the metrics and details JSON, both plot CSVs (in ``plots``) and the model card.
    ``selected_epoch``: the epoch of the model's weights (its training record's; the metrics'
    ``epoch``); ``teachers``: role -> the teacher's clean and robust accuracy (%)."""
    plots = Path(plots)
    curve = [["eps", "accuracy"]] + [[e, v] for e, v in ev.eps_curve.items()]
    classes = [["class", "clean", "robust"]] + [
        [c, ev.per_class["clean"][c], ev.per_class["robust"][c]] for c in ev.per_class["clean"]
    ]
    for name, rows in (("eps_curve.csv", curve), ("per_class.csv", classes)):
        text = _csv(rows)
        write_atomic(plots / name, lambda tmp, text=text: tmp.write_text(text))
    headline = ev.metrics()
    if selected_epoch is not None:
        headline["epoch"] = selected_epoch
    extra = {"teachers": teachers} if teachers is not None else {}
    if card.cost is not None:
        extra["cost"] = card.cost
    write_json(details, {**ev.details(), **extra})
    write_json(metrics, headline)
    write_json(card_path, card.as_dict())
