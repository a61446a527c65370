"""The state half of the method protocol for methods that keep nothing between batches."""

from __future__ import annotations

from bmtard.methods.hooks import Hooks


class Stateless(Hooks):
    """A method with no state across batches: nothing to log, save or restore."""

    def status(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
