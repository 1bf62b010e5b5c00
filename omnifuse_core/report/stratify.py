"""Patient stratification: risk groups with event rates, Kaplan–Meier curves, the log-rank test, k-means clusters.

Kaplan–Meier and the log-rank statistic are implemented with numpy and ``scipy.stats.chi2`` (no lifelines):

* KM: at each distinct event time t_i with d_i events among n_i patients still at risk (censored at t_i counts as at
  risk at t_i), S(t) = Π_{t_i ≤ t} (1 − d_i / n_i).
* Log-rank (G groups): O_g − E_g with E_g = Σ_t n_gt d_t / n_t and the hypergeometric covariance
  V_gh = Σ_t d_t (n_t − d_t) / (n_t − 1) · n_gt / n_t · (δ_gh − n_ht / n_t); the statistic is
  (O − E)ᵀ V⁻¹ (O − E) over the first G − 1 groups, χ² with G − 1 degrees of freedom.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
from scipy.stats import chi2

log = logging.getLogger(__name__)


def risk_groups(risk: np.ndarray, *, n_groups: int = 3,
                cuts: Optional[Sequence[float]] = None) -> tuple[np.ndarray, list[float]]:
    """Assign each patient a risk group 0 (lowest) .. G−1 (highest).

    Args:
        risk: predicted risk per patient ``[N]`` (higher = worse).
        n_groups: number of quantile groups when ``cuts`` is None (3 = tertiles).
        cuts: explicit increasing cut points (G − 1 of them); a risk equal to a cut goes to the upper group.

    Returns:
        ``(groups, cuts)``.
    """
    risk = np.asarray(risk, dtype=float).ravel()
    if cuts is None:
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        cuts = list(np.quantile(risk, np.arange(1, n_groups) / n_groups)) if len(risk) else []
    cuts = [float(c) for c in cuts]
    if any(b < a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"risk-group cuts must be increasing, got {cuts}")
    return np.searchsorted(np.asarray(cuts), risk, side="right").astype(int), cuts


def group_summary(groups: np.ndarray, risk: np.ndarray, events: np.ndarray) -> list[dict]:
    """Per group: patients, events, event rate and the risk range. ``events`` is 0/1 per patient."""
    groups, risk, events = np.asarray(groups), np.asarray(risk, dtype=float), np.asarray(events, dtype=float)
    out = []
    for g in range(int(groups.max()) + 1 if len(groups) else 0):
        sel = groups == g
        n = int(sel.sum())
        out.append({"group": g, "n": n, "events": int(events[sel].sum()) if n else 0,
                    "event_rate": float(events[sel].mean()) if n else float("nan"),
                    "risk_min": float(risk[sel].min()) if n else float("nan"),
                    "risk_max": float(risk[sel].max()) if n else float("nan")})
    return out


def kaplan_meier(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier survival estimate as a step function.

    Args:
        time: follow-up time per patient.
        event: 1 = event observed, 0 = censored.

    Returns:
        ``(t, s)``: t starts at 0 and lists the distinct event times; s[i] is S just after t[i] (s[0] = 1).
    """
    time, event = np.asarray(time, dtype=float), np.asarray(event, dtype=float) > 0
    ts, ss, surv = [0.0], [1.0], 1.0
    for t in np.unique(time[event]):
        at_risk = int((time >= t).sum())
        d = int(((time == t) & event).sum())
        surv *= 1.0 - d / at_risk
        ts.append(float(t))
        ss.append(surv)
    return np.asarray(ts), np.asarray(ss)


