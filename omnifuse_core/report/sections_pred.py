"""Report sections from test-split predictions: embedding map, ROC, calibration, Kaplan–Meier, risk groups."""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import plots
from .collect import RunData, predictions_of
from .sections_run import Section, fmt, table
from .stratify import stratify

NO_DATA = ("needs test-split predictions: give the site folders (omnifuse report RUN --site DIR); "
           "runs do not record per-patient predictions")


def _roc_curve(y: np.ndarray, p: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray, float]]:
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, p)
    return fpr, tpr, float(roc_auc_score(y, p))


def embedding(d: RunData) -> Section:
    sec = Section("embedding", "Real vs imputed embeddings (2-D map)")
    if d.mode == "federated":
        sec.note = ("federated run: per-patient embeddings never leave a site, so no map is drawn here; the ω and "
                    "imputation sections show site aggregates")
    elif d.embedding_map is None:
        sec.note = ("no map: not an imputing fusion, too few hidden slots, or no site folders given"
                    if d.sites_given else "no map: " + NO_DATA)
    else:
        e = d.embedding_map
        sec.images.append(("PCA map of real and imputed embeddings",
                           plots.scatter_map(e["real"], e["imputed"], e["modality"], [str(n) for n in e["names"]])))
        sec.note = d.notes.get("embedding")
    return sec


def roc(d: RunData) -> Section:
    sec = Section("roc", "ROC curves (test split)")
    pooled = predictions_of(d)
    if pooled is None:
        sec.note = NO_DATA
        return sec
    if d.task == "survival":
        sec.note = "survival task: see the Kaplan–Meier section and the C-index instead of ROC"
        return sec
    if d.task == "binary":
        curves = {"pooled": _roc_curve(pooled.labels, pooled.score)}
        curves.update({s: _roc_curve(p.labels, p.score) for s, p in d.predictions.items()})
        title = "ROC, pooled and per site"
    else:
        y = pooled.labels if d.task == "multilabel" else np.eye(pooled.score.shape[1])[pooled.labels.astype(int)]
        names = _label_names(d, pooled.score.shape[1])
        curves = {names[k]: _roc_curve(y[:, k], pooled.score[:, k]) for k in range(pooled.score.shape[1])}
        title = "ROC per label (pooled)" if d.task == "multilabel" else "ROC per class, one-vs-rest (pooled)"
    skipped = [n for n, c in curves.items() if c is None]
    curves = {n: c for n, c in curves.items() if c is not None}
    if curves:
        sec.images.append((title, plots.roc(curves, title=title)))
    if skipped:
        sec.note = f"no ROC for {', '.join(skipped)}: only one class present in its test split"
    return sec


def _label_names(d: RunData, k: int) -> list[str]:
    if d.task == "multilabel" and d.metrics.get("labels") and len(d.metrics["labels"]) == k:
        return [str(x) for x in d.metrics["labels"]]
    return [f"label {i}" if d.task == "multilabel" else f"class {i}" for i in range(k)]


def calibration(d: RunData) -> Section:
    sec = Section("calibration", "Calibration (test split)")
    pooled = predictions_of(d)
    if pooled is None:
        sec.note = NO_DATA
    elif d.task != "binary":
        sec.note = f"{d.task} task: the calibration curve is drawn for binary tasks only"
    else:
        sec.images.append(("calibration curve, pooled test split", plots.calibration(
            pooled.labels.astype(float), pooled.score.astype(float), title="reliability (pooled test)")))
    return sec


def survival(d: RunData, strat: Optional[dict]) -> Section:
    sec = Section("survival", "Kaplan–Meier curves of predicted risk groups")
    if d.task != "survival":
        sec.note = f"{d.task} task: Kaplan–Meier curves apply to survival runs only"
        return sec
    if strat is None or not strat.get("km"):
        sec.note = NO_DATA
        return sec
    curves = {f"group {g} ({_group_name(g, len(strat['km']))})": c for g, c in strat["km"].items()}
    sec.images.append(("Kaplan-Meier curves per risk group", plots.km_curves(curves, title="KM by predicted risk")))
    lr = strat["logrank"]
    sec.html = (f"<p>Log-rank test across groups: χ² = {fmt(lr['statistic'])}, dof = {lr['dof']}, "
                f"p = {fmt(lr['p_value'], '.3g')}.</p>")
    return sec


def _group_name(g: int, n: int) -> str:
    if n == 3:
        return ("low", "medium", "high")[g]
    return "lowest" if g == 0 else ("highest" if g == n - 1 else "middle")


def stratification(d: RunData, strat: Optional[dict]) -> Section:
    sec = Section("stratification", "Patient stratification by predicted risk (test split)")
    if strat is None:
        sec.note = (NO_DATA if predictions_of(d) is None else
                    f"{d.task} task: no single risk score to stratify by")
        return sec
    n = len(strat["summary"])
    outcome = "event" if d.task == "survival" else ("any label" if d.task == "multilabel" else "positive")
    rows = [[f"{s['group']} ({_group_name(s['group'], n)})", s["n"], s["events"], s["event_rate"],
             s["risk_min"], s["risk_max"]] for s in strat["summary"]]
    sec.html = (f"<p>Groups: quantiles of predicted risk, cut points {', '.join(fmt(c) for c in strat['cuts'])}."
                f"</p>" + table(["group", "patients", f"{outcome}s", f"{outcome} rate", "risk min", "risk max"], rows))
    if strat.get("clusters"):
        crow = [[c["group"], c["n"], c["events"], c["event_rate"]] for c in strat["clusters"]["summary"]]
        sec.html += ("<h3>k-means clusters of fused patient embeddings</h3>" +
                     table(["cluster", "patients", f"{outcome}s", f"{outcome} rate"], crow))
    return sec


def compute_strata(d: RunData, *, n_groups: int = 3, clusters: int = 3) -> Optional[dict]:
    """Stratify the pooled test predictions (None when there are none or the task has no scalar risk)."""
    pooled = predictions_of(d)
    if pooled is None:
        return None
    k = clusters if pooled.embedding is not None and len(pooled.patient_ids) >= 2 * clusters else 0
    return stratify(d.task, pooled.score, pooled.labels, n_groups=n_groups, embedding=pooled.embedding, clusters=k,
                    seed=d.cfg.seed if d.cfg else 0)
