"""Accounting: golden numbers, split/reload invariance, cross-checks, pure-DP composition, calibration."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse_core.privacy.accounting import (_rr_rdp, calibrate_noise_multiplier, cross_check_epsilon,
                                              epsilon_from_history, normalize_history, rdp_details, total_steps)

GOLDEN = [(1.5, 0.04, 2250)]
DELTA = 1e-5


def test_golden_rdp_prv_and_dp_accounting():
    eps_rdp, alpha, boundary = rdp_details(GOLDEN, DELTA)
    assert eps_rdp == pytest.approx(7.329, abs=2e-3)
    assert alpha == 3.9 and boundary is False
    assert epsilon_from_history(GOLDEN, DELTA, "rdp") == eps_rdp
    assert epsilon_from_history(GOLDEN, DELTA, "prv") == pytest.approx(6.777, abs=0.01)
    cc = cross_check_epsilon(GOLDEN, DELTA)
    assert abs(cc["rdp"] - eps_rdp) < 1e-3
    assert cc["pld"] == pytest.approx(epsilon_from_history(GOLDEN, DELTA, "prv"), rel=0.01)
    assert cc["library"].startswith("dp-accounting")


def test_split_and_reload_history_gives_same_epsilon():
    split = [(1.5, 0.04, 1000), (1.5, 0.04, 1250)]
    for acct in ("rdp", "prv"):
        assert epsilon_from_history(split, DELTA, acct) == pytest.approx(epsilon_from_history(GOLDEN, DELTA, acct),
                                                                         rel=1e-9)
    assert cross_check_epsilon(split, DELTA)["rdp"] == pytest.approx(cross_check_epsilon(GOLDEN, DELTA)["rdp"])
    assert total_steps(split) == 2250


def test_heterogeneous_history_matches_dp_accounting():
    hist = [(1.2, 0.05, 300), (2.0, 0.1, 200), (1.2, 0.05, 100)]
    eps = epsilon_from_history(hist, DELTA, "rdp")
    assert abs(cross_check_epsilon(hist, DELTA)["rdp"] - eps) < 2e-3
    # more steps strictly cost more
    assert epsilon_from_history(hist[:2], DELTA, "rdp") < eps


def test_empty_history_is_zero_and_bad_input_is_named():
    assert epsilon_from_history([], DELTA) == 0.0
    assert rdp_details([(1.0, 0.1, 0)], DELTA)[0] == 0.0
    with pytest.raises(ValueError, match="segment 1: sample_rate"):
        normalize_history([(1.0, 0.1, 5), (1.0, 1.5, 5)])
    with pytest.raises(ValueError, match="noise_multiplier"):
        epsilon_from_history([(0.0, 0.1, 5)], DELTA)
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_history(GOLDEN, 0.0)
    with pytest.raises(ValueError, match="accountant"):
        epsilon_from_history(GOLDEN, DELTA, "gdp")


def test_randomized_response_rdp_matches_dp_accounting_formula():
    from dp_accounting.rdp.rdp_privacy_accountant import _randomized_response_rdp_replace_one

    eps0 = 0.7
    p = 2 / (1 + math.exp(eps0))  # binary RR with parameter eps0
    for a in (1.5, 2.0, 10.0, 40.0):
        assert _rr_rdp(eps0, np.array([a]))[0] == pytest.approx(_randomized_response_rdp_replace_one(p, 2, a))
    # never above the pure-DP bound
    assert np.all(_rr_rdp(eps0, np.array([1.1, 5.0, 63.0])) <= eps0 + 1e-12)


def test_pure_events_are_composed_by_every_accountant():
    pure = [(0.1, 5)]
    base = {a: epsilon_from_history(GOLDEN, DELTA, a) for a in ("rdp", "prv")}
    with_pure = {a: epsilon_from_history(GOLDEN, DELTA, a, pure_events=pure) for a in ("rdp", "prv")}
    assert base["rdp"] < with_pure["rdp"] < base["rdp"] + 0.5  # RDP composition beats basic composition here
    assert with_pure["prv"] == pytest.approx(base["prv"] + 0.5)  # PRV: basic composition
    cc0, cc = cross_check_epsilon(GOLDEN, DELTA), cross_check_epsilon(GOLDEN, DELTA, pure)
    assert cc["rdp"] > cc0["rdp"] and cc["pld"] > cc0["pld"]
    # pure events alone: k-fold eps0-DP never needs more than k * eps0
    only = epsilon_from_history([], DELTA, "rdp", pure_events=[(0.5, 2)])
    assert 0 < only and cross_check_epsilon([], DELTA, [(0.5, 2)])["pld"] <= 1.0 + 1e-6


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from([0.8, 1.5]), st.sampled_from([0.01, 0.05]), st.integers(0, 200)),
                min_size=1, max_size=3),
       st.tuples(st.sampled_from([0.8, 1.5]), st.sampled_from([0.01, 0.05]), st.integers(1, 200)))
def test_epsilon_never_decreases_when_history_grows(hist, extra):
    before = epsilon_from_history(hist, DELTA, "rdp")
    after = epsilon_from_history([*hist, extra], DELTA, "rdp")
    assert after >= before


def test_prv_never_decreases_on_a_growing_schedule():
    values = [epsilon_from_history([(1.1, 0.05, 50)] * k, DELTA, "prv") for k in range(1, 6)]
    assert values == sorted(values) and values[0] > 0


def test_calibration_reaches_target_once_for_the_planned_schedule():
    sigma = calibrate_noise_multiplier(4.0, DELTA, 0.05, 400, accountant="rdp")
    eps = epsilon_from_history([(sigma, 0.05, 400)], DELTA, "rdp")
    assert eps <= 4.0 and eps > 4.0 - 0.05
    sigma_prv = calibrate_noise_multiplier(4.0, DELTA, 0.05, 400, accountant="prv", epsilon_tolerance=0.2)
    assert sigma_prv <= sigma + 1e-9  # PRV is tighter, so less noise suffices
    assert epsilon_from_history([(sigma_prv, 0.05, 400)], DELTA, "prv") <= 4.0
    with pytest.raises(ValueError, match="total_steps"):
        calibrate_noise_multiplier(4.0, DELTA, 0.05, 0)
