"""DP wired into the federation: the server loop in-process (a site over its cap refuses, the server records it and
continues; central DP reported separately), the central-DP aggregation step, and configs/smoke-dp.yaml in Flower's
simulation runtime writing RUN/privacy/<site>.json for every site."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from grid_fakes import DirectGrid
from omnifuse_core.config import Config
from omnifuse_core.privacy import PrivacyLedger
from server.aggregation import SiteUpdate
from server.privacy import CentralDPAggregator, central_accounting, is_privacy_refusal

SITES = ["hospital_a", "hospital_b", "hospital_c"]


class InProcessGrid(DirectGrid):
    """Delivers each message straight to the ClientApp; node ``100 + i`` is partition ``i`` with extra node config."""

    def __init__(self, n: int, node_extra: dict[int, dict] | None = None) -> None:
        super().__init__(n, per_node=node_extra)


    def send_and_receive(self, messages, *, timeout=None):
        from client.app import app as client_app

        return [client_app(msg, self.nodes[msg.metadata.dst_node_id]) for msg in messages]


@pytest.fixture
def task_identity():
    """Messages created outside a Flower runtime need a task identity (as Flower's own run_simulation sets)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _pld_epsilon(report: dict) -> float:
    """dp-accounting (PLD) recomputed from the report's own history, noisy-max added by basic composition."""
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    pld = None
    for sigma, q, steps in report["history"]:
        part = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q,
                                               value_discretization_interval=1e-4).self_compose(steps)
        pld = part if pld is None else pld.compose(part)
    # Δ/b per selection for monotone scores, 2Δ/b otherwise (TLA's mean scores; docs/privacy.md)
    pure = sum(e["count"] * (1 if e["monotone"] else 2) * e["sensitivity"] / e["scale"] for e in report["other_events"])
    return pld.get_epsilon_for_delta(report["delta"]) + pure


# --- central DP step (fast) -------------------------------------------------------------------------------------
def test_central_dp_clips_each_update_uses_a_fixed_denominator_and_adds_calibrated_noise():
    glob = {"w": np.zeros(4, np.float32), "b": np.zeros(1, np.float32)}
    big = SiteUpdate("a", {"w": np.full(4, 10.0, np.float32), "b": np.zeros(1, np.float32)}, {})  # norm 20
    small = SiteUpdate("b", {"w": np.array([0.3, 0, 0, 0], np.float32), "b": np.array([0.4], np.float32)}, {})
    agg = CentralDPAggregator(1e-9, 1.0, rng=np.random.default_rng(0))
    agg.begin_round(3)  # three sites sampled, one refused: it contributes zero, m stays 3
    out = agg.aggregate(glob, [big, small], {})
    np.testing.assert_allclose(out["w"], (np.full(4, 0.5) + [0.3, 0, 0, 0]) / 3, atol=1e-6)
    np.testing.assert_allclose(out["b"], [0.4 / 3], atol=1e-6)
    assert agg.last["clipped"] == 1 and agg.last["sampled"] == 3 and agg.last["contributing"] == 2

    noisy = CentralDPAggregator(2.0, 0.5, rng=np.random.default_rng(1))
    noisy.begin_round(4)
    draws = noisy.aggregate({"w": np.zeros(200_000, np.float32)}, [], {})["w"]
    assert noisy.last["noise_std"] == pytest.approx(2.0 * 0.5 / 4)
    assert float(draws.std()) == pytest.approx(0.25, rel=0.02)


def test_central_accounting_is_client_level_and_grows_with_releases():
    cfg = Config(central_dp=True, central_noise_multiplier=1.0, delta=1e-5)
    one, three = central_accounting(cfg, 1), central_accounting(cfg, 3)
    assert 0 < one["epsilon"] < three["epsilon"] and three["releases"] == 3 and "client" in three["level"]
    assert three["epsilon_cross_check"]["pld"] == pytest.approx(three["epsilon"], rel=0.02)
    assert central_accounting(cfg, 0)["epsilon"] == 0.0


def test_refusal_reasons_are_recognised():
    assert is_privacy_refusal("site error: PrivacyRefused: site 'x': ... above this site's cap max-epsilon=1")
    assert not is_privacy_refusal("non-finite values in 'w'")


