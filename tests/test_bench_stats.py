"""The benchmarks' statistics: mean ± std, paired t-test, targets, the rank AUROC against scikit-learn, and the
two-level paired bootstrap of AUROC differences (identical arms, a clearly better arm, determinism)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def test_statistics_helpers():
    from scipy import stats

    from bench.stats import mean_std, paired_test, target

    ms = mean_std([1.0, 2.0, 3.0, float("nan"), None])
    assert (ms["mean"], ms["std"], ms["n"]) == (2.0, 1.0, 3)
    a, b = [0.8, 0.7, 0.9, 0.85], [0.7, 0.69, 0.8, 0.8]
    t = paired_test(a, b)
    assert t["pairs"] == 4 and t["mean_diff"] == pytest.approx(0.065)
    assert t["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_test([0.5], [0.4])["t_p"] is None
    assert target("x", 1.1, 1.2, "<=")["met"] is True and target("x", 0.0, 0.0, ">")["met"] is False
    assert target("x", None, 1.0)["met"] is None


def test_auroc_rows_equal_sklearn():
    from sklearn.metrics import roc_auc_score

    from bench.bootstrap import auroc_rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # many ties
    idx = rng.integers(0, 40, size=(50, 40))
    got = auroc_rows(y, s, idx)
    for row, value in zip(idx, got):
        if len(set(y[row])) == 2:
            assert value == pytest.approx(roc_auc_score(y[row], s[row]), abs=1e-12)
        else:
            assert np.isnan(value)


def _arm(labels, signal: float, seed: int) -> list:
    """Scores of 3 data seeds x 3 model seeds for two sites: ``signal`` x label plus noise."""
    rng = np.random.default_rng(seed)
    return [[{s: signal * y + rng.normal(size=len(y)) for s, y in lab.items()} for _ in range(3)] for lab in labels]


def test_paired_bootstrap():
    from bench.bootstrap import paired_bootstrap

    rng = np.random.default_rng(1)
    labels = [{"a": rng.integers(0, 2, 60), "b": rng.integers(0, 2, 40)} for _ in range(3)]
    weak, strong = _arm(labels, 0.2, 2), _arm(labels, 2.5, 3)
    same = paired_bootstrap(weak, weak, labels, reps=500, seed=0)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)  # identical arms: the interval is [0, 0]
    better = paired_bootstrap(strong, weak, labels, reps=500, seed=0)
    assert better["lo"] > 0 and better["hi"] > better["diff"] > better["lo"] and better["runs"] == 9
    again = paired_bootstrap(strong, weak, labels, reps=500, seed=0)
    assert (again["lo"], again["hi"]) == (better["lo"], better["hi"])  # deterministic with a seed
    other = paired_bootstrap(strong, weak, labels, reps=500, seed=1)
    assert (other["lo"], other["hi"]) != (better["lo"], better["hi"])
    worse = paired_bootstrap(weak, strong, labels, reps=500, seed=0)
    assert worse["hi"] < 0 and worse["diff"] == pytest.approx(-better["diff"])
    with pytest.raises(ValueError):
        paired_bootstrap(strong, weak[:2], labels, reps=10)


def test_compare_pairs_runs_by_seeds():
    """``bench.stats.compare``: paired t-test over runs and the bootstrap, pairing runs by (data seed, model seed)."""
    from bench.stats import compare, excludes_zero, fdiff

    rng = np.random.default_rng(4)
    labels = [{"s": rng.integers(0, 2, 50)} for _ in range(2)]

    def runs(signal: float, seed: int) -> list:
        out = []
        for d, arms in enumerate(_arm(labels, signal, seed)):
            for m, scores in enumerate(arms):
                auc = float(np.mean([(scores["s"][labels[d]["s"] == 1][:, None]
                                      > scores["s"][labels[d]["s"] == 0][None, :]).mean()]))
                out.append({"data_seed": d, "seed": m, "auroc": auc, "sites": {"s": auc}, "scores": scores,
                            "labels": labels[d], "ids": {"s": "x"}})
        return out

    a, b = runs(3.0, 5), runs(0.0, 6)
    c = compare(a, list(reversed(b)), reps=300)
    assert c["pairs"] == 6 and c["mean_diff"] == pytest.approx(c["bootstrap"]["diff"])
    assert excludes_zero(c) is True and fdiff(c).startswith("+") and "[" in fdiff(c)
    assert compare(a, b, site="s", reps=300)["lo"] == c["lo"]
    no_scores = compare([{**r, "scores": None} for r in a], b)
    assert no_scores["lo"] is None and excludes_zero(no_scores) is None and no_scores["pairs"] == 6
