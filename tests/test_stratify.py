"""Risk groups, Kaplan–Meier, log-rank (against hand-computed values) and k-means clusters."""
import numpy as np
import pytest
from scipy.stats import chi2

from omnifuse_core.report.stratify import (cluster_embeddings, group_summary, kaplan_meier, logrank_test, risk_groups,
                                            stratify)


def test_kaplan_meier_hand_example():
    # t=1: 5 at risk, 1 event -> 0.8; t=2: 4 at risk (the censored one still counts), 1 event -> 0.6;
    # t=3: 2 at risk, 1 event -> 0.3; the censoring at t=4 does not step.
    t, s = kaplan_meier([1, 2, 2, 3, 4], [1, 1, 0, 1, 0])
    np.testing.assert_allclose(t, [0, 1, 2, 3])
    np.testing.assert_allclose(s, [1.0, 0.8, 0.6, 0.3])


def test_kaplan_meier_no_events_stays_at_one():
    t, s = kaplan_meier([5, 6, 7], [0, 0, 0])
    assert list(t) == [0.0] and list(s) == [1.0]


def test_logrank_two_groups_hand_example():
    # Group 0 dies at 1, 2, 3; group 1 at 4, 5, 6. By hand: E_0 = 3/6 + 2/5 + 1/4 = 1.15,
    # V = 1/4 + 6/25 + 3/16 = 0.6775, chi2 = (3 - 1.15)^2 / 0.6775 = 5.0517...
    time = np.array([1, 2, 3, 4, 5, 6])
    event = np.ones(6)
    groups = np.array([0, 0, 0, 1, 1, 1])
    res = logrank_test(time, event, groups)
    assert res["observed"] == [3.0, 3.0]
    np.testing.assert_allclose(res["expected"], [1.15, 4.85])
    np.testing.assert_allclose(res["statistic"], 1.85 ** 2 / 0.6775)
    assert res["dof"] == 1
    np.testing.assert_allclose(res["p_value"], chi2.sf(1.85 ** 2 / 0.6775, 1))
    assert res["p_value"] < 0.05


def test_logrank_identical_groups_is_not_significant():
    time = np.array([1, 1, 2, 2, 3, 3, 4, 4])
    event = np.array([1, 1, 0, 0, 1, 1, 1, 1])
    res = logrank_test(time, event, np.array([0, 1] * 4))
    assert res["statistic"] == pytest.approx(0.0, abs=1e-12)
    assert res["p_value"] == pytest.approx(1.0)


def test_logrank_three_groups_matches_two_group_formula_when_one_group_is_empty_of_events():
    rng = np.random.default_rng(0)
    time = rng.exponential(5, 60).round(1) + 0.1
    event = rng.random(60) < 0.7
    groups = np.repeat([0, 1, 2], 20)
    res = logrank_test(time, event, groups)
    assert res["dof"] == 2 and 0.0 <= res["p_value"] <= 1.0
    assert sum(res["observed"]) == pytest.approx(sum(res["expected"]))  # O and E sum to the total events


def test_risk_groups_tertiles_and_custom_cuts():
    risk = np.arange(9, dtype=float)
    groups, cuts = risk_groups(risk)
    assert list(groups) == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(cuts) == 2
    groups, cuts = risk_groups(risk, cuts=[4.0])
    assert list(groups) == [0, 0, 0, 0, 1, 1, 1, 1, 1] and cuts == [4.0]
    with pytest.raises(ValueError, match="increasing"):
        risk_groups(risk, cuts=[5.0, 2.0])


def test_group_summary_event_rates():
    summary = group_summary(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 1, 1, 1]))
    assert [s["event_rate"] for s in summary] == [0.5, 1.0]
    assert summary[1]["risk_min"] == 0.8 and summary[0]["n"] == 2


def test_stratify_survival_gives_km_and_logrank_and_binary_gives_rates():
    rng = np.random.default_rng(1)
    risk = rng.normal(size=30)
    time = np.exp(-risk) * 10  # higher risk -> earlier event
    labels = np.stack([time, np.ones(30)], axis=1)
    out = stratify("survival", risk, labels)
    assert set(out["km"]) == {0, 1, 2}
    assert out["logrank"]["p_value"] < 0.01  # perfectly ordered groups differ
    y = (risk > 0).astype(float)
    out = stratify("binary", 1 / (1 + np.exp(-risk)), y)
    rates = [s["event_rate"] for s in out["summary"]]
    assert rates[0] < rates[-1] and out["km"] is None
    assert stratify("multiclass", np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) is None


def test_kmeans_clusters_separate_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (10, 4)), rng.normal(5, 0.1, (10, 4))])
    labels = cluster_embeddings(x, k=2, seed=0)
    assert len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[0] != labels[10]
    with pytest.raises(ValueError, match="at least"):
        cluster_embeddings(x[:1], k=2)
