"""Which round's model a run keeps for its final test and for ``predict`` (config key ``final-model``).

``last`` (the default, Flower's and most trainers' behaviour) keeps the newest model. ``best-val`` keeps the model
of the round with the highest validation headline metric (AUROC; C-index for survival), the "monitor a validation
metric and reload the best model before testing" convention of PyHealth's Trainer and Keras' ModelCheckpoint: on a
small cohort a long schedule overfits (BENCHMARKS.md, B2 at 10 epochs), and the validation split, never the test
split, decides. Ties keep the earlier round; a NaN metric never wins.

Early stopping (config key ``early-stopping`` = patience, 0 = off): training stops after ``patience`` rounds without
a better validation headline metric (Keras' ``EarlyStopping(patience=...)``, PyHealth's ``patience``); with
``best-val`` the best round's model is then tested. Under DP a stopped run spends less ε than planned (the ledger
records what was spent).
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

    def __init__(self, rule: str, patience: int = 0) -> None:
        if rule not in RULES:
            raise ValueError(f"config key 'final-model' = {rule!r}; expected one of {RULES}")
        self.rule = rule
        self.patience = int(patience)
        self.round: int = 0
        self.value: Optional[float] = None
        self.payload: Any = None
        self.best_round: int = 0  # for early stopping, whatever the rule
        self.best_value: Optional[float] = None

    def offer(self, rnd: int, value: Any, payload: Any) -> bool:
        """Consider round ``rnd`` with validation ``value``; returns True when it becomes the selected round."""
        finite = isinstance(value, (int, float)) and math.isfinite(float(value))
        if finite and (self.best_value is None or float(value) > self.best_value):
            self.best_round, self.best_value = rnd, float(value)
        if self.rule == "best-val":
            if not finite or (self.value is not None and float(value) <= self.value):
                return False
        self.round, self.value, self.payload = rnd, (float(value) if finite else None), payload
        return True

    def should_stop(self, rnd: int) -> bool:
        """Early stopping: ``patience`` rounds have passed since the best validation value (never before one)."""
        return self.patience > 0 and self.best_round > 0 and rnd - self.best_round >= self.patience

    def restore(self, state: Optional[dict], payload: Any) -> None:
        """Continue from a checkpoint's :meth:`state` (``payload`` = that round's weights etc.)."""
        if state and state.get("round"):
            self.round, self.value, self.payload = int(state["round"]), state.get("value"), payload
        if state and state.get("best_round"):
            self.best_round, self.best_value = int(state["best_round"]), state.get("best_value")

    def state(self) -> dict:
        """What a checkpoint records so that a resumed run keeps the same selection."""
        return {"rule": self.rule, "round": self.round, "value": self.value, "best_round": self.best_round,
                "best_value": self.best_value}


def offer_model(selection: RoundSelection, rnd: int, value: Any, model) -> bool:
    """In-process training: after round ``rnd``, keep a copy of ``model``'s trainable weights when the round is
    selected (``best-val`` only: ``last`` is the model as it ends); returns True when training should stop
    (early stopping)."""
    from .weights import get_trainable

    if selection.offer(rnd, value, None) and selection.rule == "best-val":
        selection.payload = get_trainable(model)  # a copy
    return selection.should_stop(rnd)


def load_selected(selection: RoundSelection, model, rounds: int) -> int:
    """Put the selected weights into ``model``; returns the round whose model it now holds."""
    from .weights import set_trainable

    if selection.rule != "best-val" or selection.payload is None:
        return selection.round if selection.rule == "last" and selection.round else rounds
    set_trainable(model, selection.payload)
    return selection.round
