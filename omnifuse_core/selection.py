"""Which round's model a run keeps for its final test and for ``predict`` (config key ``final-model``).

``last`` (the default, Flower's and most trainers' behaviour) keeps the newest model. ``best-val`` keeps the model
of the round with the highest validation headline metric (AUROC; C-index for survival), the "monitor a validation
metric and reload the best model before testing" convention of PyHealth's Trainer and Keras' ModelCheckpoint: on a
small cohort a long schedule overfits (BENCHMARKS.md, B2 at 10 epochs), and the validation split, never the test
split, decides. Ties keep the earlier round; a NaN metric never wins.
"""
from __future__ import annotations

import math
from typing import Any, Optional

RULES = ("last", "best-val")


class RoundSelection:
    """Tracks the selected round, its validation value and a payload (weights, prediction mode, ...).

    Args:
        rule: ``last`` or ``best-val``.
    """

    def __init__(self, rule: str) -> None:
        if rule not in RULES:
            raise ValueError(f"config key 'final-model' = {rule!r}; expected one of {RULES}")
        self.rule = rule
        self.round: int = 0
        self.value: Optional[float] = None
        self.payload: Any = None

    def offer(self, rnd: int, value: Any, payload: Any) -> bool:
        """Consider round ``rnd`` with validation ``value``; returns True when it becomes the selected round."""
        finite = isinstance(value, (int, float)) and math.isfinite(float(value))
        if self.rule == "best-val":
            if not finite or (self.value is not None and float(value) <= self.value):
                return False
        self.round, self.value, self.payload = rnd, (float(value) if finite else None), payload
        return True

    def restore(self, state: Optional[dict], payload: Any) -> None:
        """Continue from a checkpoint's :meth:`state` (``payload`` = that round's weights etc.)."""
        if state and state.get("round"):
            self.round, self.value, self.payload = int(state["round"]), state.get("value"), payload

    def state(self) -> dict:
        """What a checkpoint records so that a resumed run keeps the same selection."""
        return {"rule": self.rule, "round": self.round, "value": self.value}


def offer_model(selection: RoundSelection, rnd: int, value: Any, model) -> None:
    """In-process training: after round ``rnd``, keep a copy of ``model``'s trainable weights when the round is
    selected (``best-val`` only: ``last`` is the model as it ends)."""
    from .weights import get_trainable

    if selection.rule == "best-val" and selection.offer(rnd, value, None):
        selection.payload = get_trainable(model)  # a copy


def load_selected(selection: RoundSelection, model, rounds: int) -> int:
    """Put the selected weights into ``model``; returns the round whose model it now holds."""
    from .weights import set_trainable

    if selection.rule != "best-val" or selection.payload is None:
        return rounds
    set_trainable(model, selection.payload)
    return selection.round
