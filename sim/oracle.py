"""Oracle metrics of a synthetic federation (``oracle.json``): how well one *could* do.

Sources of scores (each a label-free risk per patient, scored with :mod:`sim.scoring`):

* ``true`` -- the true risks the labels were drawn from (``P(y | z)``; survival risk ``w . z``). The Bayes limit.
* ``all`` -- the true conditional risk given the latent signals of *all* modalities (as if every patient had
  every modality): ``E[P(y | z) | u_ehr, u_image, u_text, u_genomics]``.
* ``observed`` -- the same given only the modalities each patient actually has (the real missingness).
* ``ehr`` / ``image`` / ``text`` / ``genomics`` -- given that one modality's signal ``u_m`` (as if everyone had it).

How: the prior is ``z ~ N(site mean, I)`` and modality ``m`` observes factors ``F_m`` as ``u_m = z[F_m] + eps``
with known noise sd, so the posterior of ``z`` is Gaussian and factor-wise independent (precision
``1 + sum 1/sd^2`` over the observations of that factor). A logistic risk ``sigmoid(b + w . z)`` is averaged over
that posterior with 32-point Gauss-Hermite quadrature; subtype softmax probabilities with 256 fixed normal draws;
the survival score is the posterior mean of ``w . z``. The site (its prior and intercept) is known to the oracle.
The rendered files (EHR values, PNGs, reports, genes) are drawn from ``u_m`` with extra noise, so a model of one
modality can at best reach that modality's oracle; these are upper bounds, not targets.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sim.cohort import SiteCohort
from sim.latent import PHENO_BIAS, PHENO_WEIGHTS, SUBTYPE_WEIGHTS, sigmoid
from sim.presets import MODALITIES, N_LATENT, Preset
from sim.scoring import task_metrics

SOURCES = ("true", "all", "observed", *MODALITIES)
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(32)
_MC_DRAWS = np.random.default_rng(12345).standard_normal((256, N_LATENT))
_KEEP = {"binary": ("auroc", "auprc", "prevalence"), "multiclass": ("auroc", "accuracy"),
         "multilabel": ("auroc",), "survival": ("c_index", "event_rate")}


def posterior(c: SiteCohort, use: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance of z given the signals of the modalities marked in ``use``.

    Args:
        c: the site.
        use: bool ``[N, M]`` (modality order :data:`MODALITIES`): which signals each patient's oracle sees.

    Returns:
        ``(mean [N, 4], var [N, 4])``.
    """
    precision = np.ones((c.n, N_LATENT))
    weighted = np.tile(c.prior_mean, (c.n, 1)).astype(float)
    for j, m in enumerate(MODALITIES):
        for k, f in enumerate(c.factors[m]):
            inv = 1.0 / c.noise_sd[m][k] ** 2
            precision[:, f] += use[:, j] * inv
            weighted[:, f] += use[:, j] * inv * c.signals[m][:, k]
    return weighted / precision, 1.0 / precision


def _expected_sigmoid(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """E[sigmoid(x)] for x ~ N(mean, var) (Gauss-Hermite)."""
    x = mean[..., None] + np.sqrt(2.0 * var)[..., None] * _GH_X
    return (sigmoid(x) * _GH_W).sum(axis=-1) / math.sqrt(math.pi)


def risks(c: SiteCohort, weights: np.ndarray, use: np.ndarray | None) -> dict[str, np.ndarray]:
    """Scores per task: from the true z (``use=None``) or from the posterior given the signals in ``use``."""
    lab = c.labels
    if use is None:
        return {"binary": lab.true_mortality, "multilabel": lab.true_pheno, "multiclass": lab.true_subtype,
                "survival": lab.true_survival_risk}
    mean, var = posterior(c, use)
    mort = _expected_sigmoid(lab.mortality_intercept + mean @ weights, var @ weights ** 2)
    pheno = _expected_sigmoid(mean @ PHENO_WEIGHTS.T + PHENO_BIAS, var @ (PHENO_WEIGHTS ** 2).T)
    draws = mean[:, None, :] + np.sqrt(var)[:, None, :] * _MC_DRAWS[None]  # [N, S, 4]
    logits = draws @ SUBTYPE_WEIGHTS.T
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    sub = (p / p.sum(axis=-1, keepdims=True)).mean(axis=1)
    return {"binary": mort, "multilabel": pheno, "multiclass": sub, "survival": mean @ weights}


def _labels(c: SiteCohort) -> dict[str, np.ndarray]:
    lab = c.labels
    return {"binary": lab.mortality, "multilabel": lab.pheno, "multiclass": lab.subtype,
            "survival": np.stack([lab.time, lab.event], axis=1)}


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _score(labels: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> dict[str, dict]:
    out = {}
    for task, keep in _KEEP.items():
        met = task_metrics(task, labels[task], scores[task])  # undefined (one class) -> null
        out[task] = {"n": int(met["n"]), **{k: _clean(met.get(k, float("nan"))) for k in keep}}
    return out


def _site_scores(c: SiteCohort, weights: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    present = np.stack([c.present[m] for m in MODALITIES], axis=1)
    uses: dict[str, np.ndarray | None] = {"true": None, "all": np.ones_like(present), "observed": present}
    for j, m in enumerate(MODALITIES):
        only = np.zeros_like(present)
        only[:, j] = True
        uses[m] = only
    return {src: risks(c, weights, use) for src, use in uses.items()}


def _scope(cohorts: Sequence[SiteCohort], scores: list[dict], split: str | None) -> dict:
    sel = [np.ones(c.n, bool) if split is None else c.split == split for c in cohorts]
    labels = {t: np.concatenate([_labels(c)[t][s] for c, s in zip(cohorts, sel)]) for t in _KEEP}
    out = {"n": int(sum(s.sum() for s in sel)),
           "present_fraction": {m: round(float(np.concatenate([c.present[m][s] for c, s in zip(cohorts, sel)])
                                               .mean()), 4) for m in MODALITIES}}
    for src in SOURCES:
        joined = {t: np.concatenate([sc[src][t][s] for sc, s in zip(scores, sel)]) for t in _KEEP}
        out[src] = _score(labels, joined)
    return out


def compute_oracle(preset: Preset, cohorts: Sequence[SiteCohort], seed: int) -> dict:
    """The content of ``oracle.json``: metrics per source, for the federation and each site, on all and test.

    Args:
        preset: the preset the cohorts were simulated with.
        cohorts: every site, in partition order.
        seed: the federation seed (recorded).
    """
    weights = np.asarray(preset.mortality_weights, dtype=float)
    scores = [_site_scores(c, weights) for c in cohorts]
    result = {"preset": preset.name, "seed": int(seed), "method": __doc__.strip(), "sources": list(SOURCES),
              "sites": [c.name for c in cohorts], "global": {}, "per_site": {}}
    for split_name, split in (("all", None), ("test", "test")):
        result["global"][split_name] = _scope(cohorts, scores, split)
    for c, sc in zip(cohorts, scores):
        result["per_site"][c.name] = {s_name: _scope([c], [sc], s) for s_name, s in (("all", None), ("test", "test"))}
    return result
