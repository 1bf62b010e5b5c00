"""Paired two-level bootstrap of an AUROC difference between two arms (e.g. OmniFuse and concat) over runs.

A benchmark compares arms over runs (data seed d = one generated federation, model seed m = initialisation and
shuffling); every run of an arm scores the same test patients as the other arm's run of the same (d, m). The
statistic is the mean over runs of ``AUROC_A(run) − AUROC_B(run)``, where a run's AUROC is the sample-weighted mean
over sites (groups) of the per-site AUROC, the headline metric of every table (sites whose AUROC is undefined on a
draw, i.e. one class only, are left out of that mean, as ``server.run_dir.weighted_global`` does).

One bootstrap replicate:

1. draws D data seeds with replacement out of the D;
2. for each drawn data seed, draws that seed's test patients with replacement, within each site (site sizes and so
   the site weights stay fixed); the resampled patients are shared by *both arms* (the difference is paired) and
   by every model seed of that draw (the test set belongs to the data seed, not to the model seed);
3. for each drawn data seed, draws its M model seeds with replacement;
4. recomputes both arms' AUROC on the resampled patients for every drawn run and averages the differences.

The 95 % interval is the 2.5 and 97.5 percentiles of the replicate means (``reps`` replicates, default 2,000,
seeded: the same inputs and seed give the same interval). The point estimate is the plain mean of the per-run
differences. AUROC is computed from ranks (Mann–Whitney U with tied scores counted as ½), which equals
``sklearn.metrics.roc_auc_score`` (tested) but is vectorised over the replicates.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata

Groups = Mapping[str, np.ndarray]  # site -> per-patient array (scores or labels), in a fixed patient order


def auroc_rows(labels: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of every row of resampled patient indices.

    Args:
        labels: 0/1 labels of the n patients.
        scores: the model's scores of the same patients (higher = more likely positive).
        idx: ``[R, k]`` patient indices (one resample per row).

    Returns:
        ``[R]`` AUROCs; NaN where a row holds one class only.
    """
    y = np.asarray(labels, dtype=np.float64)[idx]
    ranks = rankdata(np.asarray(scores, dtype=np.float64)[idx], axis=1)  # ties get the average rank
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def weighted_auroc(labels: Groups, scores: Groups, idx: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[R]`` sample-weighted mean over sites of the per-site AUROC of each resample (NaN sites left out)."""
    num = den = 0.0
    for site, site_idx in idx.items():
        auc = auroc_rows(labels[site], scores[site], site_idx)
        ok = np.isfinite(auc)
        w = float(len(labels[site]))
        num = num + np.where(ok, auc, 0.0) * w
        den = den + ok * w
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _identity(labels: Groups) -> dict[str, np.ndarray]:
    return {s: np.arange(len(y))[None, :] for s, y in labels.items()}


def paired_bootstrap(arm_a: Sequence[Sequence[Groups]], arm_b: Sequence[Sequence[Groups]],
                     labels: Sequence[Groups], *, reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Two-level paired bootstrap of mean AUROC(A) − AUROC(B) (see the module docstring).

    Args:
        arm_a: ``arm_a[d][m][site]`` = arm A's test scores of data seed d, model seed m, site (patient order fixed
            per data seed and site).
        arm_b: the same for arm B (same shape: the runs are paired).
        labels: ``labels[d][site]`` = 0/1 test labels of data seed d.
        reps: bootstrap replicates.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``{"diff": point estimate, "lo", "hi", "level", "reps", "seed", "data_seeds", "runs", "finite_reps"}``;
        ``lo``/``hi`` are NaN when no replicate gives a finite difference.
    """
    if len(arm_a) != len(arm_b) or len(arm_a) != len(labels) or not labels:
        raise ValueError("paired_bootstrap: arm_a, arm_b and labels need one entry per data seed (and at least one)")
    for d, (ra, rb) in enumerate(zip(arm_a, arm_b)):
        if len(ra) != len(rb) or not ra:
            raise ValueError(f"paired_bootstrap: data seed #{d} has {len(ra)} run(s) in arm A and {len(rb)} in arm B")
        for run in (*ra, *rb):
            for site, y in labels[d].items():
                if site not in run or np.shape(run[site]) != np.shape(y):
                    raise ValueError(f"paired_bootstrap: data seed #{d}, site {site!r}: scores do not match the labels")
    n_data = len(labels)
    per_run = [[float(weighted_auroc(labels[d], a, _identity(labels[d]))[0]
                      - weighted_auroc(labels[d], b, _identity(labels[d]))[0]) for a, b in zip(arm_a[d], arm_b[d])]
               for d in range(n_data)]
    flat = [x for runs in per_run for x in runs if math.isfinite(x)]
    point = float(np.mean(flat)) if flat else float("nan")

    rng = np.random.default_rng(seed)
    pick_data = rng.integers(0, n_data, size=(reps, n_data))
    sums, counts = np.zeros(reps), np.zeros(reps)
    for slot in range(n_data):
        for d in range(n_data):
            rows = np.flatnonzero(pick_data[:, slot] == d)
            if rows.size == 0:
                continue
            idx = {s: rng.integers(0, len(y), size=(rows.size, len(y))) for s, y in labels[d].items()}
            diffs = np.stack([weighted_auroc(labels[d], a, idx) - weighted_auroc(labels[d], b, idx)
                              for a, b in zip(arm_a[d], arm_b[d])], axis=1)  # [rows, M]
            pick_model = rng.integers(0, diffs.shape[1], size=diffs.shape)
            chosen = np.take_along_axis(diffs, pick_model, axis=1)
            ok = np.isfinite(chosen)
            sums[rows] += np.where(ok, chosen, 0.0).sum(axis=1)
            counts[rows] += ok.sum(axis=1)
    finite = counts > 0
    means = sums[finite] / counts[finite]
    alpha = (1.0 - level) / 2.0
    lo, hi = (np.quantile(means, [alpha, 1.0 - alpha]) if means.size else (float("nan"), float("nan")))
    return {"diff": point, "lo": float(lo), "hi": float(hi), "level": level, "reps": reps, "seed": seed,
            "data_seeds": n_data, "runs": sum(len(r) for r in arm_a), "finite_reps": int(finite.sum())}
