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

import itertools
import math
from typing import Sequence

import numpy as np

from sim.cohort import SiteCohort
from sim.latent import PHENO_BIAS, PHENO_WEIGHTS, SUBTYPE_WEIGHTS, sigmoid
from sim.presets import MODALITIES, N_LATENT, Interaction, Preset
from sim.scoring import task_metrics

SOURCES = ("true", "all", "observed", *MODALITIES)
#: Sources added when ``Preset.oracle_subsets`` is set: every pair and triple of modalities, e.g. ``image+genomics``.
SUBSET_SOURCES = tuple("+".join(s) for k in (2, 3) for s in itertools.combinations(MODALITIES, k))
# Appended to ``method`` in oracle.json only for presets that use these terms (older presets' files stay identical).
EXTENSIONS_DOC = """\
Extensions (presets with an interaction, per-patient reliability or subset sources):
* interaction ``gamma * z_a * z_b`` in the mortality / survival predictor: the posterior of z stays Gaussian and
  factor-wise independent, so the logistic risk is averaged by nested Gauss-Hermite quadrature (32 points over z_a;
  given z_a the predictor is Gaussian) and the survival score is ``w . mean + gamma * mean_a * mean_b``.
* per-patient reliability: each patient's observation precision uses its own noise sd (scaled for unreliable
  patients; zero precision for signal-free artifacts). The flags are visible in the data (artifact images look like
  failed acquisitions, sparse EHR stays have few rows), so an oracle that knows them is still a fair reference.
* ``a+b`` sources: the conditional risk given exactly those modalities' signals (as if every patient had them)."""
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
        per_patient = c.patient_sd(m) if m in c.unreliable else None
        for k, f in enumerate(c.factors[m]):
            inv = 1.0 / c.noise_sd[m][k] ** 2 if per_patient is None else 1.0 / per_patient[:, k] ** 2  # inf -> 0
            precision[:, f] += use[:, j] * inv
            weighted[:, f] += use[:, j] * inv * c.signals[m][:, k]
    return weighted / precision, 1.0 / precision


