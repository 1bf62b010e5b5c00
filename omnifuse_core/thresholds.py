"""The binary decision threshold, chosen on validation (config ``threshold-rule``; issue 17).

A 0.5 cut on a 16 %-prevalence outcome predicts "negative" for nearly everyone (F1 = 0, accuracy = 1 − prevalence),
which a clinician reads as a broken model. Like scikit-learn's ``TunedThresholdClassifierCV`` the threshold is tuned
on held-out data — the validation split, never the test split — and recorded with the run:

* ``youden`` (default): maximise Youden's J = sensitivity + specificity − 1;
* ``max-f1``: maximise F1;
* ``fixed``: the config's ``threshold`` (0.5 by default).

It is computed from the validation score histograms (omnifuse_core.pooled), so a federation chooses it from the
sites' binned counts without any patient's score leaving a site; candidates are the bin edges (``score-bins``).
Ties keep the lowest threshold.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

RULES = ("youden", "max-f1", "fixed")


def choose_threshold(pos: Sequence[int], neg: Sequence[int], rule: str, fixed: float = 0.5) -> float:
    """The threshold (a bin edge in [0, 1]) that ``rule`` prefers on validation counts ``pos``/``neg`` per score
    bin; ``fixed`` for rule ``fixed`` or when the split has no positives or no negatives."""
    if rule not in RULES:
        raise ValueError(f"config key 'threshold-rule' = {rule!r}; expected one of {RULES}")
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if rule == "fixed" or n_pos == 0 or n_neg == 0:
        return float(fixed)
    bins = pos.size
    # predicting positive for bins k.. (score >= k / bins), k = 0 .. bins
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])
    fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
    if rule == "youden":
        value = tp / n_pos - fp / n_neg
    else:
        denom = tp + fp + n_pos  # 2TP + FP + FN = TP + FP + P
        value = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return float(int(np.argmax(value)) / bins)


def threshold_entry(cfg, value, source: str):
    """What ``metrics.json`` → ``final.threshold`` records (None for non-binary tasks)."""
    if cfg.task != "binary":
        return None
    if value is None:
        return {"value": float(cfg.threshold), "rule": "fixed", "from": "config (validation had no histogram)"}
    return {"value": float(value), "rule": cfg.threshold_rule,
            "from": "config" if cfg.threshold_rule == "fixed" else source}
