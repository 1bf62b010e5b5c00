"""Pooled AUROC from the sites' binned score counts: equal to scikit-learn's within the stated binning bound, exact
when no bin holds both classes, additive across sites, and a bootstrap interval that covers it."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from grid_fakes import DirectGrid, task_identity  # noqa: F401 (autouse fixture: messages outside a runtime)
from omnifuse_core.pooled import (add_histograms, binned_auroc, binning_error_bound, pooled_metrics,
                                  score_histogram)


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
    final = json.loads((tmp_path / "fl" / "metrics.json").read_text())["final"]
    pooled = final["pooled_binned"]
    assert pooled["n"] == final["global"]["n"] and pooled["bins"] == 1000
    assert pooled["auroc_ci_low"] <= pooled["auroc"] <= pooled["auroc_ci_high"]
    assert all("hist.pos" not in site for site in final["sites"].values())  # counts are not stored per site

    result = CliRunner().invoke(cli, ["-q", "train", "--mode", "centralized", "--config", "smoke", "--data", str(fed),
                                      "--out", str(tmp_path / "c"), "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    final = json.loads((tmp_path / "c" / "metrics.json").read_text())["final"]
    binned, exact = final["pooled_binned"], final["pooled"]
    assert abs(binned["auroc"] - exact["auroc"]) <= binned["auroc_binning_error_max"] + 1e-9
    result = CliRunner().invoke(cli, ["-q", "report", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "pooled (all test patients, from binned counts)" in (tmp_path / "c" / "model_card.md").read_text()
    assert "test patients pooled, 1000 score bins" in (tmp_path / "c" / "report.html").read_text()
