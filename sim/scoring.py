"""Fast numpy metrics for the oracle (same definitions as :mod:`omnifuse_core.metrics`, without sklearn overhead).

The oracle scores ~100 (source, scope, task) combinations; sklearn's input validation made that take seconds.
Definitions: AUROC = Mann-Whitney probability with ties counted 1/2 (== ``roc_auc_score``); AUPRC = average
precision (== ``average_precision_score``); C-index = Harrell's (pairs where i had the event before j's time,
ties in risk 1/2); multi-class AUROC = macro one-vs-rest; multi-label AUROC = mean over labels with both classes.
Undefined values (a single class) are NaN.
"""
from __future__ import annotations

import numpy as np

NAN = float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of scores ``s`` for binary labels ``y``."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    r = _ranks(np.asarray(s, dtype=float))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve)."""
    y = np.asarray(y).astype(float)
    if y.sum() == 0:
        return NAN
    order = np.argsort(-np.asarray(s, dtype=float), kind="mergesort")
    ss, ys = np.asarray(s, dtype=float)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last index of each distinct threshold
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


_DENSE_MAX = 1500  # above this many samples (and without NaN) the blocked O(n sqrt n) counter is used
_BLOCK = 256


def _c_index_counts(time: np.ndarray, ev: np.ndarray, risk: np.ndarray) -> tuple[int, int, int]:
    """(comparable pairs, concordant pairs, risk-tied pairs) of Harrell's C without an n x n matrix.

    Patients sorted by time; for event i the comparable j are the suffix after ``searchsorted(t, t_i, 'right')``.
    That suffix = a partial block (compared directly, < ``_BLOCK`` entries) + whole blocks to the end, whose sorted
    risks are precomputed once per block start, so counts come from ``searchsorted``. Exact integer counts.
    """
    order = np.argsort(time, kind="mergesort")
    t, r, e = time[order], risk[order], ev[order]
    n = len(t)
    idx = np.flatnonzero(e)
    start = np.searchsorted(t, t[idx], side="right")  # first comparable position of each event
    den = int((n - start).sum())
    boundary = np.minimum(-(-start // _BLOCK) * _BLOCK, n)  # first block start at or after `start`
    # partial block [start, boundary)
    offs = np.arange(_BLOCK)
    pos = start[:, None] + offs[None, :]
    inside = pos < boundary[:, None]
    rj = r[np.minimum(pos, n - 1)]
    ri = r[idx][:, None]
    conc = int(((rj < ri) & inside).sum())
    ties = int(((rj == ri) & inside).sum())
    # whole blocks [boundary, n)
    for b in np.unique(boundary):
        if b >= n:
            continue
        tail = np.sort(r[b:])
        sel = boundary == b
        lo = np.searchsorted(tail, r[idx[sel]], side="left")
        hi = np.searchsorted(tail, r[idx[sel]], side="right")
        conc += int(lo.sum())
        ties += int((hi - lo).sum())
    return den, conc, ties


def c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (higher risk should mean earlier event)."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    ev = event > 0
    if len(time) > _DENSE_MAX and not (np.isnan(time).any() or np.isnan(risk).any()):
        den, conc, ties = _c_index_counts(time, ev, risk)
        return NAN if den == 0 else float((np.int64(conc) + 0.5 * np.int64(ties)) / den)
    comparable = ev[:, None] & (time[None, :] > time[:, None])  # [i, j]: i had the event before j's time
    den = comparable.sum()
    if den == 0:
        return NAN
    num = ((risk[:, None] > risk[None, :]) & comparable).sum() + 0.5 * ((risk[:, None] == risk[None, :])
                                                                         & comparable).sum()
    return float(num / den)


def task_metrics(task: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Headline metrics of one task (``n`` plus the keys :mod:`sim.oracle` reports)."""
    out: dict[str, float] = {"n": int(len(labels))}
    if task == "binary":
        out.update(auroc=auroc(labels, scores), auprc=auprc(labels, scores), prevalence=float(np.mean(labels)))
    elif task == "multiclass":
        per = [auroc(labels == k, scores[:, k]) for k in range(scores.shape[1])]
        valid = [a for a in per if not np.isnan(a)]
        out.update(auroc=float(np.mean(valid)) if len(valid) == len(per) else NAN,
                   accuracy=float(np.mean(scores.argmax(axis=1) == labels)))
    elif task == "multilabel":
        per = [auroc(labels[:, k], scores[:, k]) for k in range(labels.shape[1])]
        valid = [a for a in per if not np.isnan(a)]
        out.update(auroc=float(np.mean(valid)) if valid else NAN)
    elif task == "survival":
        out.update(c_index=c_index(labels[:, 0], labels[:, 1], scores), event_rate=float(np.mean(labels[:, 1])))
    else:
        raise ValueError(f"unknown task {task!r}")
    return out
