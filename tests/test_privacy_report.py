"""Privacy reports: keys, recomputation from the recorded history, files written, loading, table."""

import base64
import json
import re

import pytest

from omnifuse_core.privacy.accounting import cross_check_epsilon
from omnifuse_core.privacy.budget import dpsgd_event
from omnifuse_core.privacy.ledger import PrivacyLedger
from omnifuse_core.privacy.noisy_max import noisy_max_event, pure_events_from
from omnifuse_core.privacy.report import (build_provenance, federation_summary, format_report_source, format_table,
                                          load_report_source, site_report, write_reports)

DELTA = 1e-5
KEYS = {"site", "delta", "epsilon", "accountant", "epsilon_rdp", "epsilon_prv", "epsilon_cross_check", "max_epsilon",
        "noise_multiplier", "max_grad_norm", "sample_rate", "history", "other_events", "per_round", "rdp_order",
        "rdp_order_on_boundary", "remaining_budget", "lifetime", "provenance", "scope", "unit", "adjacency",
        "mechanism", "statement"}


def _ledger(tmp_path, fp, sigma, q, rounds, run="run-1", tla=False):
    lg = PrivacyLedger(tmp_path / fp, fp)
    for r in range(1, rounds + 1):
        lg.append(dpsgd_event(sigma, q, 60, max_grad_norm=1.0, round=r, run_id=run))
        if tla:
            lg.append(noisy_max_event(25.0, count=2, round=r, run_id=run))
    return lg


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rep")
    a = _ledger(tmp, "fpa", 1.1, 0.05, 3)
    b = _ledger(tmp, "fpb", 1.3, 0.04, 2, tla=True)
    b.append(dpsgd_event(1.3, 0.04, 60, max_grad_norm=1.0, round=1, run_id="run-0"))  # an earlier run's spending
    prov = build_provenance(run_id="run-1", site="hospital-a", fingerprint="fpa", config_hash="cafe")
    ra = site_report(a, site="hospital-a", delta=DELTA, max_epsilon=8.0, provenance=prov, run_id="run-1")
    rb = site_report(b, site="hospital-b", delta=DELTA, max_epsilon=20.0, run_id="run-1")
    return [ra, rb], tmp


def test_report_keys_and_structure(reports):
    (ra, rb), _ = reports
    assert KEYS <= set(ra) and KEYS <= set(rb)
    assert ra["accountant"] == "prv" and ra["epsilon"] == ra["epsilon_prv"]
    assert ra["history"] == [[1.1, 0.05, 60]] * 3 and ra["mechanism"]["total_steps"] == 180
    assert [x["round"] for x in ra["per_round"]] == [1, 2, 3]
    eps_rounds = [x["epsilon"] for x in ra["per_round"]]
    assert eps_rounds == sorted(eps_rounds) and eps_rounds[-1] == pytest.approx(ra["epsilon"])
    assert ra["remaining_budget"] == pytest.approx(8.0 - ra["epsilon"])
    assert ra["provenance"]["versions"]["opacus"] and ra["provenance"]["config_hash"] == "cafe"
    assert "metrics" in " ".join(ra["scope"]["not_protected"]) and "add/remove" in ra["adjacency"]
    assert "hospital-a" in ra["statement"] and f"{ra['epsilon']:.2f}" in ra["statement"]
    json.dumps(ra)  # serialisable


def test_epsilon_matches_dp_accounting_recomputed_from_the_recorded_history(reports):
    (ra, rb), _ = reports
    for r in (ra, rb):
        pure = pure_events_from(r["other_events"])
        cc = cross_check_epsilon(r["history"], r["delta"], pure)
        if not pure:  # Gaussian only: PRV headline and the PLD recomputation agree within 1 %
            assert r["epsilon"] == pytest.approx(cc["pld"], rel=0.01)
            assert r["epsilon_rdp"] == pytest.approx(cc["rdp"], rel=0.01)
        else:  # with noisy-max events every reported number stays an upper bound of the tight PLD composition
            assert r["epsilon"] >= cc["pld"] * 0.99 and r["epsilon_rdp"] >= cc["pld"] * 0.99
            assert r["epsilon_rdp"] == pytest.approx(cc["rdp"], rel=0.05)
            # composed the same way as the PRV headline (noisy-max by basic composition): within 1 %
            assert r["epsilon"] == pytest.approx(cc["pld_basic"], rel=0.01)


