"""Evaluation metrics (scikit-learn where it has them). Inputs are label-free scores from ``Task.score``."""
from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, f1_score, roc_auc_score)

log = logging.getLogger(__name__)
NAN = float("nan")


def headline_metric(task: str) -> str:
    """The metric a run is judged by: C-index for survival, (macro) AUROC otherwise."""
    return "c_index" if task == "survival" else "auroc"


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins over predicted probability of the positive class."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(y[sel].mean() - p[sel].mean())
    return float(ece)


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C-index: fraction of comparable pairs (i had the event before j's time) ordered by risk; ties 0.5."""
    time, event, risk = (np.asarray(a, dtype=float) for a in (time, event, risk))
    order = np.argsort(time, kind="stable")
    time, event, risk = time[order], event[order], risk[order]
    num = den = 0.0
    for i in np.flatnonzero(event > 0):
        later = time > time[i]
        if not later.any():
            continue
        den += later.sum()
        num += (risk[i] > risk[later]).sum() + 0.5 * (risk[i] == risk[later]).sum()
    return float(num / den) if den > 0 else NAN


def _safe(fn, *args, **kw) -> float:
    try:
        return float(fn(*args, **kw))
    except ValueError as exc:  # e.g. only one class present in y_true
        log.debug("metric %s undefined: %s", getattr(fn, "__name__", fn), exc)
        return NAN


def threshold_metrics(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Binary metrics of the decision ``score >= threshold``: F1, accuracy, sensitivity, specificity, PPV, NPV
    (NaN where a denominator is 0) and the threshold itself."""
    from sklearn.metrics import confusion_matrix

    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel().astype(float)

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else NAN

    return {"threshold": float(threshold), "f1": ratio(2 * tp, 2 * tp + fp + fn) if tp + fp + fn else NAN,
            "accuracy": ratio(tp + tn, tp + tn + fp + fn), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def compute_metrics(task: str, labels: np.ndarray, scores: np.ndarray, *,
                    threshold: float = 0.5) -> dict[str, float]:
    """Metrics for one split. ``scores`` never depend on labels (they come from the model alone). Binary decisions
    (F1, accuracy, sensitivity, ...) use ``threshold``, chosen on validation (omnifuse_core.thresholds)."""
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    out: dict[str, float] = {"n": int(labels.shape[0])}
    if labels.shape[0] == 0:
        return out
    if task == "binary":
        y = labels.astype(int)
        out.update(auroc=_safe(roc_auc_score, y, scores), auprc=_safe(average_precision_score, y, scores),
                   **threshold_metrics(y, scores, threshold),
                   brier=_safe(brier_score_loss, y, scores), ece=expected_calibration_error(y, scores),
                   prevalence=float(y.mean()))
    elif task == "multiclass":
        y = labels.astype(int)
        pred = scores.argmax(axis=1)
        out.update(auroc=_safe(roc_auc_score, y, scores, multi_class="ovr", average="macro",
                               labels=list(range(scores.shape[1]))),
                   accuracy=_safe(accuracy_score, y, pred), f1=_safe(f1_score, y, pred, average="macro", zero_division=0))
    elif task == "multilabel":
        y = labels.astype(int)
        per_label = [_safe(roc_auc_score, y[:, k], scores[:, k]) for k in range(y.shape[1])]
        valid = [a for a in per_label if not math.isnan(a)]
        out.update(auroc=float(np.mean(valid)) if valid else NAN,
                   auprc=_safe(average_precision_score, y, scores, average="macro"),
                   f1=_safe(f1_score, y, scores >= 0.5, average="micro", zero_division=0))
        out.update({f"auroc_label{k}": a for k, a in enumerate(per_label)})
    elif task == "survival":
        out.update(c_index=concordance_index(labels[:, 0], labels[:, 1], scores),
                   event_rate=float(labels[:, 1].mean()))
    else:
        raise ValueError(f"unknown task {task!r}")
    return out


def best_prediction_mode(metrics: dict, head: str) -> str:
    """The prediction mode (joint / heads / both) with the best finite ``<head>_<mode>`` in ``metrics``; "" if none.

    Shared by every runner that picks the mode on validation (``prediction: auto``): centralized and local runs
    (``trainer.choose_prediction_mode``), the federated server loop and the benchmarks' in-process federation.
    """
    scored = {m: metrics.get(f"{head}_{m}") for m in ("joint", "heads", "both")}
    valid = {m: float(v) for m, v in scored.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    return max(valid, key=valid.get) if valid else ""
