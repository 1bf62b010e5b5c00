"""Simulate one site's patients in memory: latent state, modality signals, presence masks, labels and split.

Nothing here touches the disk; :mod:`sim.generator` renders a :class:`SiteCohort` into a site folder and
:mod:`sim.oracle` scores it. Each modality ``m`` observes a subset ``F_m`` of the latent factors through Gaussian
noise: ``u_m = z[:, F_m] + eps``, ``eps ~ N(0, diag(sd_m^2))``. The renderers draw the modality's data from ``u_m``
only, so ``u_m`` is all the latent information that modality can carry.

Missingness per modality: structural (the site's ``absent`` list -> nobody has it), otherwise presence ~
Bernoulli(sigmoid(b + mar_m * acuity)), where acuity is the standardized EHR acuity signal (MAR: sicker patients
are imaged more often) and ``b`` is solved so the site's presence rate matches the preset / site override (with
``mar_m = 0`` this is MCAR). A patient left with no modality at all gets EHR (or the first modality the site has).

Per-patient reliability (``Preset.reliability``, off in the original presets): for modality ``m`` each patient is
unreliable with probability ``share_m`` (drawn from its own stream, for everyone). Unreliable patients' noise is
scaled, ``u_m = z[:, F_m] + k * eps``, or, for a signal-free artifact (``k = inf``), ``u_m`` is drawn independently of
``z`` from ``N(site mean, 1 + sd^2)`` (the marginal of a reliable signal). ``SiteCohort.unreliable`` keeps the flags and
``SiteCohort.patient_sd`` the per-patient noise sd the oracle uses.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from sim.latent import Labels, draw_labels, sigmoid, solve_intercept, stratified_split
from sim.presets import MODALITIES, N_LATENT, Preset, SiteProfile, get_preset, site_profiles

log = logging.getLogger(__name__)

# Independent random streams per site, so changing one renderer never shifts another's draws.
STREAMS = {"latent": 0, "signal": 1, "presence": 2, "labels": 3, "split": 4, "ehr": 5, "image": 6, "text": 7,
           "genomics": 8, "structure": 9, "reliability": 10, "artifact": 11, "meds": 12}


def rng_for(seed: int, site_index: int, stream: str) -> np.random.Generator:
    """Deterministic random stream for (seed, site, purpose); site_index -1 = federation-wide."""
    return np.random.default_rng([int(seed), int(site_index) + 1, STREAMS[stream]])


@dataclass
class SiteCohort:
    """One simulated site, in memory.

    Attributes:
        name: site folder name.
        index: partition index.
        profile: the site's profile.
        patient_ids: unique ids (site-prefixed).
        z: latent states ``[N, 4]``; prior_mean: the site's latent mean ``[4]`` (prior covariance is I).
        factors: modality -> observed latent factor indices; noise_sd: modality -> noise sd per observed factor.
        signals: modality -> ``u_m`` ``[N, len(factors[m])]`` (drawn for everyone, used where present).
        present: modality -> bool ``[N]``.
        labels: labels and true risks; split: "train" / "val" / "test" per patient.
        unreliable: modality -> bool ``[N]``, patients whose data in that modality is unreliable (only modalities
            with a ``Preset.reliability`` entry); noise_multiplier / reliability_kind: modality -> that entry's
            noise multiplier / rendering kind.
    """

    name: str
    index: int
    profile: SiteProfile
    patient_ids: list[str]
    z: np.ndarray
    prior_mean: np.ndarray
    factors: dict[str, list[int]]
    noise_sd: dict[str, np.ndarray]
    signals: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: Labels
    split: np.ndarray
    unreliable: dict[str, np.ndarray] = field(default_factory=dict)
    noise_multiplier: dict[str, float] = field(default_factory=dict)
    reliability_kind: dict[str, str] = field(default_factory=dict)

    def patient_sd(self, m: str) -> np.ndarray:
        """Per-patient observation noise sd of modality ``m``, ``[N, len(factors[m])]`` (inf = no signal)."""
        sd = np.tile(self.noise_sd[m], (self.n, 1))
        if m in self.unreliable:
            sd[self.unreliable[m]] *= self.noise_multiplier[m]
        return sd

    @property
    def n(self) -> int:
        return self.z.shape[0]

    def acuity(self) -> np.ndarray:
        """Standardized observed acuity (EHR factor 0 signal if EHR sees it, else the latent value)."""
        if 0 in self.factors.get("ehr", []):
            a = self.signals["ehr"][:, self.factors["ehr"].index(0)]
        else:
            a = self.z[:, 0]
        return (a - a.mean()) / (a.std() + 1e-9)


def _presence(preset: Preset, profile: SiteProfile, acuity: np.ndarray, rng: np.random.Generator,
              name: str) -> dict[str, np.ndarray]:
    n = len(acuity)
    present: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        rate = float(profile.presence.get(m, preset.presence[m]))
        if m in profile.absent or rate <= 0.0:
            present[m] = np.zeros(n, dtype=bool)
        elif rate >= 1.0:
            present[m] = np.ones(n, dtype=bool)
        else:
            tilt = float(preset.mar.get(m, 0.0)) * acuity
            p = sigmoid(solve_intercept(tilt, rate) + tilt)
            present[m] = rng.random(n) < p
    none = ~np.any(np.stack([present[m] for m in MODALITIES]), axis=0)
    if none.any():
        fallback = next((m for m in MODALITIES if m not in profile.absent), None)
        if fallback is None:
            raise ValueError(f"site {name}: every modality is listed in 'absent'; keep at least one")
        present[fallback][none] = True
        log.info("site %s: %d patients had no modality; gave them %s", name, int(none.sum()), fallback)
    return present


def _unreliable(preset: Preset, z: np.ndarray, mean: np.ndarray, factors: dict[str, list[int]],
                noise_sd: dict[str, np.ndarray], signals: dict[str, np.ndarray], rng: np.random.Generator
                ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Draw the per-patient reliability flags and degrade those patients' signals in place (no-op by default)."""
    flags: dict[str, np.ndarray] = {}
    multiplier: dict[str, float] = {}
    n = z.shape[0]
    for m in MODALITIES:
        rel = preset.reliability.get(m)
        if rel is None:
            continue
        rel.check(m)
        flag = rng.random(n) < rel.share
        f = factors[m]
        if rel.no_signal:  # an artifact: drawn from the signal's marginal, independent of z
            fresh = mean[f] + np.sqrt(1.0 + noise_sd[m] ** 2) * rng.standard_normal((n, len(f)))
            signals[m][flag] = fresh[flag]
        else:
            signals[m][flag] = z[flag][:, f] + rel.noise_scale * (signals[m][flag] - z[flag][:, f])
        flags[m], multiplier[m] = flag, float(rel.noise_scale)
    return flags, multiplier


