"""Report-noisy-max selection, its event, and the membership-inference lower-bound check."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from omnifuse_core.privacy.membership import loss_threshold_auc, max_tpr_bound
from omnifuse_core.privacy.noisy_max import (combination_scores, make_noisy_select, mean_combination_scores,
                                             noisy_max_epsilon, noisy_max_event, pure_events_from,
                                             report_noisy_max)


def test_combination_scores_clip_and_mask():
    d = torch.tensor([[0.5, 3.0, -1.0], [float("nan"), 0.2, 0.9]])
    elig = torch.tensor([[True, True, False], [True, False, True]])
    assert combination_scores(d, elig).tolist() == pytest.approx([1.5, 1.0, 0.9])
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        combination_scores(d, elig[:, :2])


def test_small_noise_returns_argmax_and_is_reproducible():
    scores = np.array([3.0, 40.0, 10.0])
    assert report_noisy_max(scores, 0.01, np.random.default_rng(0)) == 1
    assert report_noisy_max(torch.tensor(scores), 0.01, torch.Generator().manual_seed(0)) == 1
    a = [report_noisy_max(np.ones(5), 1.0, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1
    assert report_noisy_max(scores, 0.01, np.random.default_rng(1), noise="gumbel") == 1


@pytest.mark.parametrize("gen", [lambda s: np.random.default_rng(s), lambda s: torch.Generator().manual_seed(s)])
def test_selection_frequencies_follow_the_noise(gen):
    # two candidates one unit apart, Laplace(b=1): the lower one wins iff L2 - L1 > 1; the difference of two
    # Laplace(1) has density (1 + |x|) e^{-|x|} / 4, so P = 3 e^{-1} / 4 ~ 0.276
    rng = gen(3)
    picks = [report_noisy_max(np.array([1.0, 0.0]), 1.0, rng) for _ in range(4000)]
    p_low = np.mean(np.array(picks) == 1)
    assert p_low == pytest.approx(3 * np.exp(-1) / 4, abs=0.03)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="tla-noise-scale"):
        report_noisy_max(np.ones(3), 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        report_noisy_max(np.array([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="noise"):
        report_noisy_max(np.ones(2), 1.0, noise="cauchy")


def test_event_epsilon_monotone_and_general():
    ev = noisy_max_event(4.0, count=3, round=2, run_id="r")
    assert ev["type"] == "laplace" and ev["epsilon0"] == 0.25 and ev["count"] == 3
    assert noisy_max_epsilon(4.0, monotone=False) == 0.5
    assert pure_events_from([ev, noisy_max_event(2.0, noise="gumbel", monotone=False)]) == [(0.25, 3), (1.0, 1)]
    with pytest.raises(ValueError, match="only"):
        pure_events_from([{"type": "dpsgd"}])


def test_make_noisy_select_returns_index_and_event():
    select = make_noisy_select(0.01, np.random.default_rng(0))
    idx, ev = select(torch.tensor([0.0, 5.0, 1.0]))
    # TLA's mean scores are not monotone: one selection costs 2/b
    assert idx == 1 and ev["type"] == "laplace" and ev["count"] == 1 and ev["epsilon0"] == pytest.approx(200.0)
    assert ev["monotone"] is False
    with pytest.raises(ValueError, match="scale"):
        make_noisy_select(-1.0)


def test_membership_auc_detects_leakage_and_chance():
    rng = np.random.default_rng(0)
    leaky = loss_threshold_auc(rng.exponential(0.1, 200), rng.exponential(1.0, 200))
    assert leaky["auc"] > 0.85 and leaky["advantage"] > 0.7 and "not a guarantee" in leaky["note"]
    same = loss_threshold_auc(rng.exponential(1.0, 400), rng.exponential(1.0, 400))
    assert abs(same["auc"] - 0.5) < 0.08
    assert max_tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(np.e * 0.01 + 1e-5)
    with pytest.raises(ValueError, match="non-finite"):
        loss_threshold_auc([0.1, float("nan")], [1.0])


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), k=st.integers(1, 5), floor=st.integers(1, 12))
def test_mean_scores_have_sensitivity_one_under_add_remove_one(data, n, k, floor):
    """F · Σ clip(d) / max(n_δ, F): removing any one patient moves every score by at most 1 (docs/privacy.md)."""
    d = np.array(data.draw(st.lists(st.floats(-0.5, 1.5), min_size=n * k, max_size=n * k))).reshape(n, k)
    e = np.array(data.draw(st.lists(st.booleans(), min_size=n * k, max_size=n * k))).reshape(n, k)
    full = mean_combination_scores(d, e, floor)
    assert np.all(full >= 0) and np.all(full <= floor)
    for i in range(n):
        keep = np.arange(n) != i
        assert np.max(np.abs(full - mean_combination_scores(d[keep], e[keep], floor))) <= 1.0 + 1e-9


def test_mean_scores_are_not_monotone_and_match_the_trainer():
    from omnifuse_core.tla import mean_distances
    d = np.array([[0.2, 0.9], [0.8, 0.1], [0.9, 0.1]])
    e = np.ones((3, 2), dtype=bool)
    before = mean_combination_scores(d[:2], e[:2], 1)
    after = mean_combination_scores(d, e, 1)  # the third patient lowers one mean and raises the other
    assert (after[0] - before[0]) * (after[1] - before[1]) < 0
    present = torch.ones(3, 2, dtype=torch.bool)
    combos = [(0,), (1,)]
    ours, _ = mean_distances(lambda c: torch.tensor(d[:, c[0]]), present, combos, min_samples=4)
    assert np.allclose(4 * ours.numpy(), mean_combination_scores(d, e, 4))
    with pytest.raises(ValueError, match="tla-min-samples"):
        mean_combination_scores(d, e, 0)