# --- the server loop against the real ClientApp, in-process -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_site_over_its_cap_refuses_and_federation_continues(smoke_federation, tmp_path, task_identity):
    from server.loop import run_federation

    logging.getLogger("opacus").setLevel(logging.ERROR)
    run_dir = tmp_path / "run"
    cfg = Config.load("smoke-dp").replace(data_root=str(smoke_federation), run_dir=str(run_dir), min_sites=3,
                                          central_dp=True, central_noise_multiplier=0.5, central_clip_norm=5.0)
    # hospital_b's own cap admits round 1 (eps ~5.5) but not round 2 (~8.0); hospital_a has no cap (default)
    grid = InProcessGrid(3, {1: {"max-epsilon": 6.0}, 2: {"max-epsilon": 100.0}})
    run_federation(grid, cfg)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    r1, r2 = metrics["rounds"]
    assert set(r1["train"]) == set(SITES) and "privacy_refused" not in r1
    assert list(r2["privacy_refused"]) == ["hospital_b"] and set(r2["train"]) == {"hospital_a", "hospital_c"}
    reason = r2["privacy_refused"]["hospital_b"]
    assert "hospital_b" in reason and "max-epsilon=6" in reason and "refused" in reason
    assert set(metrics["final"]["sites"]) == set(SITES)  # the refusing site still evaluates the global model
    # central DP: released both rounds (the refusing site contributed zero), reported apart from the sites
    assert r1["central_dp"]["released"] and r2["central_dp"]["contributing"] == 2 and r2["central_dp"]["sampled"] == 3
    assert metrics["privacy_central"]["releases"] == 2 and metrics["privacy_central"]["epsilon"] > 0
    assert set(metrics["privacy"]) == set(SITES)

    state = run_dir / "site-state"
    for site in SITES:
        report = json.loads((run_dir / "privacy" / f"{site}.json").read_text())
        ledger = PrivacyLedger.from_file(next((state / site / "privacy-ledger").glob("*.jsonl")))
        rounds = 1 if site == "hospital_b" else 2
        assert len(ledger.history()) == rounds
        assert [p["round"] for p in report["per_round"]] == list(range(1, rounds + 1))
        assert report["epsilon"] == pytest.approx(_pld_epsilon(report), rel=0.01)
        assert metrics["privacy"][site]["epsilon"] == pytest.approx(report["epsilon"])
        assert report["max_epsilon"] == {"hospital_a": 8.0, "hospital_b": 6.0, "hospital_c": 100.0}[site]
    assert metrics["privacy"]["hospital_b"]["epsilon"] <= 6.0 < metrics["privacy"]["hospital_a"]["epsilon"] + 1
    summary = json.loads((run_dir / "privacy" / "summary.json").read_text())
    assert set(summary["sites"]) == set(SITES) and summary["central_dp"]["releases"] == 2
    assert "client" in summary["central_dp"]["level"]
    assert (run_dir / "privacy" / "privacy.html").stat().st_size > 0 and (run_dir / "privacy" / "privacy.md").exists()


# --- configs/smoke-dp.yaml in Flower's simulation runtime ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_dp_federated_simulation_writes_a_privacy_report_per_site(smoke_federation, tmp_path):
    from sim.federated import run_federated

    out = run_federated(Config.load("smoke-dp"), smoke_federation, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["rejected"] == {} for r in metrics["rounds"])
    for site in SITES:
        report = json.loads((out / "privacy" / f"{site}.json").read_text())
        # 1 local epoch: round 1 mines nothing (untrained model), round 2 makes one TLA selection
        assert report["site"] == site and len(report["history"]) == 2 and len(report["other_events"]) == 1
        assert report["other_events"][0]["round"] == 2
        assert 0 < report["per_round"][0]["epsilon"] < report["epsilon"] <= 8.0 * 1.001  # within target-epsilon
        assert report["epsilon"] == pytest.approx(_pld_epsilon(report), rel=0.01)
        assert metrics["privacy"][site]["epsilon"] == pytest.approx(report["epsilon"])
        assert metrics["privacy"][site]["delta"] == 1e-4
    assert (out / "privacy" / "summary.json").exists() and (out / "privacy" / "privacy.html").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_adaptive_clipping_in_flowers_simulation_resumes_c_and_spends_what_fixed_clipping_would(smoke_federation,
                                                                                                 tmp_path):
    """max-grad-norm: adaptive through real ClientApps: each site's C adapts, round 2 starts where round 1 ended
    (the site's ledger), and every site spends exactly the epsilon of its sigma, q and steps (dp-accounting PLD)."""
    from sim.federated import run_federated

    out = run_federated(Config.load("smoke-dp").replace(max_grad_norm="adaptive"), smoke_federation, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(r["rejected"] == {} for r in metrics["rounds"])
    for site in SITES:
        report = json.loads((out / "privacy" / f"{site}.json").read_text())
        per_round = report["mechanism"]["adaptive_clipping"]["clip_per_round"]
        assert [r[0] for r in per_round] == [1, 2] and per_round[0][1] == 1.0 and per_round[1][1] == per_round[0][2]
        assert report["max_grad_norm"] == per_round[1][2] == metrics["privacy"][site]["max_grad_norm"] != 1.0
        assert report["epsilon"] == pytest.approx(_pld_epsilon(report), rel=0.01) and report["epsilon"] <= 8.0 * 1.001
        assert metrics["privacy"][site]["clip_noise_multiplier"] > metrics["privacy"][site]["noise_multiplier"]
