"""The `reliability` preset: unequal sites, per-patient reliability, an image x genomics interaction, and an oracle
in which all modalities clearly beat the dominant EHR. Also: the older presets generate exactly what they did."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cohort import simulate_federation
from sim.ehr import render_ehr
from sim.generator import generate_federation
from sim.images import corrupt_images, render_images
from sim.latent import risk_predictor, sigmoid, stratified_split
from sim.oracle import SUBSET_SOURCES, _expected_sigmoid_interaction, compute_oracle, posterior, risks
from sim.presets import MODALITIES, SCANNERS, Interaction, Reliability, get_preset

WEAK = ("image", "text", "genomics")


def _small(patients: int = 400, **changes):
    """The reliability preset with ``patients`` per site (same latent model, fast)."""
    p = get_preset("reliability")
    return dataclasses.replace(p, sites=tuple(dataclasses.replace(s, patients=patients) for s in p.sites), **changes)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 for a constant input (no information)."""
    if np.std(a) < 1e-12 or np.std(b) < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def test_sites_are_unequal_and_some_are_small() -> None:
    p = get_preset("reliability")
    sizes = [s.patients for s in p.sites]
    assert 4 <= p.default_sites <= 5 and sum(sizes) >= 3 * 2400 and max(sizes) >= 10 * min(sizes)
    rng = np.random.default_rng(0)
    n_train = [int((stratified_split(rng.integers(0, 2, n), rng) == "train").sum()) for n in sizes]
    assert sum(t <= 150 for t in n_train) >= 2, n_train


def test_per_patient_flags_and_artifacts_carry_no_signal() -> None:
    cohorts = simulate_federation(_small(1000), None, seed=0)
    c = cohorts[0]
    art, sparse = c.unreliable["image"], c.unreliable["ehr"]
    assert art.shape == sparse.shape == (c.n,)
    assert 0.2 < art.mean() < 0.3 and 0.25 < sparse.mean() < 0.35
    for c in cohorts:  # per patient, not per site: every site has both reliable and unreliable patients
        assert 0 < c.unreliable["image"].mean() < 1 and 0 < c.unreliable["ehr"].mean() < 1
    z1 = np.concatenate([c.z[:, 1] for c in cohorts])
    u = np.concatenate([c.signals["image"][:, 0] for c in cohorts])
    a = np.concatenate([c.unreliable["image"] for c in cohorts])
    assert abs(_corr(u[a], z1[a])) < 0.08 and _corr(u[~a], z1[~a]) > 0.9
    # sparse EHR stays: noisier acuity signal (noise sd x 4) but still some signal
    z0 = np.concatenate([c.z[:, 0] for c in cohorts])
    e = np.concatenate([c.signals["ehr"][:, 0] for c in cohorts])
    s = np.concatenate([c.unreliable["ehr"] for c in cohorts])
    assert 0.4 < _corr(e[s], z0[s]) < _corr(e[~s], z0[~s]) - 0.2
    # the oracle knows: an artifact image adds nothing to the image-only posterior (prior variance 1)
    use = np.zeros((c.n, len(MODALITIES)), bool)
    use[:, MODALITIES.index("image")] = True
    _, var = posterior(c, use)
    assert np.allclose(var[c.unreliable["image"], 1], 1.0) and (var[~c.unreliable["image"], 1] < 0.1).all()
    assert np.isinf(c.patient_sd("image")[c.unreliable["image"]]).all()


def test_artifact_images_are_recognizable_and_carry_no_signal() -> None:
    rng = np.random.default_rng(0)
    z1 = rng.standard_normal(300)
    clean = render_images(z1[:, None] + 0.3 * rng.standard_normal((300, 1)), SCANNERS["clean"],
                          np.random.default_rng(1))
    noise_signal = rng.standard_normal((300, 1)) * math.sqrt(1 + 0.3 ** 2)  # what the cohort gives artifacts
    bad = corrupt_images(render_images(noise_signal, SCANNERS["clean"], np.random.default_rng(2)),
                         np.random.default_rng(3))
    assert bad.shape == (300, 64, 64) and bad.dtype == np.uint8
    lungs = lambda im: im[:, 16:48, 8:56].astype(float).mean(axis=(1, 2))  # noqa: E731
    assert _corr(lungs(clean), z1) > 0.5 and abs(_corr(lungs(bad), z1)) < 0.15
    rough = lambda im: np.abs(np.diff(im.astype(float), axis=2)).mean(axis=(1, 2))  # noqa: E731 - pixel noise
    assert rough(bad).min() > rough(clean).max(), "artifacts must be recognizable from the pixels"


