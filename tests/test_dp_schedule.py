"""Budget-aware DP schedule (dp-schedule: auto): the rule, its accounting, the ledger/report, a real DP round."""
from __future__ import annotations

import json
import logging
import warnings
from types import SimpleNamespace

import pytest

from client import site_privacy as sp
from dp_rounds import run_dp_rounds
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.privacy import PrivacyLedger
from omnifuse_core.privacy import schedule as sch
from omnifuse_core.privacy.accounting import calibrate_noise_multiplier, cross_check_epsilon, epsilon_from_history
from omnifuse_core.privacy.dpsgd import planned_steps_per_epoch
from omnifuse_core.privacy.preflight import noise_to_signal

warnings.filterwarnings("ignore", message="Full backward hook is firing")

RULE = dict(epsilon=4.0, delta=1e-5, rounds=3, local_epochs=2, lr=0.01, n_params=5000, limit=5.0, accountant="rdp")


def _fixed_ratio(n: int, batch: int, *, epsilon, delta, rounds, local_epochs, n_params, accountant, **_) -> float:
    q, per_epoch = planned_steps_per_epoch(n, batch)
    sigma = calibrate_noise_multiplier(epsilon, delta, q, rounds * local_epochs * per_epoch, accountant)
    return noise_to_signal(sigma, n_params, q * n)


# --- the rule --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, epochs", [(100, 2), (280, 3), (561, 1), (5000, 3)])
def test_candidates_are_powers_of_two_within_half_the_site_and_the_step_floor(n, epochs):
    batches = sch.candidate_batches(n, epochs)
    assert batches and batches[0] == sch.MIN_BATCH
    for b in batches:
        assert b & (b - 1) == 0 and b <= n // 2 and b <= sch.MAX_BATCH
        assert epochs * planned_steps_per_epoch(n, b)[1] >= sch.MIN_STEPS_PER_ROUND
    nxt = 2 * batches[-1]  # the next power of two breaks a bound
    assert nxt > min(n // 2, sch.MAX_BATCH) or epochs * planned_steps_per_epoch(n, nxt)[1] < sch.MIN_STEPS_PER_ROUND
    assert sch.candidate_batches(40, 1) == []  # 40 // 16 = 2 steps < 6


def test_a_larger_site_never_gets_a_worse_ratio_and_the_pick_is_the_smallest_ratio():
    picks = [sch.choose_schedule(n, **RULE) for n in (100, 200, 300, 400, 800)]
    ratios = [p.ratio for p in picks]
    assert ratios == sorted(ratios, reverse=True) and ratios[-1] < ratios[0] / 4
    for p in picks:
        assert p.batch_size <= p.n_train and p.ratio == min(c.ratio for c in p.candidates)
        assert all(c.steps_per_round >= sch.MIN_STEPS_PER_ROUND for c in p.candidates)
        assert (p.local_epochs, p.lr) == (RULE["local_epochs"], RULE["lr"])  # kept as configured
        # the ratio falls as the batch grows (sigma grows slower than B): the pick is the largest candidate
        assert [c.ratio for c in p.candidates] == sorted((c.ratio for c in p.candidates), reverse=True)
        assert p.batch_size == p.candidates[-1].batch_size


@pytest.mark.parametrize("n, fixed", [(100, 16), (200, 32), (400, 64), (800, 128), (800, 50)])
def test_the_pick_is_no_worse_than_a_fixed_batch_that_meets_the_floor(n, fixed):
    assert RULE["local_epochs"] * planned_steps_per_epoch(n, fixed)[1] >= sch.MIN_STEPS_PER_ROUND
    pick = sch.choose_schedule(n, **RULE)
    assert pick.ratio <= _fixed_ratio(n, fixed, **RULE) + 1e-12


def test_the_picked_schedule_costs_its_epsilon_in_dp_accounting():
    rule = {**RULE, "accountant": "prv", "epsilon": 3.0}
    pick = sch.choose_schedule(600, **rule)
    steps = pick.rounds * [c for c in pick.candidates if c.batch_size == pick.batch_size][0].steps_per_round
    hist = [(pick.noise_multiplier, pick.sample_rate, steps)]
    prv = epsilon_from_history(hist, rule["delta"], "prv")
    assert prv <= 3.0 and prv == pytest.approx(3.0, rel=0.01)
    assert cross_check_epsilon(hist, rule["delta"])["pld"] == pytest.approx(prv, rel=0.01)


def test_a_site_too_small_for_the_rule_is_told_what_to_do():
    with pytest.raises(ValueError, match="dp-schedule: fixed"):
        sch.choose_schedule(40, **{**RULE, "local_epochs": 1})
    with pytest.raises(ValueError, match="parameter count"):
        sch.choose_schedule(400, **{**RULE, "n_params": 0})


def test_the_choice_round_trips_and_prints_its_table():
    pick = sch.choose_schedule(200, **RULE)
    assert sch.AutoSchedule.from_dict(json.loads(json.dumps(pick.to_dict()))) == pick
    text = pick.message("hospital_a")
    assert "batch-size 64" in text and "* " + f"{64:>5}" in text and text.count("\n") == len(pick.candidates) + 1


# --- config ----------------------------------------------------------------------------------------------------
def test_config_default_is_fixed_and_errors_name_the_key():
    assert Config().dp_schedule == "fixed"
    assert Config().with_overrides(["dp-schedule=auto"]).dp_schedule == "auto"
    with pytest.raises(ConfigError, match="'dp-schedule'"):
        Config().with_overrides(["dp-schedule=budget"])
    with pytest.raises(ConfigError, match="'dp-schedule'.*noise-multiplier: 0"):
        Config().with_overrides(["dp-schedule=auto", "noise-multiplier=1.2"])


# --- a real DP round -------------------------------------------------------------------------------------------
TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, dp=True,
            batch_size=8, local_epochs=3, rounds=2, target_epsilon=8.0, delta=1e-5, dp_preflight="warn")