def _expected_sigmoid(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """E[sigmoid(x)] for x ~ N(mean, var) (Gauss-Hermite)."""
    x = mean[..., None] + np.sqrt(2.0 * var)[..., None] * _GH_X
    return (sigmoid(x) * _GH_W).sum(axis=-1) / math.sqrt(math.pi)


def _expected_sigmoid_interaction(b: float, mean: np.ndarray, var: np.ndarray, weights: np.ndarray,
                                  inter: Interaction) -> np.ndarray:
    """E[sigmoid(b + w . z + gamma z_a z_b)] for z ~ N(mean, diag(var)) (per row).

    Given z_a = t the predictor is Gaussian with mean ``b + sum_{f != a} w_f m_f + w_a t + gamma t m_b`` and
    variance ``sum_{f != a, b} w_f^2 v_f + (w_b + gamma t)^2 v_b``; t is integrated with Gauss-Hermite.
    """
    a, bb, g = inter.a, inter.b, inter.gamma
    if a == bb:
        raise ValueError("interaction factors must differ")
    others = [f for f in range(mean.shape[1]) if f not in (a, bb)]
    t = mean[:, a, None] + np.sqrt(2.0 * var[:, a])[:, None] * _GH_X  # [N, Q]
    slope = weights[bb] + g * t
    m = (b + mean[:, others] @ weights[others])[:, None] + weights[a] * t + slope * mean[:, bb, None]
    v = (var[:, others] @ weights[others] ** 2)[:, None] + slope ** 2 * var[:, bb, None]
    return (_expected_sigmoid(m, v) * _GH_W).sum(axis=-1) / math.sqrt(math.pi)


def risks(c: SiteCohort, weights: np.ndarray, use: np.ndarray | None,
          interaction: Interaction | None = None) -> dict[str, np.ndarray]:
    """Scores per task: from the true z (``use=None``) or from the posterior given the signals in ``use``."""
    lab = c.labels
    if use is None:
        return {"binary": lab.true_mortality, "multilabel": lab.true_pheno, "multiclass": lab.true_subtype,
                "survival": lab.true_survival_risk}
    mean, var = posterior(c, use)
    if interaction is None:
        mort = _expected_sigmoid(lab.mortality_intercept + mean @ weights, var @ weights ** 2)
        surv = mean @ weights
    else:
        mort = _expected_sigmoid_interaction(lab.mortality_intercept, mean, var, weights, interaction)
        surv = mean @ weights + interaction.gamma * mean[:, interaction.a] * mean[:, interaction.b]
    pheno = _expected_sigmoid(mean @ PHENO_WEIGHTS.T + PHENO_BIAS, var @ (PHENO_WEIGHTS ** 2).T)
    draws = mean[:, None, :] + np.sqrt(var)[:, None, :] * _MC_DRAWS[None]  # [N, S, 4]
    logits = draws @ SUBTYPE_WEIGHTS.T
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    sub = (p / p.sum(axis=-1, keepdims=True)).mean(axis=1)
    return {"binary": mort, "multilabel": pheno, "multiclass": sub, "survival": surv}


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


def _site_scores(c: SiteCohort, weights: np.ndarray, interaction: Interaction | None = None,
                 subsets: bool = False) -> dict[str, dict[str, np.ndarray]]:
    present = np.stack([c.present[m] for m in MODALITIES], axis=1)
    uses: dict[str, np.ndarray | None] = {"true": None, "all": np.ones_like(present), "observed": present}
    for j, m in enumerate(MODALITIES):
        only = np.zeros_like(present)
        only[:, j] = True
        uses[m] = only
    for name in SUBSET_SOURCES if subsets else ():
        only = np.zeros_like(present)
        only[:, [MODALITIES.index(m) for m in name.split("+")]] = True
        uses[name] = only
    return {src: risks(c, weights, use, interaction) for src, use in uses.items()}


def _design(preset: Preset, cohorts: Sequence[SiteCohort]) -> dict:
    """The optional terms of the latent model, for oracle.json (empty for presets without them)."""
    out: dict = {}
    if preset.interaction is not None:
        it = preset.interaction
        out["interaction"] = {"term": it.describe(), "factors": [it.a, it.b], "gamma": it.gamma,
                              "observed_by": {str(f): [m for m in MODALITIES if f in preset.signals[m]]
                                              for f in (it.a, it.b)}}
    if preset.reliability:
        out["reliability"] = {
            m: {"kind": r.kind, "share": r.share, "noise_scale": None if r.no_signal else r.noise_scale,
                "no_signal": r.no_signal, "unreliable_fraction_of_present": _unreliable_share(cohorts, m),
                "per_site": {c.name: _unreliable_share([c], m) for c in cohorts}}
            for m, r in preset.reliability.items()}
    return out


def _unreliable_share(cohorts: Sequence[SiteCohort], m: str) -> float | None:
    """Fraction of the patients with modality ``m`` present whose ``m`` data is unreliable (None: nobody has it)."""
    flags = np.concatenate([c.unreliable[m][c.present[m]] for c in cohorts])
    return round(float(flags.mean()), 4) if flags.size else None


def _scope(cohorts: Sequence[SiteCohort], scores: list[dict], split: str | None, sources=SOURCES) -> dict:
    sel = [np.ones(c.n, bool) if split is None else c.split == split for c in cohorts]
    labels = {t: np.concatenate([_labels(c)[t][s] for c, s in zip(cohorts, sel)]) for t in _KEEP}
    out = {"n": int(sum(s.sum() for s in sel)),
           "present_fraction": {m: round(float(np.concatenate([c.present[m][s] for c, s in zip(cohorts, sel)])
                                               .mean()), 4) for m in MODALITIES}}
    for src in sources:
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
    design = _design(preset, cohorts)
    sources = SOURCES + (SUBSET_SOURCES if preset.oracle_subsets else ())
    scores = [_site_scores(c, weights, preset.interaction, preset.oracle_subsets) for c in cohorts]
    method = __doc__.strip() + ("\n\n" + EXTENSIONS_DOC if design or preset.oracle_subsets else "")
    result = {"preset": preset.name, "seed": int(seed), "method": method, "sources": list(sources),
              "sites": [c.name for c in cohorts], "global": {}, "per_site": {}}
    for split_name, split in (("all", None), ("test", "test")):
        result["global"][split_name] = _scope(cohorts, scores, split, sources)
    for c, sc in zip(cohorts, scores):
        result["per_site"][c.name] = {s_name: _scope([c], [sc], s, sources)
                                      for s_name, s in (("all", None), ("test", "test"))}
    if design:
        result["design"] = design
    return result
