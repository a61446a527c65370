"""The model card: a RobustBench-style description of one evaluated model (what it is, the
numbers the protocol measured and what they were measured on), with what made it (its training
record) and the code and test data of the evaluation. Written as JSON beside the metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bmtard.config import attack_table
from bmtard.core.provenance import code_version
from bmtard.evaluation.protocol import Evaluation
from bmtard.models.checkpoint import CheckpointInfo


@dataclass
class ModelCard:
    """One evaluated model. Accuracies in %, eps as "8/255"; ``training``: the record's fields
    that are set (stage, method, source, epoch, selection, teachers, the data's SHA-256s, the
    training code); ``sanity``: each check with its values and verdict (None: not run);
    ``teachers``: each teacher the student learnt from, with its measured and published numbers
    (None: a model evaluated outside the pipeline); ``cost``: what its training, its teachers
    and this evaluation cost (``bmtard.core.cost``; None: not known)."""

    architecture: str
    width: float
    num_classes: int
    checkpoint: str
    checkpoint_sha256: str
    training: dict[str, Any]
    evaluation_code: dict[str, Any]
    dataset: str
    threat_model: str
    eps: str
    n_test_points: int
    additional_data: bool
    clean_acc: float
    autoattack_acc: float | None
    attacks_acc: dict[str, float]
    weighted_robust_acc: dict[str, float]
    autoattack_version: str | None
    autoattack_warnings: list[str] | None
    eps_curve: dict[str, float]
    per_class: dict[str, Any]
    protocol: dict[str, Any]
    sanity: dict[str, Any] | None = None
    teachers: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None

    @classmethod
    def of(cls, ev: Evaluation, info: CheckpointInfo, checkpoint: str, dataset: str) -> ModelCard:
        """The card of the model ``info`` describes (its file ``checkpoint``) and its
        evaluation ``ev`` on ``dataset``."""
        rec = info.record
        training = {
            "stage": rec.stage,
            "method": rec.method,
            "source": rec.source,
            "source_sha256": rec.source_sha256,
            "epoch": rec.epoch,
            "selection": rec.selection,
            "teachers": rec.teachers,
            "data_sha256": {k: v.get("sha256") for k, v in rec.data.items() if isinstance(v, dict)},
            "code": rec.code,
        }
        sanity = {c.name: {**c.as_dict(), "detail": c.detail} for c in ev.checks}
        return cls(
            architecture=info.spec.arch,
            width=info.spec.width,
            num_classes=info.spec.num_classes,
            checkpoint=str(checkpoint),
            checkpoint_sha256=info.sha256,
            training={k: v for k, v in training.items() if v not in (None, {})},
            evaluation_code=code_version(),
            dataset=dataset,
            threat_model="Linf",
            eps=f"{ev.protocol['eps']:g}/255",
            n_test_points=ev.n_images,
            additional_data=False,
            clean_acc=ev.accuracy["clean"],
            autoattack_acc=ev.accuracy.get(attack_table.the("ensemble")),
            attacks_acc={k: v for k, v in ev.accuracy.items() if k != "clean"},
            weighted_robust_acc=ev.weighted_robust,
            autoattack_version=ev.protocol.get("autoattack", {}).get("version"),
            autoattack_warnings=ev.autoattack_warnings,
            eps_curve=ev.eps_curve,
            per_class=ev.per_class,
            protocol=ev.protocol,
            sanity=sanity or None,
        )

    def as_dict(self) -> dict[str, Any]:
        """The card as written: every field, but ``sanity``, ``teachers`` and ``cost`` where
        unset."""
        out = dataclasses.asdict(self)
        for optional in ("sanity", "teachers", "cost"):
            if out[optional] is None:
                del out[optional]
        return out
