"""Pooled test metrics across sites without sending per-patient predictions: binned score counts.

Each site sends, for its test split, how many positive and how many negative patients fall in each of ``bins``
equal-width score bins on [0, 1] (binary task). The server adds the sites' counts and computes the ROC curve and
AUROC of the pooled test set from them, with a bootstrap interval. No patient's score leaves a site, only counts
per bin (at the same level of disclosure as the metrics themselves; not covered by DP).

**Binning error.** Within a bin the order of a positive and a negative is unknown and counts as a tie (½), so the
binned AUROC differs from the exact one by at most half the share of positive-negative pairs that share a bin:
``|AUROC_binned − AUROC_exact| ≤ ½ · Σ_b pos_b · neg_b / (P · N)`` (:func:`binning_error_bound`, reported with the
metric; with 1,000 bins it is typically below 0.001).

**Interval.** A stratified bootstrap of the pooled test set drawn from the counts: P positives from the positive
histogram and N negatives from the negative histogram (multinomial), AUROC of each replicate, percentile interval.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_BINS = 1000


def score_histogram(labels: np.ndarray, scores: np.ndarray, bins: int = DEFAULT_BINS) -> tuple[list[int], list[int]]:
    """``(positives per bin, negatives per bin)`` of binary ``labels`` and scores in [0, 1] (label-free scores)."""
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape[0]}) and scores ({s.shape[0]}) differ in length")
    idx = np.minimum((s * bins).astype(int), bins - 1)
    pos = np.bincount(idx[y], minlength=bins)
    neg = np.bincount(idx[~y], minlength=bins)
    return pos.astype(int).tolist(), neg.astype(int).tolist()


def add_histograms(hists: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """The sites' histograms added (all must have the same number of bins)."""
    sizes = {len(p) for p, n in hists} | {len(n) for p, n in hists}
    if len(sizes) != 1:
        raise ValueError(f"score histograms have different bin counts {sorted(sizes)}; use one score-bins value")
    pos = np.sum([np.asarray(p, dtype=np.int64) for p, _ in hists], axis=0)
    neg = np.sum([np.asarray(n, dtype=np.int64) for _, n in hists], axis=0)
    return pos, neg


def binned_auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC from binned counts (pairs within a bin count ½); NaN without positives or negatives."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float((pos * below).sum() + 0.5 * (pos * neg).sum()) / (n_pos * n_neg)


def binning_error_bound(pos: np.ndarray, neg: np.ndarray) -> float:
    """Upper bound on ``|binned AUROC − exact AUROC|``: half the share of positive-negative pairs in one bin."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    total = pos.sum() * neg.sum()
    return float(0.5 * (pos * neg).sum() / total) if total else float("nan")


def bootstrap_auroc_ci(pos: np.ndarray, neg: np.ndarray, *, reps: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the binned AUROC under a stratified bootstrap drawn from the counts."""
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    p_draw = rng.multinomial(n_pos, pos / n_pos, size=reps)
    n_draw = rng.multinomial(n_neg, neg / n_neg, size=reps)
    values = np.array([binned_auroc(p, n) for p, n in zip(p_draw, n_draw)])
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def pooled_metrics(hists: Sequence[tuple[Sequence[int], Sequence[int]]], *, reps: int = 1000,
                   seed: int = 0) -> dict[str, float]:
    """``auroc``, its 95 % bootstrap interval, the binning error bound, ``n`` and ``prevalence`` of the pooled test
    set from the sites' histograms."""
    pos, neg = add_histograms(hists)
    lo, hi = bootstrap_auroc_ci(pos, neg, reps=reps, seed=seed)
    n = int(pos.sum() + neg.sum())
    return {"auroc": binned_auroc(pos, neg), "auroc_ci_low": lo, "auroc_ci_high": hi,
            "auroc_binning_error_max": binning_error_bound(pos, neg), "n": n,
            "prevalence": float(pos.sum() / n) if n else float("nan")}


def pooled_entry(hists: Sequence[tuple[Sequence[int], Sequence[int]]], bins: int, seed: int = 0) -> dict:
    """``{"pooled_binned": {...}}`` for a run's ``final`` entry (empty without histograms, e.g. non-binary tasks)."""
    if not hists:
        return {}
    return {"pooled_binned": {**pooled_metrics(hists, seed=seed), "bins": int(bins)}}
