"""Pooled AUROC from the sites' binned score counts: equal to scikit-learn's within the stated binning bound, exact
when no bin holds both classes, additive across sites, and a bootstrap interval that covers it."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture: messages outside a runtime)
from omnifuse_core.metrics import concordance_index
from omnifuse_core.pooled import (add_histograms, binned_auroc, binning_error_bound, concordance_counts,
                                  pooled_concordance, pooled_metrics, score_histogram)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 300), bins=st.sampled_from([10, 100, 1000]), seed=st.integers(0, 10_000))
def test_binned_auroc_is_within_its_bound_of_the_exact_one(n, bins, seed):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    if y.all() or not y.any():
        y[0], y[-1] = True, False
    s = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    pos, neg = (np.asarray(h) for h in score_histogram(y, s, bins))
    exact = roc_auc_score(y, s)
    assert abs(binned_auroc(pos, neg) - exact) <= binning_error_bound(pos, neg) + 1e-9


def test_exact_when_no_bin_holds_both_classes_and_additive_over_sites():
    y = np.array([0, 0, 1, 0, 1, 1])
    s = np.array([0.05, 0.15, 0.25, 0.35, 0.75, 0.95])
    one = score_histogram(y, s, 10)
    assert binning_error_bound(*map(np.asarray, one)) == 0
    assert binned_auroc(*map(np.asarray, one)) == pytest.approx(roc_auc_score(y, s))
    a, b = score_histogram(y[:3], s[:3], 10), score_histogram(y[3:], s[3:], 10)
    pos, neg = add_histograms([a, b])
    assert pos.tolist() == one[0] and neg.tolist() == one[1]
    with pytest.raises(ValueError, match="different bin counts"):
        add_histograms([a, score_histogram(y, s, 20)])


def test_pooled_metrics_interval_covers_the_estimate():
    rng = np.random.default_rng(0)
    sites = []
    for n in (120, 80, 40):
        y = rng.random(n) < 0.25
        sites.append(score_histogram(y, np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1)))
    m = pooled_metrics(sites, reps=300)
    assert m["n"] == 240 and m["auroc_ci_low"] < m["auroc"] < m["auroc_ci_high"]
    assert 0 <= m["auroc_binning_error_max"] < 0.01
    assert np.isnan(pooled_metrics([score_histogram([0, 0], [0.1, 0.2])])["auroc"])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), seed=st.integers(0, 10_000))
def test_concordance_counts_give_harrells_c_and_add_across_sites(n, seed):
    rng = np.random.default_rng(seed)
    t, e = rng.integers(1, 10, n).astype(float), rng.random(n) < 0.6
    r = np.round(rng.normal(size=n) - 0.1 * t, 1)  # rounded: ties in risk and time occur
    num, den = concordance_counts(t, e, r)
    exact = concordance_index(t, e, r)
    assert (den[0] == 0 and np.isnan(exact)) or num[0] / den[0] == pytest.approx(exact)
    k = n // 2  # two "sites": the pooled C is the within-site pairs added (stratified by site)
    a, b = concordance_counts(t[:k], e[:k], r[:k]), concordance_counts(t[k:], e[k:], r[k:])
    pooled = pooled_concordance([a, b])
    total = a[1][0] + b[1][0]
    assert pooled["comparable_pairs"] == total
    if total:
        assert pooled["c_index"] == pytest.approx((a[0][0] + b[0][0]) / total)


def test_site_stratified_bootstrap_interval():
    rng = np.random.default_rng(1)
    sites = []
    for k, n in enumerate((150, 90, 40)):
        t = rng.exponential(5, n)
        e = rng.random(n) < 0.7
        sites.append(concordance_counts(t, e, -t + rng.normal(0, 3, n), reps=200, seed=k))
    m = pooled_concordance(sites)
    assert m["bootstrap_reps"] == 200 and m["c_index_ci_low"] < m["c_index"] < m["c_index_ci_high"]
    assert 0.6 < m["c_index"] < 0.95 and m["c_index_ci_high"] - m["c_index_ci_low"] < 0.2
    assert concordance_counts(*(np.arange(3.0),) * 3, reps=5, seed=3) == concordance_counts(
        *(np.arange(3.0),) * 3, reps=5, seed=3)  # a site's replicates are reproducible
    with pytest.raises(ValueError, match="one bootstrap-reps"):
        pooled_concordance([sites[0], concordance_counts([1.0], [1], [0.0], reps=3)])


def test_federated_and_reference_runs_record_the_pooled_binned_auroc(tmp_path):
    """A Flower-loop run (in-process grid) and a centralized run write final.pooled_binned: the binned AUROC with
    its interval, from counts only; in the centralized run it matches the exact pooled AUROC within its bound."""
    import json

    from click.testing import CliRunner

    from client.app import app as client_app
    from omnifuse_cli.main import cli
    from omnifuse_core.config import Config
    from server.loop import run_federation
    from sim.generator import generate_federation

    class Grid(DirectGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [client_app(m, self.nodes[m.metadata.dst_node_id]) for m in messages]

    fed = generate_federation("smoke", 3, tmp_path / "fed", seed=0)
    cfg = Config.load("smoke").replace(data_root=str(fed), run_dir=str(tmp_path / "fl"), min_sites=3, rounds=1)
    run_federation(Grid(3), cfg)
    metrics = json.loads((tmp_path / "fl" / "metrics.json").read_text())
    final = metrics["final"]
    # the decision threshold: chosen by the server on the validation counts of the tested round, used by every site
    assert final["threshold"]["value"] == metrics["rounds"][0]["threshold"]
    assert final["threshold"]["from"] == "validation of round 1" and final["threshold"]["rule"] == "youden"
    assert all(site["threshold"] == final["threshold"]["value"] for site in final["sites"].values())
    pooled = final["pooled_binned"]
    assert pooled["n"] == final["global"]["n"] and pooled["bins"] == 1000
    assert pooled["auroc_ci_low"] <= pooled["auroc"] <= pooled["auroc_ci_high"]
    assert all("hist.pos" not in site for site in final["sites"].values())  # counts are not stored per site
    from omnifuse_core.report import write_report
    html = write_report(tmp_path / "fl").read_text()
    assert "median seconds per stage of each site" in html and "How to read this" in html

    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", "centralized", "--config", "smoke", "--data", str(fed),
                                      "--out", str(tmp_path / "c"), "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "c" / "metrics.json").read_text())["final"]
    binned, exact = final["pooled_binned"], final["pooled"]
    assert abs(binned["auroc"] - exact["auroc"]) <= binned["auroc_binning_error_max"] + 1e-9
    result = CliRunner().invoke(cli, ["-q", "report", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "pooled (all test patients, from binned counts)" in (tmp_path / "c" / "model_card.md").read_text()
    assert "test patients pooled, 1000 score bins" in (tmp_path / "c" / "report.html").read_text()


def test_survival_runs_record_the_site_stratified_pooled_c_index(tmp_path):
    """Federated (in-process grid) and local runs on a survival task write final.pooled_stratified: the C-index
    of every site's test pairs added, with a site-stratified bootstrap interval."""
    import json

    from click.testing import CliRunner

    from client.app import app as client_app
    from omnifuse_cli.main import cli
    from omnifuse_core.config import Config
    from server.loop import run_federation
    from sim.generator import generate_federation

    class Grid(DirectGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [client_app(m, self.nodes[m.metadata.dst_node_id]) for m in messages]

    fed = generate_federation("smoke", 2, tmp_path / "fed", seed=0)
    cfg = Config.load("smoke").replace(data_root=str(fed), run_dir=str(tmp_path / "fl"), min_sites=2, rounds=1,
                                       task="survival", bootstrap_reps=50)
    run_federation(Grid(2), cfg)
    final = json.loads((tmp_path / "fl" / "metrics.json").read_text())["final"]
    ps = final["pooled_stratified"]
    assert ps["bootstrap_reps"] == 50 and ps["stratified_by"] == "site" and ps["comparable_pairs"] > 0
    assert ps["c_index_ci_low"] <= ps["c_index"] <= ps["c_index_ci_high"]
    assert "pooled_binned" not in final and all("conc.num" not in v for v in final["sites"].values())

    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", "local", "--config", "smoke", "--data", str(fed),
                                      "--out", str(tmp_path / "l"), "--set", "rounds=1", "--set", "task=survival"])
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "l" / "metrics.json").read_text())["final"]
    assert final["pooled_stratified"]["bootstrap_reps"] == 200
    per_site = [v["c_index"] for v in final["sites"].values() if np.isfinite(v["c_index"])]
    assert min(per_site) - 1e-9 <= final["pooled_stratified"]["c_index"] <= max(per_site) + 1e-9  # a pair-weighted mean
