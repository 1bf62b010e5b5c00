"""Named settings of the synthetic federation (``omnifuse synth --preset NAME``).

A :class:`Preset` describes the latent model shared by all sites (which latent factors drive the labels, which
factors each modality observes and how noisily, how often each modality is present) and a list of
:class:`SiteProfile` templates (size, case mix, prevalence, scanner, phrasing, per-site missingness overrides).
When more sites are asked for than a preset lists, the templates are reused in order with new names.

Latent factors (index: meaning -> which modalities see it by default):
    0 acuity      -> EHR (vital signs, labs, GCS)
    1 lung lesion -> image (blobs) and text (consolidation / opacity sentences)
    2 molecular   -> genomics (pathway genes)
    3 chronic     -> text (cardiomegaly / emphysema / effusion sentences)

Optional terms (off in the original presets, used by ``reliability``): an :class:`Interaction` adds
``gamma * z_a * z_b`` to the mortality / survival linear predictor, and :class:`Reliability` makes a share of patients'
data in one modality unreliable (noisier, or an artifact that carries no latent signal at all).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

MODALITIES: tuple[str, ...] = ("ehr", "image", "text", "genomics")
N_LATENT = 4
SITE_NAMES = ("hospital_a", "hospital_b", "hospital_c", "hospital_d", "hospital_e", "hospital_f")

#: Scanner profiles: blur sigma (px), noise sd, gain, offset, block size for low resolution, streak probability.
SCANNERS: dict[str, dict[str, float]] = {
    "clean": {"blur": 0.0, "noise": 0.02, "gain": 1.0, "offset": 0.0, "block": 1, "streaks": 0.0},
    "soft": {"blur": 1.2, "noise": 0.03, "gain": 0.9, "offset": 0.05, "block": 1, "streaks": 0.0},
    "lowres": {"blur": 0.5, "noise": 0.05, "gain": 1.1, "offset": -0.04, "block": 2, "streaks": 0.1},
    "noisy": {"blur": 0.8, "noise": 0.12, "gain": 0.8, "offset": 0.08, "block": 2, "streaks": 0.5},
}


@dataclass(frozen=True)
class Interaction:
    """A risk term ``gamma * z[a] * z[b]`` added to the mortality and survival linear predictor.

    With ``a`` observed by one modality only and ``b`` by another only (and site means near 0), neither modality
    alone can recover the term (``E[z_a z_b | u_a] = E[z_a | u_a] * E[z_b]``); the pair can.

    Args:
        a: first latent factor.
        b: second latent factor.
        gamma: weight of the product.
    """

    a: int
    b: int
    gamma: float

    def describe(self) -> str:
        return f"{self.gamma:g} * z{self.a} * z{self.b}"


@dataclass(frozen=True)
class Reliability:
    """Per-patient reliability of one modality: a random share of patients gets unreliable data.

    Args:
        share: probability that a patient's data in this modality is unreliable (independent per patient, drawn
            for everyone; it matters where the modality is present).
        noise_scale: multiplier of the modality's observation noise sd for those patients; ``math.inf`` = an
            artifact that carries no latent signal at all (the renderer draws it from noise).
        kind: how the renderer shows those patients: ``"artifact"`` (image only: a failed acquisition with low
            contrast, a blank band, streaks and heavy noise), ``"sparse"`` (EHR only: a short stay of 3-8 rows) or
            ``"noisy"`` (any modality: rendered as usual from the noisier signal; then the flag is not visible in
            the data and the oracle, which uses it, is an upper bound a model cannot reach).
    """

    share: float
    noise_scale: float = math.inf
    kind: str = "noisy"

    def check(self, modality: str) -> None:
        """Raise ValueError when the settings are out of range or the kind does not fit the modality."""
        allowed = {"image": ("artifact", "noisy"), "ehr": ("sparse", "noisy")}.get(modality, ("noisy",))
        if not 0.0 <= self.share <= 1.0 or not self.noise_scale >= 1.0 or self.kind not in allowed:
            raise ValueError(f"reliability of {modality}: need 0 <= share <= 1, noise_scale >= 1 and kind in "
                             f"{allowed}; got {self}")

    @property
    def no_signal(self) -> bool:
        return math.isinf(self.noise_scale)


@dataclass(frozen=True)
class SiteProfile:
    """One hospital's deviations from the preset.

    Args:
        patients: number of patients.
        case_mix: mean shift of each latent factor (length 4); positive = sicker on that factor.
        mortality_prevalence: target in-hospital mortality rate (the intercept is solved for it).
        scanner: key of :data:`SCANNERS`.
        text_style: report phrasing template (0, 1 or 2).
        gcs_style: 0 = numbered GCS strings ("4 Spontaneously"), 1 = plain ("Spontaneously").
        presence: per-modality overrides of the preset's presence rate.
        absent: modalities this site does not have at all (structural missingness).
        noise_scale: per-modality multiplier of the latent observation noise (e.g. a poor image pipeline).
    """

    patients: int
    case_mix: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    mortality_prevalence: float = 0.15
    scanner: str = "clean"
    text_style: int = 0
    gcs_style: int = 0
    presence: dict[str, float] = field(default_factory=dict)
    absent: tuple[str, ...] = ()
    noise_scale: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """Settings of one synthetic federation.

    Args:
        name: preset name.
        description: one line for ``list_presets``.
        sites: site templates; their count is the default number of sites.
        n_genes: genes in genomics.csv (same list at every site).
        mortality_weights: weight of each latent factor in the mortality / survival linear predictor.
        signals: modality -> {latent factor: observation noise sd}; the modality observes only these factors.
        presence: modality -> fraction of patients that have it (before MAR tilt and site overrides).
        mar: modality -> log-odds change of presence per unit of observed acuity (sicker -> imaged more often).
        pathway_genes: genes per observed latent factor in the genomics table.
        interaction: optional product term of two latent factors in the mortality / survival risk.
        reliability: modality -> per-patient reliability (a share of patients with noisy / signal-free data).
        oracle_subsets: also score every modality pair and triple in oracle.json (sources like ``image+genomics``).
    """

    name: str
    description: str
    sites: tuple[SiteProfile, ...]
    n_genes: int = 200
    mortality_weights: tuple[float, ...] = (1.2, 0.8, 0.7, 0.6)
    signals: dict[str, dict[int, float]] = field(default_factory=lambda: {
        "ehr": {0: 0.35, 3: 1.2}, "image": {1: 0.45}, "text": {1: 0.8, 3: 0.5}, "genomics": {2: 0.4}})
    presence: dict[str, float] = field(default_factory=lambda: {
        "ehr": 0.98, "image": 0.6, "text": 0.7, "genomics": 0.35})
    mar: dict[str, float] = field(default_factory=lambda: {"ehr": 0.0, "image": 0.8, "text": 0.3, "genomics": 0.0})
    pathway_genes: int = 12
    interaction: Interaction | None = None
    reliability: dict[str, Reliability] = field(default_factory=dict)
    oracle_subsets: bool = False

    @property
    def default_sites(self) -> int:
        return len(self.sites)


_SMOKE_SITES = (
    SiteProfile(patients=40, mortality_prevalence=0.25, scanner="clean", text_style=0, gcs_style=0),
    SiteProfile(patients=40, case_mix=(0.4, 0.2, 0.0, 0.3), mortality_prevalence=0.3, scanner="lowres",
                text_style=1, gcs_style=1),
    SiteProfile(patients=40, case_mix=(-0.3, 0.0, 0.2, 0.0), mortality_prevalence=0.2, scanner="soft",
                text_style=2, gcs_style=0, absent=("genomics",)),
)

_DEMO_SITES = (
    SiteProfile(patients=800, case_mix=(0.3, 0.2, 0.0, 0.2), mortality_prevalence=0.18, scanner="clean",
                text_style=0, gcs_style=0, presence={"genomics": 0.5}),
    SiteProfile(patients=650, case_mix=(0.0, 0.0, 0.3, 0.0), mortality_prevalence=0.12, scanner="soft",
                text_style=1, gcs_style=1),
    SiteProfile(patients=550, case_mix=(-0.3, -0.2, 0.0, 0.4), mortality_prevalence=0.10, scanner="lowres",
                text_style=2, gcs_style=0, absent=("genomics",)),
    SiteProfile(patients=400, case_mix=(0.5, 0.4, -0.2, 0.0), mortality_prevalence=0.22, scanner="noisy",
                text_style=1, gcs_style=1, absent=("image",), presence={"text": 0.85}),
)

_LAZY_SITES = (
    SiteProfile(patients=700, mortality_prevalence=0.2, scanner="clean", text_style=0),
    SiteProfile(patients=600, case_mix=(0.2, 0.0, 0.0, 0.0), mortality_prevalence=0.2, scanner="noisy",
                text_style=1, gcs_style=1, noise_scale={"image": 3.0}),
    SiteProfile(patients=600, case_mix=(0.0, 0.3, 0.0, 0.2), mortality_prevalence=0.2, scanner="lowres",
                text_style=2, noise_scale={"image": 2.0}),
    SiteProfile(patients=500, case_mix=(-0.2, 0.0, 0.3, 0.0), mortality_prevalence=0.2, scanner="soft",
                text_style=0, gcs_style=1),
)

# Unequal sizes: the two small sites have <= 150 training patients under the 70/15/15 split (148 and 126).
_RELIABILITY_SITES = (
    SiteProfile(patients=3000, mortality_prevalence=0.18, scanner="clean", text_style=0, gcs_style=0),
    SiteProfile(patients=2500, case_mix=(0.2, 0.0, 0.0, 0.2), mortality_prevalence=0.22, scanner="soft",
                text_style=1, gcs_style=1),
    SiteProfile(patients=1500, case_mix=(-0.2, 0.0, 0.0, 0.0), mortality_prevalence=0.16, scanner="lowres",
                text_style=2, gcs_style=0),
    SiteProfile(patients=210, case_mix=(0.3, 0.0, 0.0, 0.3), mortality_prevalence=0.25, scanner="noisy",
                text_style=1, gcs_style=1),
    SiteProfile(patients=180, mortality_prevalence=0.20, scanner="soft", text_style=0, gcs_style=0),
)

PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke", description="tiny: 3 sites x 40 patients, 32 genes; seconds, for tests",
        sites=_SMOKE_SITES, n_genes=32, pathway_genes=6),
    "demo": Preset(
        name="demo", description="4 non-IID hospitals, 2,400 patients, 200 genes; one site lacks genomics, one images",
        sites=_DEMO_SITES),
    "demo-x5": Preset(
        name="demo-x5", description="the demo federation with 5x the patients per site (12,000); B5's larger cohorts",
        sites=tuple(dataclasses.replace(s, patients=5 * s.patients) for s in _DEMO_SITES)),
    "laziness": Preset(
        name="laziness",
        description="dominant EHR (strong acuity signal); image noisy at some sites; lung, molecular and chronic "
                    "signal only in the weaker modalities",
        sites=_LAZY_SITES,
        mortality_weights=(1.6, 1.0, 1.0, 1.0),
        signals={"ehr": {0: 0.15}, "image": {1: 0.6}, "text": {1: 1.0, 3: 0.5}, "genomics": {2: 0.5}},
        presence={"ehr": 1.0, "image": 0.7, "text": 0.7, "genomics": 0.6},
        mar={"ehr": 0.0, "image": 0.5, "text": 0.0, "genomics": 0.0}),
    "extreme-missing": Preset(
        name="extreme-missing", description="4 hospitals; EHR for everyone, 90% of image/text/genomics missing",
        sites=tuple(dataclasses.replace(s, absent=(), presence={}) for s in _DEMO_SITES),
        presence={"ehr": 1.0, "image": 0.1, "text": 0.1, "genomics": 0.1},
        mar={"ehr": 0.0, "image": 0.0, "text": 0.0, "genomics": 0.0}),
    "reliability": Preset(
        name="reliability",
        description="5 unequal hospitals (3,000 to 180 patients), 7,390 patients; EHR dominant but fusing all "
                    "modalities gains ~+0.17 oracle AUROC; per-patient image artifacts and sparse EHR stays; "
                    "an image x genomics risk interaction",
        sites=_RELIABILITY_SITES,
        mortality_weights=(2.7, 0.8, 0.6, 1.4),
        signals={"ehr": {0: 0.3}, "image": {1: 0.3}, "text": {3: 0.3}, "genomics": {2: 0.3}},
        presence={"ehr": 1.0, "image": 0.7, "text": 0.7, "genomics": 0.6},
        mar={"ehr": 0.0, "image": 0.5, "text": 0.0, "genomics": 0.0},
        interaction=Interaction(a=1, b=2, gamma=4.0),
        reliability={"image": Reliability(share=0.25, noise_scale=math.inf, kind="artifact"),
                     "ehr": Reliability(share=0.30, noise_scale=4.0, kind="sparse")},
        oracle_subsets=True),
}


def list_presets() -> list[tuple[str, str]]:
    """Names and one-line descriptions of the presets, in definition order."""
    return [(name, p.description) for name, p in PRESETS.items()]


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Args:
        name: a key of :data:`PRESETS`.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def site_profiles(preset: Preset, n_sites: int | None) -> list[tuple[str, SiteProfile]]:
    """The (site name, profile) pairs of a federation, in partition order.

    Args:
        preset: the preset.
        n_sites: number of sites; None = the preset's default. Templates repeat when more are asked for.

    Raises:
        ValueError: n_sites < 1.
    """
    n = preset.default_sites if n_sites is None else int(n_sites)
    if n < 1:
        raise ValueError(f"number of sites must be >= 1, got {n_sites}")
    out = []
    for i in range(n):
        name = SITE_NAMES[i] if i < len(SITE_NAMES) else f"hospital_{i + 1:02d}"
        out.append((name, preset.sites[i % len(preset.sites)]))
    return out
