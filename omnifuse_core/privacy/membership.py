"""Loss-threshold membership inference: an empirical LOWER-BOUND check, never a privacy guarantee.

The attacker guesses "member" when a patient's loss is low. AUC 0.5 means this particular attack does no better
than chance; it does not prove privacy (a stronger attack may do better). A clearly higher AUC shows leakage.
Only the formal (epsilon, delta) bound is a guarantee; with it, any attack's true-positive rate at false-positive
rate ``f`` is at most ``exp(epsilon) * f + delta``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)

NOTE = ("loss-threshold membership-inference AUC: a lower-bound check of leakage by one simple attack, "
        "not a guarantee; 0.5 = this attack cannot tell members from non-members")


def _as_array(x, name: str) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    a = a.reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty; pass per-sample losses of at least one patient")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite losses; fix the evaluation first")
    return a


def loss_threshold_auc(member_losses, nonmember_losses) -> dict:
    """AUC of the attack that scores each patient by ``-loss`` (members tend to have lower loss).

    Args:
        member_losses: per-sample losses of training patients (members).
        nonmember_losses: per-sample losses of held-out patients of the same site (non-members).

    Returns:
        ``{"auc", "advantage", "n_members", "n_nonmembers", "tpr_at_1pct_fpr", "note"}`` where
        ``advantage = 2 * auc - 1`` (0 = chance).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    mem = _as_array(member_losses, "member_losses")
    non = _as_array(nonmember_losses, "nonmember_losses")
    y = np.concatenate([np.ones(mem.size), np.zeros(non.size)])
    score = -np.concatenate([mem, non])
    auc = float(roc_auc_score(y, score))
    fpr, tpr, _ = roc_curve(y, score)
    tpr_at = float(np.max(tpr[fpr <= 0.01])) if np.any(fpr <= 0.01) else 0.0
    log.info("membership inference (loss threshold): AUC %.3f on %d members / %d non-members", auc, mem.size,
             non.size)
    return {"auc": auc, "advantage": 2 * auc - 1, "n_members": int(mem.size), "n_nonmembers": int(non.size),
            "tpr_at_1pct_fpr": tpr_at, "note": NOTE}


def max_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """Upper bound on any membership attack's TPR at a given FPR under (epsilon, delta)-DP."""
    return min(1.0, math.exp(epsilon) * fpr + delta)
