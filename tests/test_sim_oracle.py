"""Each preset has its intended property; the oracle's metrics match sklearn; renderers carry the latent signal."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from sim.cohort import simulate_federation
from sim.ehr import render_ehr
from sim.images import render_images
from sim.oracle import compute_oracle
from sim.presets import MODALITIES, SCANNERS, get_preset
from sim.scoring import auprc, auroc, c_index
from sim.text import render_reports

WEAK = ("image", "text", "genomics")


@pytest.fixture(scope="module")
def laziness():
    p = get_preset("laziness")
    cohorts = simulate_federation(p, None, seed=0)
    return cohorts, compute_oracle(p, cohorts, seed=0)


def test_laziness_all_modalities_beat_every_single_modality(laziness) -> None:
    _, oracle = laziness
    for split in ("all", "test"):
        g = oracle["global"][split]
        for task, key in (("binary", "auroc"), ("survival", "c_index"), ("multilabel", "auroc")):
            best_single = max(g[m][task][key] for m in MODALITIES)
            assert g["all"][task][key] > best_single + 0.02, (split, task)
            assert g["true"][task][key] >= g["all"][task][key] - 0.01
    g = oracle["global"]["all"]
    assert max(MODALITIES, key=lambda m: g[m]["binary"]["auroc"]) == "ehr", "EHR is the dominant modality"
    assert g["ehr"]["binary"]["auroc"] > max(g[m]["binary"]["auroc"] for m in WEAK) + 0.05


def test_laziness_noisy_image_sites(laziness) -> None:
    cohorts, oracle = laziness
    img = {c.name: oracle["per_site"][c.name]["all"]["image"]["binary"]["auroc"] for c in cohorts}
    noisy = [c.name for c in cohorts if c.profile.noise_scale.get("image", 1.0) > 1.0]
    clean = [c.name for c in cohorts if c.name not in noisy]
    assert noisy and clean
    assert max(img[n] for n in noisy) < min(img[n] for n in clean)


def test_extreme_missing_rates() -> None:
    cohorts = simulate_federation("extreme-missing", None, seed=1)
    for m in WEAK:
        frac = np.concatenate([c.present[m] for c in cohorts]).mean()
        assert 0.87 < 1 - frac < 0.93, (m, frac)
    assert all(c.present["ehr"].all() for c in cohorts)


def test_demo_structural_mar_and_non_iid() -> None:
    cohorts = {c.name: c for c in simulate_federation("demo", None, seed=0)}
    assert sum(c.n for c in cohorts.values()) == 2400
    assert not cohorts["hospital_c"].present["genomics"].any()
    assert not cohorts["hospital_d"].present["image"].any()
    c = cohorts["hospital_a"]
    acuity = c.acuity()
    sick, well = acuity > np.quantile(acuity, 0.75), acuity < np.quantile(acuity, 0.25)
    assert c.present["image"][sick].mean() > c.present["image"][well].mean() + 0.15, "MAR: sicker imaged more"
    prev = {n: c.labels.mortality.mean() for n, c in cohorts.items()}
    for n, c in cohorts.items():
        assert abs(prev[n] - c.profile.mortality_prevalence) < 0.05
    assert max(prev.values()) - min(prev.values()) > 0.07


def test_scoring_matches_sklearn_and_bruteforce() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # ties on purpose
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5), np.arange(5)))
    t = np.round(rng.exponential(10, 60), 0)
    e = rng.integers(0, 2, 60)
    r = np.round(rng.standard_normal(60), 1)
    num = den = 0.0
    for i in range(60):
        for j in range(60):
            if e[i] and t[j] > t[i]:
                den += 1
                num += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
    assert c_index(t, e, r) == pytest.approx(num / den)


def test_blocked_c_index_equals_dense_exactly(monkeypatch) -> None:
    """Large inputs use the blocked counter; it must give the same float as the n x n version (ties included)."""
    import sim.scoring as scoring
    rng = np.random.default_rng(1)
    cases = []
    for n in (1501, 2600, 4000):
        t = np.round(rng.exponential(50, n), 0)
        cases.append((t, rng.integers(0, 2, n), np.round(rng.standard_normal(n), 1)))
    fast = [c_index(*case) for case in cases]
    monkeypatch.setattr(scoring, "_DENSE_MAX", 10 ** 9)
    assert fast == [c_index(*case) for case in cases]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_renderers_carry_the_latent_signal() -> None:
    rng = np.random.default_rng(0)
    u = rng.standard_normal(200)
    imgs = render_images(u[:, None], SCANNERS["clean"], np.random.default_rng(1)).astype(float)
    lungs = imgs[:, 16:48, 8:56].mean(axis=(1, 2))
    assert _corr(lungs, u) > 0.5
    docs = render_ehr(u, np.zeros(200), 0, np.random.default_rng(2))
    hr_col = docs[0].splitlines()[0].split(",").index("Heart Rate")
    mean_hr = [np.mean([float(r.split(",")[hr_col]) for r in d.splitlines()[1:] if r.split(",")[hr_col]])
               for d in docs]
    assert _corr(np.array(mean_hr), u) > 0.7
    reports = render_reports(u[:, None], [1], 1, np.random.default_rng(3))
    negated = np.array(["no evidence of consolidation" in r for r in reports])
    assert u[negated].mean() < u[~negated].mean() - 1.0
