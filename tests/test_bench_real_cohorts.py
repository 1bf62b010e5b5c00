"""B9 (bench/real_cohorts.py): the 3-site layout is valid site data with the stated gaps and splits, the anchor
(elastic-net Cox) scores every test patient, and one repeat of the whole benchmark runs on a real cohort."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import real_cohorts as rc  # noqa: E402
from omnifuse_core.config import Config  # noqa: E402
from omnifuse_core.data import validate_site  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    t = rng.exponential(np.exp(-0.8 * x[:, 0] - 0.5 * x[:, 2]))
    c = rng.exponential(1.5, n)
    return pd.DataFrame({"age": x[:, 0], "sex": (x[:, 1] > 0).astype(float), "m1": x[:, 2], "m2": x[:, 3],
                         "time": np.minimum(t, c) + 0.01, "event": (t <= c).astype(int)})


def test_layout_is_valid_site_data_with_the_stated_gaps(tmp_path):
    df = _frame()
    fed = rc.layout(df, ["age", "sex"], ["m1", "m2"], tmp_path / "fed", seed=3)
    cfg = Config.load("small-cohort").replace(modalities="clinical,markers")
    sizes = {}
    for site, _ in rc.SITES:
        report = validate_site(fed / site, cfg)
        assert not report.problems, report.problems
        cohort = pd.read_csv(fed / site / "cohort.csv")
        sizes[site] = len(cohort)
        assert set(cohort["split"]) == {"train", "val", "test"}
        if site == "site_c":
            assert "m1" not in cohort.columns
        else:
            gone = cohort[["m1", "m2"]].isna().all(axis=1).mean()
            assert 0.08 < gone < 0.35  # 20 % lack the markers modality
    assert sum(sizes.values()) == len(df) and sizes["site_a"] > sizes["site_c"]
    again = rc.layout(df, ["age", "sex"], ["m1", "m2"], tmp_path / "again", seed=3)
    assert (again / "site_a" / "cohort.csv").read_text() == (fed / "site_a" / "cohort.csv").read_text()


def test_coxnet_anchor_scores_every_test_patient_and_learns(tmp_path):
    pytest.importorskip("sksurv")
    df = _frame(600)
    fed = rc.layout(df, ["age", "sex"], ["m1", "m2"], tmp_path / "fed", seed=0)
    out = rc.coxnet(fed, ["age", "sex"], ["m1", "m2"])
    n_test = sum((pd.read_csv(fed / s / "cohort.csv")["split"] == "test").sum() for s, _ in rc.SITES)
    assert sum(len(r) for _, r in out.values()) == n_test
    c = rc.c_scores(out)
    assert c["c_pooled"] > 0.6 and c["c_strat"] > 0.6  # the simulated risk is linear in age and m1


def test_one_repeat_on_a_real_cohort(tmp_path):
    pytest.importorskip("sksurv")
    pytest.importorskip("lifelines")
    out = tmp_path / "rc.json"
    rc.main(["--cohorts", "lung", "--repeats", "2", "--seeds", "1", "--configs", "small-cohort+rounds=2",
             "--work", str(tmp_path / "w"), "--out", str(out)])
    res = json.loads(out.read_text())
    entry = res["summary"]["lung"]
    assert entry["repeats"] == 2
    arms = entry["mean"]
    assert set(arms) == {"coxnet", "coxnet-complete", "fed/small-cohort+rounds=2", "cent/small-cohort+rounds=2"}
    assert all(0 <= v["c_pooled"] <= 1 and 0 <= v["c_strat"] <= 1 for v in arms.values())
    mean, lo, hi = entry["diff"]["fed/small-cohort+rounds=2 - coxnet (c_pooled)"]
    assert lo <= mean <= hi
    assert "| coxnet |" in out.with_suffix(".md").read_text()