def test_sparse_ehr_stays_are_short() -> None:
    u = np.random.default_rng(0).standard_normal(60)
    sparse = np.arange(60) % 3 == 0
    docs = render_ehr(u, np.zeros(60), 0, np.random.default_rng(1), sparse=sparse)
    rows = np.array([len(d.splitlines()) - 1 for d in docs])
    assert (rows[sparse] >= 3).all() and (rows[sparse] <= 8).all() and (rows[~sparse] >= 12).all()


def test_interaction_term_in_labels_and_oracle() -> None:
    p = _small(600, oracle_subsets=True)
    assert p.interaction == Interaction(a=1, b=2, gamma=4.0)
    assert [m for m in MODALITIES if 1 in p.signals[m]] == ["image"]
    assert [m for m in MODALITIES if 2 in p.signals[m]] == ["genomics"]
    cohorts = simulate_federation(p, None, seed=0)
    c = cohorts[0]
    w = np.asarray(p.mortality_weights)
    eta = c.z @ w + 4.0 * c.z[:, 1] * c.z[:, 2]
    assert np.allclose(c.labels.true_survival_risk, eta) and np.allclose(risk_predictor(c.z, w, p.interaction), eta)
    assert np.allclose(c.labels.true_mortality, sigmoid(c.labels.mortality_intercept + eta))
    # neither modality alone recovers the product; the pair does
    prod = np.concatenate([x.z[:, 1] * x.z[:, 2] for x in cohorts])

    def score(mods):
        out = []
        for x in cohorts:
            use = np.zeros((x.n, len(MODALITIES)), bool)
            use[:, [MODALITIES.index(m) for m in mods]] = True
            mean, _ = posterior(x, use)
            out.append(mean[:, 1] * mean[:, 2])
        return np.concatenate(out)

    assert abs(_corr(score(["image"]), prod)) < 0.1 and abs(_corr(score(["genomics"]), prod)) < 0.1
    assert _corr(score(["image", "genomics"]), prod) > 0.6
    g = compute_oracle(p, cohorts, seed=0)["global"]["all"]
    auc = {s: g[s]["binary"]["auroc"] for s in ("image", "genomics", "image+genomics")}
    assert auc["image+genomics"] > max(auc["image"], auc["genomics"]) + 0.08, auc


def test_interaction_quadrature_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    mean, var = rng.standard_normal((4, 4)), rng.uniform(0.1, 1.0, (4, 4))
    w, it = np.array([2.7, 0.8, 0.6, 1.4]), Interaction(1, 2, 4.0)
    quad = _expected_sigmoid_interaction(-1.5, mean, var, w, it)
    z = mean[:, None, :] + np.sqrt(var)[:, None, :] * rng.standard_normal((4, 200_000, 4))
    mc = sigmoid(-1.5 + z @ w + 4.0 * z[..., 1] * z[..., 2]).mean(axis=1)
    assert np.allclose(quad, mc, atol=0.004)
    # without the interaction both oracles agree
    c = simulate_federation("laziness", 1, seed=0)[0]
    use = np.ones((c.n, len(MODALITIES)), bool)
    a = risks(c, np.asarray([1.6, 1.0, 1.0, 1.0]), use)
    b = risks(c, np.asarray([1.6, 1.0, 1.0, 1.0]), use, Interaction(1, 2, 0.0))
    assert np.allclose(a["binary"], b["binary"], atol=1e-6) and np.allclose(a["survival"], b["survival"])


def test_reliability_oracle_targets() -> None:
    """Full-size cohorts, oracle without the pair / triple sources (the 17-source file is measured in the docs)."""
    p = dataclasses.replace(get_preset("reliability"), oracle_subsets=False)
    cohorts = simulate_federation(p, None, seed=0)
    assert sum(c.n for c in cohorts) == 7390
    g = compute_oracle(p, cohorts, seed=0)["global"]["all"]
    auc = {s: g[s]["binary"]["auroc"] for s in ("true", "all", "observed", *MODALITIES)}
    assert auc["all"] >= auc["ehr"] + 0.15, auc
    assert auc["ehr"] >= max(auc[m] for m in WEAK) + 0.05, auc
    assert auc["observed"] >= auc["ehr"] + 0.08, auc


