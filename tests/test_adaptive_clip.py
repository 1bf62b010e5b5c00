"""Adaptive clipping (Andrew et al. 2021): the quantile update converges, the noise split costs exactly σ
(dp-accounting), config errors name the key, and a real DP round records the adaptive fields at fixed-clip ε."""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
import torch

from client import site_privacy as sp
from dp_rounds import run_dp_rounds
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.privacy import PrivacyLedger
from omnifuse_core.privacy import adaptive_clip as ac
from omnifuse_core.privacy.accounting import epsilon_from_history
from omnifuse_core.privacy.ledger import validate_event

warnings.filterwarnings("ignore", message="Full backward hook is firing")


@pytest.fixture(autouse=True)
def quiet_opacus():
    logging.disable(logging.WARNING)  # Opacus' RDP series warnings at large q
    yield
    logging.disable(logging.NOTSET)


# --- the mechanism ---------------------------------------------------------------------------------------------
def test_noise_split_composes_to_sigma_and_refuses_a_too_small_count_noise():
    sigma, sb = 1.1, ac.count_noise_for(0.0, 64)
    assert sb == pytest.approx(64 / 20) and ac.count_noise_for(2.5, 64) == 2.5
    sd = ac.split_noise(sigma, sb)
    assert sd == pytest.approx((sigma ** -2 - (2 * sb) ** -2) ** -0.5) and sd > sigma
    assert ac.combined_multiplier(sd, sb) == pytest.approx(sigma, rel=1e-12)
    with pytest.raises(ValueError, match="clip-count-noise.*raise clip-count-noise"):
        ac.split_noise(2.0, 1.0)  # sigma_b must exceed sigma / 2
    with pytest.raises(ValueError, match="clip-count-noise"):
        ac.count_noise_for(-1.0, 64)


def test_centered_count_moves_by_one_half_for_any_added_patient():
    base = ac.centered_count(unclipped=5, batch=12)
    assert ac.centered_count(6, 13) - base == 0.5  # an unclipped patient added
    assert ac.centered_count(5, 13) - base == -0.5  # a clipped patient added
    # the fraction is over the public expected batch size, not the drawn one
    assert ac.noisy_fraction(5, 12, 0.0, expected_batch=10) == pytest.approx((5 - 6) / 10 + 0.5)


def _adaptive_optimizer(quantile: float, *, initial: float, batch: int, dim: int, seed: int):
    from opacus.optimizers import DPOptimizer

    p = torch.nn.Parameter(torch.zeros(dim))
    opt = DPOptimizer(torch.optim.SGD([p], lr=0.0), noise_multiplier=1.0, max_grad_norm=initial,
                      expected_batch_size=batch, generator=torch.Generator().manual_seed(seed))
    settings = ac.AdaptiveClip(quantile, initial, 0.2, ac.count_noise_for(0.0, batch))
    state = ac.attach(opt, settings, noise_multiplier=1.0, expected_batch=batch)
    return p, opt, state


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_clip_converges_to_the_target_quantile_of_lognormal_norms(quantile):
    rng = np.random.default_rng(7)
    n_data, batch, mu, s = 2000, 64, math.log(3.0), 0.6  # per-sample norms ~ lognormal(mu, s): median 3
    p, opt, state = _adaptive_optimizer(quantile, initial=0.1, batch=batch, dim=8, seed=1)
    for _ in range(400):
        n = int(rng.binomial(n_data, batch / n_data))  # Poisson sampling: a random batch size
        dirs = rng.normal(size=(n, 8))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        p.grad_sample = torch.tensor(dirs * rng.lognormal(mu, s, size=(n, 1)), dtype=torch.float32)
        opt.step()
        opt.zero_grad()
    unclipped = 0.5 * (1 + math.erf((math.log(state.clip) - mu) / (s * math.sqrt(2))))  # P(norm <= C)
    assert abs(unclipped - quantile) <= 0.05, (state.clip, unclipped)  # the brief asks 0.1; it reaches 0.013
    assert state.steps == 400 and opt.max_grad_norm == state.clip
    assert ac.clip_summary(opt)["clip_final"] == state.clip and ac.clip_summary(opt)["clip_initial"] == 0.1


def test_gradient_noise_is_sigma_delta_times_c_and_an_empty_batch_still_steps():
    p, opt, state = _adaptive_optimizer(0.5, initial=2.0, batch=12, dim=40000, seed=3)  # sigma_b = 12 / 20
    p.grad_sample = torch.zeros((0, 40000))  # an empty Poisson batch: noise only, the count is noise only
    opt.pre_step()
    sigma_delta = (1.0 - (2 * 0.6) ** -2) ** -0.5  # 1.81 for sigma = 1
    assert float(p.grad.std()) * 12 == pytest.approx(sigma_delta * 2.0, rel=0.01)  # scaled by 1 / B
    assert state.steps == 1 and state.clip != 2.0 and opt.noise_multiplier == 1.0  # the accountant reads sigma