def test_lifetime_covers_all_runs_and_cap_uses_it(reports):
    (_, rb), _ = reports
    assert rb["lifetime"]["runs"] == ["run-0", "run-1"]
    assert rb["lifetime"]["epsilon"] > rb["epsilon"]
    assert rb["remaining_budget"] == pytest.approx(20.0 - rb["lifetime"]["epsilon"])
    assert len(rb["other_events"]) == 2 and rb["pure_dp_composition"]


def test_summary_never_sums_and_files_are_written(reports):
    (ra, rb), tmp = reports
    summary = federation_summary([ra, rb], central={"epsilon": 3.0, "level": "client"})
    assert summary["max_site_epsilon"] == max(ra["epsilon"], rb["epsilon"])
    assert "not added" in summary["note"] and "sum" not in json.dumps(summary["sites"])
    paths = write_reports(tmp / "RUN", [ra, rb], summary)
    html = open(paths["html"]).read()
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in html.replace("https://", "").lower() or "src='http" not in html  # self-contained
    md = open(paths["markdown"]).read()
    assert "hospital-b" in md and "Central DP" in md
    loaded, again = load_report_source(tmp / "RUN")
    assert [r["site"] for r in loaded] == ["hospital-a", "hospital-b"]
    assert loaded[0]["epsilon"] == ra["epsilon"] and again["sites"].keys() == summary["sites"].keys()
    table = format_table(loaded)
    assert "hospital-a" in table and f"{ra['epsilon']:.3f}" in table and "never added" in table
    assert format_report_source(tmp / "RUN", "table") == table
    assert json.loads(format_report_source(tmp / "RUN", "json"))["sites"][1]["site"] == "hospital-b"
    assert format_report_source(tmp / "RUN", "markdown").startswith("# Privacy report")


def test_load_from_ledger_file_and_state_dir(reports):
    _, tmp = reports
    ledger_file = tmp / "fpa" / "privacy-ledger" / "fpa.jsonl"
    reps, _ = load_report_source(ledger_file, delta=DELTA, max_epsilon=8.0)
    assert reps[0]["site"] == "fpa" and reps[0]["history"] == [[1.1, 0.05, 60]] * 3
    reps2, _ = load_report_source(tmp / "fpa")
    assert reps2[0]["epsilon"] == pytest.approx(reps[0]["epsilon"])
    with pytest.raises(FileNotFoundError, match="no privacy reports"):
        load_report_source(tmp / "nothing-here")


def test_empty_ledger_report_is_zero(tmp_path):
    r = site_report([], site="s", delta=DELTA, max_epsilon=5.0)
    assert r["epsilon"] == 0.0 and r["remaining_budget"] == 5.0 and r["per_round"] == []


def test_files_are_named_by_site_and_a_run_dir_loads_next_to_metrics(reports, tmp_path):
    (ra, rb), _ = reports
    odd = {**rb, "site": "summary"}
    run = tmp_path / "RUN"
    run.mkdir()
    (run / "metrics.json").write_text("{}")  # never mistaken for a site report
    central = {"epsilon": 2.0, "level": "client"}
    paths = write_reports(run, [ra, odd], federation_summary([ra, odd], central))
    names = sorted(p.rsplit("/", 1)[1] for p in paths["json"])
    assert names == ["hospital-a.json", "site-summary.json"]
    loaded, summary = load_report_source(run)
    assert sorted(r["site"] for r in loaded) == ["hospital-a", "summary"]
    assert summary["central_dp"] == central  # kept from summary.json
    (run / "privacy" / "stray.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="stray.json is not a site privacy report"):
        load_report_source(run)
