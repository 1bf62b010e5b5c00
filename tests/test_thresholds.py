"""The binary decision threshold: chosen on validation counts (Youden's J / max F1 / fixed) equal to the brute-force
optimum over the bin edges, decision metrics at it match scikit-learn, and runs record and use it."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import confusion_matrix, f1_score

from omnifuse_core.config import Config, ConfigError
from omnifuse_core.metrics import compute_metrics, threshold_metrics
from omnifuse_core.pooled import score_histogram
from omnifuse_core.thresholds import choose_threshold


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 200), bins=st.sampled_from([10, 50]), seed=st.integers(0, 10_000),
       rule=st.sampled_from(["youden", "max-f1"]))
def test_choice_is_the_best_bin_edge(n, bins, seed, rule):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(int)
    y[0], y[-1] = 1, 0
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    t = choose_threshold(*score_histogram(y, s, bins), rule)

    def value(th):
        m = threshold_metrics(y, s, th)
        return m["sensitivity"] + m["specificity"] - 1 if rule == "youden" else np.nan_to_num(m["f1"])
    edges = [k / bins for k in range(bins + 1)]
    best = max(value(e) for e in edges)
    # the binned choice is optimal among bin edges (scores equal to an edge sit in the bin above it)
    assert value(t) == pytest.approx(best, abs=1e-9)


def test_fixed_rule_and_degenerate_validation_use_the_config_threshold():
    pos, neg = score_histogram([0, 1, 1], [0.1, 0.8, 0.9], 10)
    assert choose_threshold(pos, neg, "fixed", 0.3) == 0.3
    assert choose_threshold(*score_histogram([0, 0], [0.1, 0.8], 10), "youden", 0.4) == 0.4
    with pytest.raises(ValueError, match="threshold-rule"):
        choose_threshold(pos, neg, "best")
    with pytest.raises(ConfigError, match="'threshold' must lie in"):
        Config().replace(threshold=1.0)


def test_decision_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.16).astype(int)
    s = np.clip(rng.normal(0.15 + 0.2 * y, 0.1), 0, 1)
    m = compute_metrics("binary", y, s, threshold=0.22)
    tn, fp, fn, tp = confusion_matrix(y, s >= 0.22).ravel()
    assert m["threshold"] == 0.22 and m["f1"] == pytest.approx(f1_score(y, s >= 0.22))
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["ppv"] == pytest.approx(tp / (tp + fp)) and m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["accuracy"] == pytest.approx((tp + tn) / 300)
    assert np.isnan(threshold_metrics(np.zeros(3, int), np.zeros(3), 0.5)["sensitivity"])


def test_centralized_run_tests_at_the_validation_threshold(smoke_federation, tmp_path):
    from click.testing import CliRunner

    from omnifuse_cli.main import cli

    out = tmp_path / "c"
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", "centralized", "--config", "smoke",
                                      "--data", str(smoke_federation), "--out", str(out), "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    final = json.loads((out / "metrics.json").read_text())["final"]
    t = final["threshold"]
    assert t["rule"] == "youden" and t["from"] == "pooled validation split" and 0 <= t["value"] <= 1
    assert all(site["threshold"] == t["value"] for site in final["sites"].values())
    assert final["pooled"]["threshold"] == t["value"] and "sensitivity" in final["pooled"]
