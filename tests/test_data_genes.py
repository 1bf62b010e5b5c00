"""Gene policy (issue 15 a/b): the shared list is the union or the intersection of the sites' genes; each site's
missing and extra genes are named in a logged note; a site below genomics-min-overlap is a problem; empty
expression cells are counted where they are filled."""
import logging

import numpy as np
import pandas as pd
import pytest

from fixtures.data.site_factory import GENES, make_site
from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.data.stats import combine_stats, site_stats
from omnifuse_core.data.validate import validate_site

CFG = Config().replace(modalities="ehr,genomics")


def _stats(names, sums):
    return {"format": "omnifuse-stats/1", "features": {"g": {"names": names, "sum": sums, "sumsq": sums,
                                                            "count": [1] * len(names)}}}


def test_intersection_keeps_only_the_genes_every_site_has():
    a, b = _stats(["B", "A"], [2, 4]), _stats(["C", "A"], [3, 6])
    assert combine_stats([a, b])["features"]["g"]["names"] == ["A", "B", "C"]
    inter = combine_stats([a, b], gene_policy="intersection")["features"]["g"]
    assert inter["names"] == ["A"] and inter["sum"] == [10] and inter["count"] == [2]
    with pytest.raises(ValueError, match="genomics-gene-policy 'some' unknown"):
        combine_stats([a, b], gene_policy="some")


def _edit_genes(site, drop=(), add=(), blank=()):
    path = site / "genomics.csv"
    table = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    table = table.drop(columns=list(drop))
    for g in add:
        table[g] = "1.0"
    for row, gene in blank:
        table.iloc[row, table.columns.get_loc(gene)] = ""
    table.to_csv(path)


def test_missing_and_extra_genes_are_named_in_a_logged_note(tmp_path, caplog):
    a, b = make_site(tmp_path, 8, name="a", seed=1), make_site(tmp_path, 8, name="b", seed=2)
    _edit_genes(b, drop=[GENES[3]], add=["XTRA1"])
    stats = combine_stats([site_stats(a, CFG), site_stats(b, CFG)])
    assert "XTRA1" in stats["features"]["genomics"]["names"]  # union
    with caplog.at_level(logging.WARNING):
        site = load_site(b, CFG, stats=stats)
    notes = site.report.summary["notes"]
    assert any(f"1 of 13 shared genes are not in genomics.csv ({GENES[3]})" in n for n in notes)
    assert f"({GENES[3]})" in caplog.text
    a_notes = load_site(a, CFG, stats=stats).report.summary["notes"]
    assert any("(XTRA1)" in n and "filled with the federation mean" in n for n in a_notes)
    inter = combine_stats([site_stats(a, CFG), site_stats(b, CFG)], gene_policy="intersection")
    names = inter["features"]["genomics"]["names"]
    assert GENES[3] not in names and "XTRA1" not in names and len(names) == len(GENES) - 1
    b_inter = load_site(b, CFG, stats=inter).report.summary["notes"]
    assert any("(XTRA1): ignored" in n for n in b_inter)


def test_a_site_below_the_minimum_overlap_is_a_problem(tmp_path):
    site = make_site(tmp_path, 8, name="a")
    cfg = CFG.replace(genomics_genes=",".join([f"ENSG{j}" for j in range(8)] + GENES[:2]))
    report = validate_site(site, cfg)
    problems = [p for p in report.problems if p.code == "gene_overlap"]
    assert len(problems) == 1 and "holds 20% of the 10 shared genes" in problems[0].reason
    assert "genomics-min-overlap" in problems[0].reason
    assert not [p for p in validate_site(site, cfg.replace(genomics_min_overlap=0.0)).problems
                if p.code == "gene_overlap"]


def test_empty_expression_cells_are_counted_where_they_are_filled(tmp_path):
    site = make_site(tmp_path, 8, name="a")
    _edit_genes(site, blank=[(0, GENES[1]), (1, GENES[1]), (2, GENES[5])])
    loaded = load_site(site, CFG)
    note = next(n for n in loaded.report.summary["notes"] if "empty cell" in n)
    assert "3 empty cell(s) in genomics.csv for 3 patient(s)" in note and f"{GENES[1]} (2), {GENES[5]} (1)" in note
    assert np.isfinite(loaded.train.inputs["genomics"].numpy()).all()


def test_centralized_run_record_keeps_every_sites_data_notes(tmp_path):
    import json

    import yaml
    from click.testing import CliRunner

    from omnifuse_cli.main import cli

    fed = tmp_path / "fed"
    a, b = make_site(fed, 16, name="a", seed=1), make_site(fed, 16, name="b", seed=2)
    _edit_genes(b, drop=[GENES[3]])
    (fed / "federation.yaml").write_text(yaml.safe_dump({"sites": ["a", "b"]}))
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", "centralized", "--config", "smoke", "--data", str(fed),
                                      "--out", str(tmp_path / "run"), "--set", "modalities=ehr,genomics",
                                      "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    notes = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]["data_notes"]
    assert set(notes) == {"site_a", "site_b"} or set(notes) == {"a", "b"}
    assert any(GENES[3] in n for site_notes in notes.values() for n in site_notes)


def test_few_test_events_are_warned_about(tmp_path, caplog):
    site = make_site(tmp_path, 8, name="a")
    with caplog.at_level(logging.WARNING):
        loaded = load_site(site, CFG.replace(task="survival"))
    assert any("test split has" in n and "(< 10)" in n for n in loaded.report.summary["notes"])
    assert "this site's own test metric is mostly noise" in caplog.text
