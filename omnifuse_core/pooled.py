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


# --- survival: concordance stratified by site ----------------------------------------------------------------
# Cross-site pairs would need each site's (time, event, risk) distribution, close to coarsened patient rows, so the
# pooled C-index is stratified by site (as R's survival::concordance with strata): every site counts, on its test
# split, the concordant pairs (ties ½) and the comparable pairs of Harrell's C; the server adds them. For the
# interval each site also counts them in ``reps`` bootstrap resamples of its own test patients (a site-stratified
# bootstrap): index 0 of each list is the estimate, 1.. the replicates. Only these 2·(reps+1) numbers leave a site.

def concordance_counts(time, event, risk, *, reps: int = 0, seed: int = 0) -> tuple[list[float], list[float]]:
    """``(concordant, comparable)`` pair counts of Harrell's C (the definition of metrics.concordance_index): for the
    patients as given (index 0) and for ``reps`` bootstrap resamples of them (multiplicity weights)."""
    time, event, risk = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (time, event, risk))
    n = time.shape[0]
    rng = np.random.default_rng(seed)
    w = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=reps)]) if n else np.zeros((reps + 1, 0))
    num, den = np.zeros(reps + 1), np.zeros(reps + 1)
    for i in np.flatnonzero(event > 0):
        later = time > time[i]
        if not later.any():
            continue
        score = (risk[i] > risk[later]) + 0.5 * (risk[i] == risk[later])
        wl = w[:, later]
        num += w[:, i] * (wl @ score)
        den += w[:, i] * wl.sum(axis=1)
    return num.tolist(), den.tolist()


def pooled_concordance(counts: Sequence[tuple[Sequence[float], Sequence[float]]], *, level: float = 0.95) -> dict:
    """The sites' counts added: ``c_index`` (stratified by site), its site-stratified bootstrap interval, and the
    number of comparable pairs."""
    sizes = {len(c) for pair in counts for c in pair}
    if len(sizes) != 1:
        raise ValueError(f"concordance counts have different replicate counts {sorted(sizes)}; use one bootstrap-reps")
    num = np.sum([np.asarray(c, dtype=np.float64) for c, _ in counts], axis=0)
    den = np.sum([np.asarray(d, dtype=np.float64) for _, d in counts], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    reps = c[1:][np.isfinite(c[1:])]
    lo, hi = (np.percentile(reps, [50 * (1 - level), 50 * (1 + level)]) if reps.size else (np.nan, np.nan))
    return {"c_index": float(c[0]), "c_index_ci_low": float(lo), "c_index_ci_high": float(hi),
            "comparable_pairs": float(den[0]), "stratified_by": "site", "bootstrap_reps": int(num.size - 1)}


def pooled_survival_entry(counts: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """``{"pooled_stratified": {...}}`` for a run's ``final`` entry (empty without counts)."""
    return {"pooled_stratified": pooled_concordance(counts)} if counts else {}