def _dp_rounds(tmp_path, cfg: Config, rounds=(1, 2)):
    used = []
    out = run_dp_rounds(tmp_path, cfg, rounds, n=96, count_params=True,
                        record=lambda run_cfg, _dp: used.append(run_cfg))
    return out, used


def test_auto_dp_round_trains_with_the_pick_and_records_it(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="client.site_privacy"):
        (r1, r2), used = _dp_rounds(tmp_path, Config(**TINY, dp_schedule="auto"))
    (_, m1, _), (res, m2, report) = r1, r2
    pick = sch.AutoSchedule.from_dict(report["mechanism"]["schedule"])
    assert pick.n_train == 96 and [c.batch_size for c in pick.candidates] == [16, 32] and pick.batch_size == 32
    assert all(c.batch_size == 32 and c.local_epochs == 3 for c in used)  # trained with the pick, epochs kept
    assert m2["sample_rate"] == pytest.approx(32 / 96) and m2["steps"] == 3 * 3
    assert m2["noise_multiplier"] == pytest.approx(pick.noise_multiplier)  # sigma calibrated for the picked q, T
    assert m2["noise_ratio"] == pytest.approx(pick.ratio)
    events = [e for e in PrivacyLedger(tmp_path, "fp-a").events() if e["type"] == "dpsgd"]
    assert [(e["sample_rate"], e["noise_multiplier"]) for e in events] == [(32 / 96, pick.noise_multiplier)] * 2
    assert report["mechanism"]["calibration"]["sample_rate"] == pytest.approx(32 / 96)
    assert report["epsilon"] <= 8.0 + 1e-6 and report["epsilon"] == pytest.approx(8.0, abs=0.05)
    assert res.steps == m2["steps"]
    logged = [r.getMessage() for r in caplog.records if "dp-schedule auto picked" in r.getMessage()]
    assert len(logged) == 1 and "batch-size 32" in logged[0]  # once: round 2 reuses the stored choice
    stored = json.loads((tmp_path / sp.CALIBRATION_DIR / "fp-a.json").read_text())
    assert [v["batch_size"] for v in stored["auto_schedules"].values()] == [32]
    from omnifuse_core.privacy.report import federation_summary, write_reports

    paths = write_reports(tmp_path / "run", [report], federation_summary([report]))
    md = (tmp_path / "run" / "privacy" / "privacy.md").read_text()
    assert "auto: batch-size 32 (q=0.3333" in md and "B=16: r=" in md and "B=32: r=" in md
    assert "auto: batch-size 32" in open(paths["html"]).read()


def test_fixed_schedule_is_unchanged_and_reports_no_choice(tmp_path):
    (_, (_, m2, report)), used = _dp_rounds(tmp_path, Config(**TINY), rounds=(1, 2))
    assert "schedule" not in report["mechanism"] and all(c.batch_size == 8 for c in used)
    assert m2["sample_rate"] == pytest.approx(8 / 96) and m2["steps"] == 3 * 12
    from omnifuse_core.privacy.report_html import render_markdown
    from omnifuse_core.privacy.report import federation_summary

    assert "fixed (batch-size, local-epochs and lr as configured)" in render_markdown([report],
                                                                                      federation_summary([report]))


def test_cap_still_applies_under_auto(tmp_path):
    from omnifuse_core.toy import make_toy_dataset

    site = SimpleNamespace(name="hospital_a", fingerprint="fp-a", train=make_toy_dataset(96, seed=1))
    with pytest.raises(sp.PrivacyRefused, match="max-epsilon"):
        sp.dp_round(site, Config(**TINY, dp_schedule="auto"), state_dir=tmp_path, max_epsilon=1.0, server_round=1,
                    run_id="run-1", uses_tla=False, train=lambda c, d: pytest.fail("trained"), n_params=500)


def test_auto_with_adaptive_clipping_sizes_the_count_noise_from_the_picked_batch(tmp_path):
    cfg = Config(**TINY, dp_schedule="auto", max_grad_norm="adaptive", clip_initial=0.05)
    ((_, m1, report),), used = _dp_rounds(tmp_path, cfg, rounds=(1,))
    assert used[0].batch_size == 32 and m1["sample_rate"] == pytest.approx(32 / 96)
    (ev,) = [e for e in PrivacyLedger(tmp_path, "fp-a").events() if e["type"] == "dpsgd"]
    assert ev["clipping"] == "adaptive" and ev["clip_count_noise"] == pytest.approx(32 / 20)
    assert ev["noise_multiplier"] == pytest.approx(report["mechanism"]["schedule"]["noise_multiplier"])
