"""Which epoch's model a training stage keeps: 'best' = highest (clean + PGD)/2 on the monitor
(the official rule; with no PGD in the monitor, clean accuracy), 'best_val' = the same rule on
the validation split (the stage's monitor then measures that split), or 'last'. With the model,
the networks its method trains besides it (a fine-tuned teacher, a peer) are kept as they were
at the selected epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Selection:
    """The selected epoch so far, its monitor metrics and a CPU copy of its weights."""

    rule: str
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    networks: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def consider(
        self,
        epoch: int,
        epochs: int,
        metrics: dict[str, float],
        model: nn.Module | None = None,
        networks: dict[str, nn.Module] | None = None,
    ) -> bool:
        """True when the model of ``epoch`` becomes the selected one (its weights are copied, and
        those of ``networks``, the method's other networks by name)."""
        if self.rule == "last":
            chosen = epoch == epochs
        elif "clean_acc" not in metrics:
            return False
        else:
            score = (metrics["clean_acc"] + metrics.get("pgd_acc", metrics["clean_acc"])) / 2
            chosen = score > self.best_score
            if chosen:
                self.best_score = score
        if chosen:
            self.best_epoch = epoch
            self.best_metrics = dict(metrics)
            if model is not None:
                self.weights = _copy(model)
            self.networks = {name: _copy(net) for name, net in (networks or {}).items()}
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "weights": self.weights,
            "networks": self.networks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule = state["rule"]
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        self.best_metrics = dict(state["best_metrics"])
        self.weights = state["weights"]
        self.networks = dict(state.get("networks", {}))


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state_dict (contiguous, whatever the training layout)."""
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