def logrank_test(time: np.ndarray, event: np.ndarray, groups: np.ndarray) -> dict:
    """Log-rank test that the survival curves of all groups are equal.

    Returns:
        ``{"statistic", "dof", "p_value", "observed", "expected"}`` (observed/expected events per group, in the
        order of ``np.unique(groups)``). With fewer than two non-empty groups the statistic is NaN.
    """
    time, event, groups = np.asarray(time, dtype=float), np.asarray(event, dtype=float) > 0, np.asarray(groups)
    labels = np.unique(groups)
    k = len(labels)
    observed, expected = np.zeros(k), np.zeros(k)
    var = np.zeros((k, k))
    for t in np.unique(time[event]):
        at_risk = time >= t
        n_t = at_risk.sum()
        d_t = ((time == t) & event).sum()
        n_g = np.array([(at_risk & (groups == g)).sum() for g in labels], dtype=float)
        observed += [((time == t) & event & (groups == g)).sum() for g in labels]
        expected += n_g * d_t / n_t
        if n_t > 1:
            frac = n_g / n_t
            var += d_t * (n_t - d_t) / (n_t - 1) * (np.diag(frac) - np.outer(frac, frac))
    result = {"observed": observed.tolist(), "expected": expected.tolist(), "dof": max(k - 1, 0),
              "statistic": float("nan"), "p_value": float("nan")}
    if k < 2:
        return result
    diff = (observed - expected)[:-1]
    sub = var[:-1, :-1]
    stat = float(diff @ np.linalg.pinv(sub) @ diff)
    result.update(statistic=stat, p_value=float(chi2.sf(stat, k - 1)))
    return result


def cluster_embeddings(embedding: np.ndarray, *, k: int = 3, seed: int = 0) -> np.ndarray:
    """k-means cluster id per patient from fused patient embeddings ``[N, D]`` (standardized first)."""
    from sklearn.cluster import KMeans

    x = np.asarray(embedding, dtype=float)
    if len(x) < k:
        raise ValueError(f"k-means with k={k} needs at least {k} patients, got {len(x)}")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x).astype(int)


def risk_of(task: str, score: np.ndarray) -> Optional[np.ndarray]:
    """A scalar risk per patient: P(y=1) (binary), mean label probability (multi-label), the survival risk; None
    for multi-class (no single ordering of risk)."""
    score = np.asarray(score, dtype=float)
    if task in ("binary", "survival"):
        return score.reshape(len(score), -1)[:, 0] if score.ndim > 1 else score
    if task == "multilabel":
        return score.mean(axis=1)
    return None


def events_of(task: str, labels: np.ndarray) -> np.ndarray:
    """0/1 outcome per patient: the binary label, the survival event, or 'any label' for multi-label."""
    labels = np.asarray(labels, dtype=float)
    if task == "survival":
        return labels[:, 1]
    if task == "multilabel":
        return (labels.max(axis=1) > 0).astype(float)
    return labels.reshape(len(labels), -1)[:, 0]


def stratify(task: str, score: np.ndarray, labels: np.ndarray, *, n_groups: int = 3,
             cuts: Optional[Sequence[float]] = None, embedding: Optional[np.ndarray] = None,
             clusters: int = 0, seed: int = 0) -> Optional[dict]:
    """Risk groups (tertiles by default) with event rates; for survival, KM per group and the log-rank test.

    Args:
        task: task kind.
        score: ``Task.score`` per patient.
        labels: the labels (survival: ``[N, 2]`` time, event).
        n_groups: quantile groups when ``cuts`` is None.
        cuts: explicit risk cut points.
        embedding: fused patient embeddings for optional k-means clusters.
        clusters: number of k-means clusters (0 = none).
        seed: k-means seed.

    Returns:
        ``{"groups", "cuts", "summary", "km", "logrank", "clusters"}`` or None when the task has no scalar risk.
    """
    risk = risk_of(task, score)
    if risk is None or len(risk) == 0:
        return None
    groups, cuts = risk_groups(risk, n_groups=n_groups, cuts=cuts)
    events = events_of(task, labels)
    out: dict = {"groups": groups, "cuts": cuts, "summary": group_summary(groups, risk, events), "km": None,
                 "logrank": None, "clusters": None}
    if task == "survival":
        time = np.asarray(labels, dtype=float)[:, 0]
        out["km"] = {int(g): kaplan_meier(time[groups == g], events[groups == g]) for g in np.unique(groups)}
        out["logrank"] = logrank_test(time, events, groups)
    if clusters and embedding is not None and len(embedding) >= clusters:
        cl = cluster_embeddings(embedding, k=clusters, seed=seed)
        out["clusters"] = {"labels": cl, "summary": group_summary(cl, risk, events)}
    return out
