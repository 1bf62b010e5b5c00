"""Federated statistics: combined mean/std equal the pooled ones; survival edges; only aggregates are sent."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures.data.site_factory import GENES, make_site
from omnifuse_core.config import Config
from omnifuse_core.data import mimic_schema as S
from omnifuse_core.data.scan import scan_site
from omnifuse_core.data.stats import SURVIVAL_GRID, combine_stats, mean_std, site_stats, survival_bin_edges

CFG = Config().replace(modalities="ehr,genomics", task="survival")


def _train_values(site, name, cols):
    scan = scan_site(site, CFG)
    rows = scan.usable_rows() & (scan.cohort.split == "train") & scan.data[name].present
    return scan.data[name].values[rows][..., cols].reshape(-1, len(cols)).astype(np.float64)


def test_combined_equals_pooled(tmp_path):
    sites = [make_site(tmp_path, 8, name="a", seed=1), make_site(tmp_path, 16, name="b", seed=2),
             make_site(tmp_path, 8, name="c", seed=3, missing={"ehr": [0, 1, 2]})]
    combined = combine_stats([site_stats(s, CFG) for s in sites])
    pooled = np.concatenate([_train_values(s, "ehr", S.CONTINUOUS_COLUMNS) for s in sites])
    mean, std = mean_std(combined["features"]["ehr"])
    assert np.allclose(mean, pooled.mean(0)) and np.allclose(std, np.where(pooled.std(0) < 1e-6, 1, pooled.std(0)))
    genes = np.concatenate([_train_values(s, "genomics", list(range(len(GENES)))) for s in sites])
    gm, gs = mean_std(combined["features"]["genomics"])
    assert np.allclose(gm, genes.mean(0)) and np.allclose(gs, genes.std(0))
    assert combined["sites"] == 3 and combined["n_train"] == 6 + 12 + 6


def test_stats_hold_only_aggregates(tmp_path):
    small, big = make_site(tmp_path, 8, name="a"), make_site(tmp_path, 24, name="b")
    s1, s2 = site_stats(small, CFG), site_stats(big, CFG)
    assert len(json.dumps(s1)) == pytest.approx(len(json.dumps(s2)), rel=0.1)  # size independent of patients
    assert set(s1) == {"format", "sites", "n_train", "features", "survival"}
    assert all(set(v) == {"names", "sum", "sumsq", "count"} for v in s1["features"].values())


def test_gene_union_and_alignment():
    a = {"format": "omnifuse-stats/1", "features": {"g": {"names": ["B", "A"], "sum": [2, 4], "sumsq": [4, 16],
                                                         "count": [1, 1]}}}
    b = {"format": "omnifuse-stats/1", "features": {"g": {"names": ["C", "A"], "sum": [3, 6], "sumsq": [9, 36],
                                                         "count": [1, 1]}}}
    c = combine_stats([a, b])["features"]["g"]
    assert c["names"] == ["A", "B", "C"] and c["sum"] == [10, 2, 3] and c["count"] == [2, 1, 1]
    with pytest.raises(ValueError, match="format"):
        combine_stats([{"format": "other"}])


def test_survival_edges_close_to_quantiles():
    rng = np.random.default_rng(0)
    times = rng.exponential(30.0, 500)
    parts = []
    for chunk in np.array_split(times, 3):
        hist = np.bincount(np.searchsorted(SURVIVAL_GRID, chunk, side="right"), minlength=len(SURVIVAL_GRID) + 1)
        parts.append({"format": "omnifuse-stats/1", "features": {}, "survival": {"hist": hist.tolist()}})
    edges = survival_bin_edges(combine_stats(parts), 4)
    assert np.allclose(edges, np.quantile(times, [0.25, 0.5, 0.75]), rtol=0.05)
    assert survival_bin_edges({"survival_bin_edges": [1, 2, 3]}, 4) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="uncensored"):
        survival_bin_edges({"survival": {"hist": [0] * 402}}, 4)