# --- accounting ------------------------------------------------------------------------------------------------
def _dp_accounting_eps(inner, q: float, steps: int, delta: float) -> float:
    import dp_accounting

    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, inner), steps))
    return acc.get_epsilon(delta)


def test_gradient_plus_count_costs_exactly_one_gaussian_at_sigma_in_dp_accounting():
    import dp_accounting
    from dp_accounting import ComposedDpEvent, GaussianDpEvent

    sigma, q, steps, delta = 1.1, 0.02, 1500, 1e-5
    sb = ac.count_noise_for(0.0, 64)
    sd = ac.split_noise(sigma, sb)
    # one Poisson-sampled event per step: the sum (sensitivity 1 in units of C, multiplier sigma_delta) and the
    # centered count (std sigma_b, sensitivity 1/2, i.e. multiplier 2 sigma_b at sensitivity 1)
    both = ComposedDpEvent([GaussianDpEvent(sd), GaussianDpEvent(2 * sb)])
    eps_both = _dp_accounting_eps(both, q, steps, delta)
    eps_single = _dp_accounting_eps(GaussianDpEvent(sigma), q, steps, delta)
    assert eps_both == pytest.approx(eps_single, rel=0.01)
    assert eps_both == pytest.approx(epsilon_from_history([(sigma, q, steps)], delta, "rdp"), rel=0.01)
    # PLD (independent numerics) agrees that the two Gaussians compose to one at sigma
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(both, 200)
    pld_single = dp_accounting.pld.PLDAccountant()
    pld_single.compose(GaussianDpEvent(sigma), 200)
    assert pld.get_epsilon(delta) == pytest.approx(pld_single.get_epsilon(delta), rel=0.01)
    # an uncentered count has sensitivity 1: the same split (Opacus' AdaClipDPOptimizer) would cost more than sigma
    uncentered = _dp_accounting_eps(ComposedDpEvent([GaussianDpEvent(sd), GaussianDpEvent(sb)]), q, steps, delta)
    assert uncentered > 1.05 * eps_single


# --- config ----------------------------------------------------------------------------------------------------
def test_config_accepts_adaptive_and_keeps_numbers_as_floats(tmp_path):
    cfg = Config().with_overrides(["max-grad-norm=adaptive", "clip-quantile=0.7", "clip-count-noise=2"])
    assert cfg.max_grad_norm == "adaptive" and cfg.adaptive_clip and cfg.clip_quantile == 0.7
    assert cfg.clip_count_noise == 2.0 and isinstance(cfg.clip_count_noise, float)
    cfg.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == cfg and Config.from_flat(cfg.to_flat()) == cfg
    assert Config.from_flat({"max-grad-norm": "Adaptive"}).max_grad_norm == "adaptive"
    fixed = Config().with_overrides(["max-grad-norm=0.5"])
    assert fixed.max_grad_norm == 0.5 and isinstance(fixed.max_grad_norm, float) and not fixed.adaptive_clip
    assert Config.from_flat({"max-grad-norm": 2}).max_grad_norm == 2.0 and Config().max_grad_norm == 1.0


@pytest.mark.parametrize("item, key", [
    ("max-grad-norm=auto", "max-grad-norm"), ("clip-quantile=1.5", "clip-quantile"),
    ("clip-quantile=0", "clip-quantile"), ("clip-initial=0", "clip-initial"),
    ("clip-learning-rate=-0.1", "clip-learning-rate"), ("clip-count-noise=-1", "clip-count-noise"),
    ("clip-initial=nan", "clip-initial")])
def test_config_errors_name_the_key(item, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        Config().with_overrides([item])
    with pytest.raises(ConfigError, match="'max-grad-norm'.*'adaptive'"):
        Config(max_grad_norm="adaptiv").validate()


def test_dp_settings_for_config_builds_the_adaptive_settings_for_the_benchmarks():
    from omnifuse_core.trainer import DPSettings

    fixed = DPSettings.for_config(Config(max_grad_norm=0.3), 1.0, 32)
    assert (fixed.max_grad_norm, fixed.adaptive) == (0.3, None)
    ada = DPSettings.for_config(Config(max_grad_norm="adaptive", clip_initial=0.2), 1.0, 32)
    assert ada.max_grad_norm == 0.2 and ada.adaptive == ac.AdaptiveClip(0.5, 0.2, 0.2, 1.6)
    with pytest.raises(ValueError, match="clip-count-noise"):
        DPSettings.for_config(Config(max_grad_norm="adaptive"), 4.0, 32)


# --- a real DP round -------------------------------------------------------------------------------------------
TINY = dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_hidden="16,8,4", cra_blocks=2, dp=True,
            batch_size=8, local_epochs=1, rounds=2, target_epsilon=8.0, delta=1e-5)