def test_reliability_federation_on_disk(tmp_path: Path) -> None:
    p = _small(40)
    out = generate_federation(p, None, tmp_path / "rel", seed=1)
    fed = yaml.safe_load((out / "federation.yaml").read_text())
    assert fed["preset"] == "reliability" and len(fed["sites"]) == 5 and fed["reliability"] == "reliability.csv"
    oracle = json.loads((out / "oracle.json").read_text())
    assert oracle["sources"][-len(SUBSET_SOURCES):] == list(SUBSET_SOURCES) and "image+genomics" in SUBSET_SOURCES
    assert oracle["design"]["interaction"]["observed_by"] == {"1": ["image"], "2": ["genomics"]}
    rel = oracle["design"]["reliability"]
    assert rel["image"]["no_signal"] and rel["image"]["kind"] == "artifact" and rel["ehr"]["noise_scale"] == 4.0
    assert 0 < rel["image"]["unreliable_fraction_of_present"] < 1 and set(rel["ehr"]["per_site"]) == set(fed["sites"])
    with open(out / "reliability.csv", newline="") as fh:
        flags = list(csv.DictReader(fh))
    assert len(flags) == 200 and set(flags[0]) == {"site", "patient_id", "ehr", "image"}
    site = out / "hospital_a"
    with open(site / "cohort.csv", newline="") as fh:
        cohort = {r["patient_id"]: r for r in csv.DictReader(fh)}
    for f in (f for f in flags if f["site"] == "hospital_a"):
        assert (f["image"] == "") == (cohort[f["patient_id"]]["image"] == "")
        rows = len((site / cohort[f["patient_id"]]["ehr"]).read_text().splitlines()) - 1
        assert (rows <= 8) == (f["ehr"] == "1")
    validate = pytest.importorskip("omnifuse_core.data.validate").validate_site
    report = validate(site)
    assert report.ok, report.format()
    # overwriting with an older preset removes the reliability file
    generate_federation("smoke", 1, out, seed=0, overwrite=True)
    assert not (out / "reliability.csv").exists()


def test_reliability_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="reliability of text"):
        simulate_federation(_small(20, reliability={"text": Reliability(0.2, math.inf, "artifact")}), 1, seed=0)
    with pytest.raises(ValueError, match="reliability of ehr"):
        simulate_federation(_small(20, reliability={"ehr": Reliability(1.5, 2.0, "sparse")}), 1, seed=0)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


def test_older_presets_are_unchanged(tmp_path: Path) -> None:
    """Every file of `omnifuse synth --preset smoke --seed 0` (3 sites) as generated before the reliability preset
    existed, and laziness's oracle values then. A numpy / Pillow upgrade may legitimately change the digest: then
    regenerate it with the commit before the change and compare."""
    # a fresh copy: the session's shared smoke federation gains caches (text embeddings, site state) as tests run
    fresh = generate_federation("smoke", 3, tmp_path / "fed", seed=0)
    assert _digest(fresh) == "665bfdbf917fba0f9110e10b9efbd22f8774643ab28123308aab863627f1fcac"
    p = get_preset("laziness")
    assert p.interaction is None and not p.reliability and not p.oracle_subsets
    oracle = compute_oracle(p, simulate_federation(p, None, seed=0), seed=0)
    assert "design" not in oracle and oracle["sources"] == ["true", "all", "observed", *MODALITIES]
    g = oracle["global"]["all"]
    got = {s: (g[s]["binary"]["auroc"], g[s]["survival"]["c_index"]) for s in oracle["sources"]}
    assert got == {"true": (0.8935, 0.8679), "all": (0.8637, 0.8297), "observed": (0.8371, 0.7988),
                   "ehr": (0.7688, 0.7217), "image": (0.6028, 0.5914), "text": (0.6796, 0.657),
                   "genomics": (0.6343, 0.6375)}
