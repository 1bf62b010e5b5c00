"""The latent patient state and the label model: every label is a function of the same latent factors.

For a patient with latent state ``z`` (4 factors, see :mod:`sim.presets`):

* mortality ~ Bernoulli(sigmoid(b_site + w . z)); ``b_site`` is solved so the site's rate matches its prevalence;
* pheno_j ~ Bernoulli(sigmoid(PHENO_BIAS[j] + PHENO_WEIGHTS[j] . z)), j = 0..4;
* subtype ~ Categorical(softmax(SUBTYPE_WEIGHTS . z));
* survival: T ~ Weibull(shape 1.5, scale 200 d * exp(-(w . z) / 1.5)), censored by C ~ Uniform(20, 365) d;
  ``time = max(min(T, C), 0.5)``, ``event = T <= C``. The true survival risk is ``w . z``.

With a preset's optional interaction ``(a, b, gamma)`` the mortality / survival predictor is
``w . z + gamma * z_a * z_b`` (phenotypes and subtype stay linear).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHENO_WEIGHTS = np.array([
    [1.5, 0.3, 0.0, 0.0],   # pheno_0: acute respiratory failure (acuity)
    [0.2, 1.6, 0.0, 0.0],   # pheno_1: pneumonia (lung lesion)
    [0.0, 0.0, 1.5, 0.2],   # pheno_2: molecular subgroup
    [0.0, 0.0, 0.2, 1.6],   # pheno_3: chronic heart / lung disease
    [0.8, 0.0, 0.0, 0.8],   # pheno_4: sepsis-like (acuity + chronic)
])
PHENO_BIAS = np.array([-1.2, -1.0, -1.5, -0.8, -1.4])
SUBTYPE_WEIGHTS = np.array([
    [0.0, 1.2, -1.0, 0.0],
    [0.0, -0.8, 1.4, 0.0],
    [0.0, -0.4, -0.4, 0.5],
])
WEIBULL_SHAPE = 1.5
WEIBULL_SCALE_DAYS = 200.0
CENSOR_RANGE_DAYS = (20.0, 365.0)
PHENO_NAMES = [f"pheno_{j}" for j in range(PHENO_WEIGHTS.shape[0])]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=float)))


def solve_intercept(eta: np.ndarray, target: float) -> float:
    """Intercept b with mean(sigmoid(b + eta)) == target (bisection, deterministic).

    Args:
        eta: linear predictor without intercept, one value per sample.
        target: wanted mean probability in (0, 1).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target rate must lie in (0, 1), got {target}")
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sigmoid(mid + eta).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class Labels:
    """Labels and the true risks they were drawn from, one row per patient."""

    mortality: np.ndarray  # int [N]
    pheno: np.ndarray  # int [N, 5]
    subtype: np.ndarray  # int [N]
    time: np.ndarray  # float [N], days
    event: np.ndarray  # int [N]
    mortality_intercept: float
    true_mortality: np.ndarray  # P(mortality = 1 | z)
    true_pheno: np.ndarray  # P(pheno_j = 1 | z)
    true_subtype: np.ndarray  # softmax probabilities [N, 3]
    true_survival_risk: np.ndarray  # w . z (+ interaction; higher = earlier death)


def risk_predictor(z: np.ndarray, weights: np.ndarray, interaction=None) -> np.ndarray:
    """Mortality / survival linear predictor without intercept: ``w . z`` (+ ``gamma * z_a * z_b``).

    Args:
        z: latent states ``[N, 4]``.
        weights: mortality / survival weights ``[4]``.
        interaction: optional :class:`sim.presets.Interaction`.
    """
    eta = z @ weights
    if interaction is not None:
        eta = eta + interaction.gamma * z[:, interaction.a] * z[:, interaction.b]
    return eta


def draw_labels(z: np.ndarray, weights: np.ndarray, prevalence: float, rng: np.random.Generator,
                interaction=None) -> Labels:
    """Draw all labels of one site from its latent states.

    Args:
        z: latent states ``[N, 4]``.
        weights: mortality / survival weights ``[4]``.
        prevalence: target mortality rate of this site.
        rng: the site's label random stream.
        interaction: optional :class:`sim.presets.Interaction` term of the mortality / survival predictor.
    """
    n = z.shape[0]
    eta = risk_predictor(z, weights, interaction)
    b = solve_intercept(eta, prevalence)
    p_mort = sigmoid(b + eta)
    mortality = (rng.random(n) < p_mort).astype(int)
    p_pheno = sigmoid(z @ PHENO_WEIGHTS.T + PHENO_BIAS)
    pheno = (rng.random(p_pheno.shape) < p_pheno).astype(int)
    logits = z @ SUBTYPE_WEIGHTS.T
    p_sub = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_sub /= p_sub.sum(axis=1, keepdims=True)
    subtype = (rng.random(n)[:, None] > np.cumsum(p_sub, axis=1)).sum(axis=1).clip(0, 2)
    scale = WEIBULL_SCALE_DAYS * np.exp(-eta / WEIBULL_SHAPE)
    t_event = scale * (-np.log1p(-rng.random(n))) ** (1.0 / WEIBULL_SHAPE)
    t_censor = rng.uniform(*CENSOR_RANGE_DAYS, size=n)
    time = np.round(np.maximum(np.minimum(t_event, t_censor), 0.5), 1)
    event = (t_event <= t_censor).astype(int)
    return Labels(mortality=mortality, pheno=pheno, subtype=subtype.astype(int), time=time, event=event,
                  mortality_intercept=b, true_mortality=p_mort, true_pheno=p_pheno, true_subtype=p_sub,
                  true_survival_risk=eta)


def stratified_split(y: np.ndarray, rng: np.random.Generator, fractions=(0.70, 0.15, 0.15)) -> np.ndarray:
    """Assign train / val / test per class of ``y`` so every split gets both outcomes when possible.

    Args:
        y: integer stratification labels ``[N]``.
        rng: random stream.
        fractions: train, val, test fractions (sum 1).
    """
    split = np.empty(len(y), dtype=object)
    for value in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == value))
        n_val = int(round(fractions[1] * len(idx)))
        n_test = int(round(fractions[2] * len(idx)))
        if len(idx) >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = len(idx) - n_val - n_test
        split[idx[:n_train]] = "train"
        split[idx[n_train:n_train + n_val]] = "val"
        split[idx[n_train + n_val:]] = "test"
    return split.astype(str)