def _dp_rounds(tmp_path, cfg: Config, rounds=(1, 2), cap=None):
    calls = []
    out = run_dp_rounds(tmp_path, cfg, rounds, n=80, cap=cap, record=lambda _cfg, dp: calls.append(dp))
    return out, calls


def test_adaptive_dp_round_records_the_mechanism_at_the_fixed_clip_epsilon(tmp_path):
    fixed, _ = _dp_rounds(tmp_path / "fixed", Config(**TINY))
    adaptive, calls = _dp_rounds(tmp_path / "adaptive", Config(**TINY, max_grad_norm="adaptive", clip_initial=0.05))
    (_, m1, _), (res2, m2, report) = adaptive
    assert fixed[-1][1]["noise_multiplier"] == m2["noise_multiplier"]
    assert (fixed[-1][1]["steps"], fixed[-1][1]["sample_rate"]) == (m2["steps"], m2["sample_rate"]) == (10, 0.1)
    assert m2["epsilon"] == pytest.approx(fixed[-1][1]["epsilon"], rel=1e-9)  # same sigma, q, steps: same epsilon
    assert report["epsilon_cross_check"] == fixed[-1][2]["epsilon_cross_check"]
    # round 2 resumed from round 1's final C, and the ledger holds what the optimizer did
    assert calls[0].adaptive.initial == 0.05 and calls[1].adaptive.initial == pytest.approx(m1["max_grad_norm"])
    events = [e for e in PrivacyLedger(tmp_path / "adaptive", "fp-a").events() if e["type"] == "dpsgd"]
    sb = 8 / 20
    for ev in events:
        assert ev["clipping"] == "adaptive" and ev["clip_quantile"] == 0.5 and ev["clip_count_noise"] == sb
        assert ev["clip_noise_multiplier"] == pytest.approx(ac.split_noise(m2["noise_multiplier"], sb))
    assert res2.clip["clip_noise_multiplier"] == pytest.approx(events[-1]["clip_noise_multiplier"])  # what it used
    assert events[-1]["max_grad_norm"] == res2.clip["clip_final"] == m2["max_grad_norm"] != events[-1]["clip_initial"]
    mech = report["mechanism"]["adaptive_clipping"]
    assert report["mechanism"]["clipping"] == "adaptive" and mech["final_clip"] == res2.clip["clip_final"]
    assert mech["target_quantile"] == [0.5] and mech["count_noise_std"] == [sb] and len(mech["clip_per_round"]) == 2
    from omnifuse_core.privacy.report import federation_summary, write_reports

    paths = write_reports(tmp_path / "run", [report], federation_summary([report]))
    md = (tmp_path / "run" / "privacy" / "privacy.md").read_text()
    assert "adaptive: target quantile [0.5]" in md and f"count noise sigma_b=[{sb}]" in md
    assert "adaptive" in open(paths["html"]).read()
    assert "clipping" not in fixed[-1][2]["mechanism"]  # fixed-clip reports are unchanged
    assert all("clipping" not in e for e in PrivacyLedger(tmp_path / "fixed", "fp-a").events())


def test_ledger_cap_and_a_too_small_count_noise_refuse_an_adaptive_round_before_training(tmp_path):
    cfg = Config(**TINY, max_grad_norm="adaptive")
    out, _ = _dp_rounds(tmp_path, cfg, rounds=(1,), cap=8.0)
    first = out[0][1]
    with pytest.raises(sp.PrivacyRefused, match="max-epsilon=") as err:
        _dp_rounds(tmp_path, cfg, rounds=(2,), cap=first["epsilon"] * 1.05)
    assert "hospital_a" in str(err.value)
    assert len([e for e in PrivacyLedger(tmp_path, "fp-a").events() if e["type"] == "dpsgd"]) == 1
    small = Config(**TINY, max_grad_norm="adaptive", clip_count_noise=0.05)
    with pytest.raises(sp.PrivacyRefused, match="hospital_a.*clip-count-noise"):
        _dp_rounds(tmp_path / "small", small, rounds=(1,))
    assert not (tmp_path / "small" / "privacy-ledger" / "fp-a.jsonl").exists()


def test_ledger_rejects_an_adaptive_event_whose_split_does_not_cost_its_sigma():
    good = {"type": "dpsgd", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3, "max_grad_norm": 0.7,
            **ac.ledger_fields(ac.AdaptiveClip(0.5, 1.0, 0.2, 1.6), 1.0)}
    validate_event(good)
    with pytest.raises(ValueError, match="do not compose"):
        validate_event({**good, "clip_noise_multiplier": 1.0})
    with pytest.raises(ValueError, match="clip_count_noise"):
        validate_event({**good, "clip_count_noise": 0.4})
    with pytest.raises(ValueError, match="'clipping'"):
        validate_event({**good, "clipping": "fixed"})
