"""Privacy accounting: epsilon from a DP-SGD history (+ pure-DP noisy-max events), calibration, cross-checks.

A *history* is a list of ``(noise_multiplier, sample_rate, steps)`` segments, exactly Opacus' accountant history
format. Every function loads it into a **fresh** accountant, so the answer depends only on the recorded history.

Pure-DP events (report-noisy-max selections, see :mod:`omnifuse_core.privacy.noisy_max`) are given as
``(epsilon0, count)`` pairs and composed as follows (docs/privacy.md, "Noisy-max accounting"):

- RDP (Opacus orders): add the exact Rényi curve of binary randomized response with parameter ``epsilon0`` —
  the worst case over all ``epsilon0``-DP mechanisms — to the subsampled-Gaussian curve, then convert once.
- PRV (Opacus): Opacus' PRV accountant only models subsampled Gaussians, so the pure events are added by basic
  composition: ``eps_prv(gaussian) + sum(count * epsilon0)`` at the same delta (valid, conservative).
- dp-accounting RDP: each pure event as ``ZCDpEvent(epsilon0**2 / 2)`` (Bun & Steinke: eps-DP implies
  eps^2/2-zCDP); dp-accounting PLD: each pure event as the worst-case PLD of an (epsilon0, 0)-DP mechanism.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import warnings
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

Segment = tuple[float, float, int]
PureEvents = Sequence[tuple[float, int]]
ACCOUNTANTS = ("prv", "rdp")
PLD_DISCRETIZATION = 1e-3  # dp-accounting pessimistic PLD grid; 1e-4 changes eps by < 1e-3 and is 8x slower


def normalize_history(history: Sequence[Sequence[float]]) -> list[Segment]:
    """Validate a history and merge adjacent segments with identical (sigma, q); drop zero-step segments.

    Merging and dropping do not change any accountant's answer (composition of identical mechanisms).

    Args:
        history: ``[(noise_multiplier, sample_rate, steps), ...]``.

    Returns:
        The compacted history as a list of ``(float, float, int)`` tuples.

    Raises:
        ValueError: naming the segment index and field when a value is out of range.
    """
    out: list[Segment] = []
    for i, seg in enumerate(history):
        if len(seg) != 3:
            raise ValueError(f"history segment {i} is {seg!r}; expected (noise_multiplier, sample_rate, steps)")
        sigma, q, steps = float(seg[0]), float(seg[1]), seg[2]
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"history segment {i}: noise_multiplier must be a finite number > 0, got {seg[0]!r}")
        if not (0 < q <= 1):
            raise ValueError(f"history segment {i}: sample_rate must lie in (0, 1], got {seg[1]!r}")
        if int(steps) != steps or int(steps) < 0:
            raise ValueError(f"history segment {i}: steps must be a whole number >= 0, got {seg[2]!r}")
        steps = int(steps)
        if steps == 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return out


def normalize_pure(pure_events: PureEvents) -> list[tuple[float, int]]:
    """Validate ``(epsilon0, count)`` pairs of pure-DP events; drop zero counts."""
    out = []
    for i, (eps0, count) in enumerate(pure_events):
        if not (math.isfinite(float(eps0)) and float(eps0) > 0):
            raise ValueError(f"pure-DP event {i}: epsilon0 must be a finite number > 0, got {eps0!r}")
        if int(count) != count or int(count) < 0:
            raise ValueError(f"pure-DP event {i}: count must be a whole number >= 0, got {count!r}")
        if int(count):
            out.append((float(eps0), int(count)))
    return out


def total_steps(history: Sequence[Sequence[float]]) -> int:
    """Number of DP-SGD steps in a history (note: Opacus ``len(accountant)`` counts segments, not steps)."""
    return sum(s for _, _, s in normalize_history(history))


def _check_delta(delta: float) -> None:
    if not (0 < float(delta) < 1):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}; choose delta much smaller than 1/N")


def _rr_rdp(eps0: float, orders: np.ndarray) -> np.ndarray:
    """Exact Rényi divergence of binary randomized response with parameter eps0 (tight for any eps0-DP mechanism).

    D_a = log((e^{a eps} + e^{(1-a) eps}) / (1 + e^eps)) / (a - 1), computed in log space.
    """
    a = np.asarray(orders, dtype=float)
    num = np.logaddexp(a * eps0, (1 - a) * eps0)
    return (num - np.logaddexp(0.0, eps0)) / (a - 1)


def _opacus_rdp_vector(history: list[Segment], orders: Sequence[float]) -> np.ndarray:
    from opacus.accountants.analysis import rdp as rdp_analysis

    total = np.zeros(len(orders))
    for sigma, q, steps in history:
        total = total + np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders))
    return total


def rdp_details(history: Sequence[Sequence[float]], delta: float,
                pure_events: PureEvents = ()) -> tuple[float, float, bool]:
    """RDP epsilon with Opacus' default orders, the optimal order, and whether it sits on the edge of the grid.

    Args:
        history: DP-SGD history segments.
        delta: target delta.
        pure_events: ``(epsilon0, count)`` pure-DP events composed in RDP (randomized-response curve).

    Returns:
        ``(epsilon, best_alpha, on_boundary)``; ``(0.0, nan, False)`` for an empty history with no events.
        ``on_boundary`` True means the optimum is the smallest or largest order tried, so a wider grid could
        give a (slightly) smaller epsilon — the reported value is still a valid upper bound.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    _check_delta(delta)
    hist, pure = normalize_history(history), normalize_pure(pure_events)
    if not hist and not pure:
        return 0.0, float("nan"), False
    orders = list(RDPAccountant.DEFAULT_ALPHAS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns on a boundary optimum; we return that as a flag instead
        if not pure:
            acc = RDPAccountant()
            acc.history = list(hist)
            eps, alpha = acc.get_privacy_spent(delta=delta)
        else:
            rdp = _opacus_rdp_vector(hist, orders)
            for eps0, count in pure:
                rdp = rdp + count * _rr_rdp(eps0, np.asarray(orders))
            eps, alpha = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    on_boundary = bool(alpha == orders[0] or alpha == orders[-1])
    if on_boundary:
        log.warning("RDP optimal order %s is on the edge of the order grid; epsilon %.4f is a valid but possibly "
                    "loose bound (compare the PRV and PLD numbers)", alpha, eps)
    return float(eps), float(alpha), on_boundary


def epsilon_from_history(history: Sequence[Sequence[float]], delta: float, accountant: str = "prv",
                         pure_events: PureEvents = ()) -> float:
    """Epsilon at ``delta`` for a history loaded into a fresh Opacus accountant.

    Args:
        history: ``[(noise_multiplier, sample_rate, steps), ...]``.
        delta: target delta.
        accountant: ``"prv"`` (Opacus' default, tighter) or ``"rdp"``.
        pure_events: ``(epsilon0, count)`` pure-DP events (see module docstring for how each accountant adds them).

    Returns:
        epsilon (0.0 when nothing has been spent).
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    _check_delta(delta)
    return _epsilon_cached(tuple(normalize_history(history)), float(delta), accountant,
                           tuple(normalize_pure(pure_events)))


@functools.lru_cache(maxsize=256)
def _epsilon_cached(hist: tuple, delta: float, accountant: str, pure: tuple) -> float:
    if accountant == "rdp":
        return rdp_details(hist, delta, pure)[0]
    from opacus.accountants import PRVAccountant

    eps = 0.0
    if hist:
        acc = PRVAccountant()
        acc.history = list(hist)
        eps = float(acc.get_epsilon(delta=delta))
    return eps + sum(e * c for e, c in pure)


def cross_check_epsilon(history: Sequence[Sequence[float]], delta: float, pure_events: PureEvents = ()) -> dict:
    """Independent epsilons from Google's dp-accounting (RDP and PLD), add/remove-one adjacency.

    Args:
        history: DP-SGD history segments, each composed as ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``.
        delta: target delta.
        pure_events: ``(epsilon0, count)`` pure-DP events (zCDP in RDP; worst-case (eps0, 0) PLD in PLD).

    Returns:
        ``{"rdp": eps, "rdp_order": alpha, "pld": eps, "pld_basic": eps, "library": "dp-accounting <version>"}``;
        ``pld_basic`` composes the pure events by basic composition (PLD of the DP-SGD history + sum of
        ``count * epsilon0``), the same way as the PRV headline, so the two are directly comparable.
    """
    import dp_accounting
    from dp_accounting.pld import common as pld_common
    from dp_accounting.pld import privacy_loss_distribution as pld_lib
    from dp_accounting.rdp import RdpAccountant

    _check_delta(delta)
    hist, pure = normalize_history(history), normalize_pure(pure_events)
    version = importlib.metadata.version("dp-accounting")
    if not hist and not pure:
        return {"rdp": 0.0, "rdp_order": float("nan"), "pld": 0.0, "pld_basic": 0.0,
                "library": f"dp-accounting {version}"}
    events = [dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in hist]
    events += [dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(eps0 ** 2 / 2), count)
               for eps0, count in pure]
    rdp_acc = RdpAccountant()
    rdp_acc.compose(dp_accounting.ComposedDpEvent(events))
    rdp_eps, rdp_order = rdp_acc.get_epsilon_and_optimal_order(delta)

    pld = None
    for sigma, q, steps in hist:
        part = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q,
                                               value_discretization_interval=PLD_DISCRETIZATION).self_compose(steps)
        pld = part if pld is None else pld.compose(part)
    basic = (float(pld.get_epsilon_for_delta(delta)) if pld is not None else 0.0) + sum(e * c for e, c in pure)
    for eps0, count in pure:
        part = pld_lib.from_privacy_parameters(pld_common.DifferentialPrivacyParameters(eps0, 0.0),
                                               value_discretization_interval=PLD_DISCRETIZATION).self_compose(count)
        pld = part if pld is None else pld.compose(part)
    return {"rdp": float(rdp_eps), "rdp_order": float(rdp_order), "pld": float(pld.get_epsilon_for_delta(delta)),
            "pld_basic": basic, "library": f"dp-accounting {version}"}


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, total_steps: int,
                               accountant: str = "prv", epsilon_tolerance: float = 0.01) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) whose planned schedule stays within ``target_epsilon``.

    Call this ONCE per site for the whole planned schedule (all rounds x local steps), never per round.

    Args:
        target_epsilon: epsilon the site may spend over the whole planned schedule.
        delta: target delta.
        sample_rate: Poisson sampling rate q = batch_size / N.
        total_steps: planned DP-SGD steps across all rounds.
        accountant: ``"prv"`` or ``"rdp"``.
        epsilon_tolerance: binary-search precision (Opacus' ``get_noise_multiplier``).

    Returns:
        The noise multiplier sigma.
    """
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    _check_delta(delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r} (q = batch_size / N)")
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a whole number >= 1, got {total_steps!r}")
    return _calibrate_cached(float(target_epsilon), float(delta), float(sample_rate), int(total_steps), accountant,
                             float(epsilon_tolerance))


@functools.lru_cache(maxsize=64)
def _calibrate_cached(target_epsilon: float, delta: float, sample_rate: float, total_steps: int, accountant: str,
                      epsilon_tolerance: float) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus warns about boundary RDP orders while bracketing sigma
            sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                         sample_rate=sample_rate, steps=int(total_steps), accountant=accountant,
                                         epsilon_tolerance=epsilon_tolerance)
    except ValueError as exc:
        raise ValueError(f"cannot reach epsilon={target_epsilon} at delta={delta} with q={sample_rate} over "
                         f"{total_steps} steps ({exc}); raise target-epsilon or lower the number of steps") from exc
    log.info("calibrated noise multiplier %.4f for eps=%.3g delta=%.3g q=%.4g steps=%d (%s)", sigma,
             target_epsilon, delta, sample_rate, total_steps, accountant)
    return float(sigma)