def simulate_site(preset: Preset, index: int, name: str, profile: SiteProfile, seed: int) -> SiteCohort:
    """Simulate one site's patients (no files written).

    Args:
        preset: federation settings.
        index: partition index of the site (selects its random streams).
        name: site name.
        profile: the site's profile.
        seed: federation seed.
    """
    if len(profile.case_mix) != N_LATENT:
        raise ValueError(f"site {name}: case_mix needs {N_LATENT} values, got {profile.case_mix}")
    if profile.patients < 1:
        raise ValueError(f"site {name}: patients must be >= 1, got {profile.patients}")
    n = int(profile.patients)
    mean = np.asarray(profile.case_mix, dtype=float)
    z = mean + rng_for(seed, index, "latent").standard_normal((n, N_LATENT))
    sig_rng = rng_for(seed, index, "signal")
    factors, noise_sd, signals = {}, {}, {}
    for m in MODALITIES:
        spec = preset.signals[m]
        factors[m] = sorted(int(f) for f in spec)
        noise_sd[m] = np.array([spec[f] for f in factors[m]], dtype=float) * float(profile.noise_scale.get(m, 1.0))
        signals[m] = z[:, factors[m]] + noise_sd[m] * sig_rng.standard_normal((n, len(factors[m])))
    unreliable, multiplier = _unreliable(preset, z, mean, factors, noise_sd, signals,
                                         rng_for(seed, index, "reliability"))
    labels = draw_labels(z, np.asarray(preset.mortality_weights, dtype=float), profile.mortality_prevalence,
                         rng_for(seed, index, "labels"), interaction=preset.interaction)
    cohort = SiteCohort(name=name, index=index, profile=profile,
                        patient_ids=[f"{name}-{i:05d}" for i in range(n)], z=z, prior_mean=mean, factors=factors,
                        noise_sd=noise_sd, signals=signals, present={}, labels=labels,
                        split=stratified_split(labels.mortality, rng_for(seed, index, "split")),
                        unreliable=unreliable, noise_multiplier=multiplier,
                        reliability_kind={m: r.kind for m, r in preset.reliability.items()})
    cohort.present = _presence(preset, profile, cohort.acuity(), rng_for(seed, index, "presence"), name)
    return cohort


def simulate_federation(preset: str | Preset, n_sites: int | None, seed: int = 0) -> list[SiteCohort]:
    """Simulate every site of a federation in memory (cheap: used by the oracle and by tests).

    Args:
        preset: preset name or object.
        n_sites: number of sites (None = the preset's default).
        seed: federation seed.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    return [simulate_site(p, i, name, prof, seed) for i, (name, prof) in enumerate(site_profiles(p, n_sites))]
