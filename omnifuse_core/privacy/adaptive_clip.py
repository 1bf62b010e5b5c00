"""Adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially private learning with adaptive clipping").

Each DP-SGD step also releases a noisy count of the batch's *unclipped* per-sample gradients and moves the clip
norm geometrically towards the target quantile γ of the per-sample gradient norms::

    b̃ = (Σ_i (1[‖g_i‖ ≤ C] − ½) + N(0, σ_b²)) / B + ½          B = q·N, the expected batch size
    C ← C · exp(−η_C · (b̃ − γ))

The count is *centered* (``b_i − ½``): adding or removing one patient changes it by exactly ½ whether or not that
patient was clipped, so the count query has sensitivity ½ and, with noise σ_b, the Gaussian noise multiplier 2σ_b.
The denominator is the public B, never the batch's actual size (which would release the Poisson draw unprotected).

Noise split (the paper's Theorem 1): for the total multiplier σ that the accountant, the ledger and the calibration
use, the gradient sum gets ``σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½)`` (relative to C). One patient moves the pair
(clipped sum / C, count) by at most (1, ½) in L2, so the two Gaussian releases of a step together are one Gaussian
mechanism with multiplier ``(σ_Δ⁻² + (2σ_b)⁻²)^(−½) = σ``: the per-step (Poisson-subsampled) privacy loss is exactly
that of fixed-clip DP-SGD at σ, and every ε in the ledger stays exact. C_t depends only on earlier noisy releases.

Why not ``opacus.optimizers.AdaClipDPOptimizer`` (Opacus 1.6): it divides the noisy count by the batch's actual
size (data-dependent under Poisson sampling, unprotected, and 0 for an empty batch) and uses the 2σ_b split with an
uncentered count, whose sensitivity is 1 under add/remove adjacency: the real multiplier would then be
``(σ_Δ⁻² + σ_b⁻²)^(−½) < σ``, i.e. more privacy loss than accounted. See docs/privacy.md "Adaptive clipping".
"""
from __future__ import annotations

import math
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: the ledger and report tooling read this module too
    import torch

COUNT_NOISE_DIVISOR = 20.0  # the paper's default σ_b = expected batch size / 20


@dataclass(frozen=True)
class AdaptiveClip:
    """Adaptive-clipping settings (config keys ``clip-quantile``, ``clip-initial``, ``clip-learning-rate``,
    ``clip-count-noise``). ``count_noise`` is σ_b in counts, already resolved (> 0); ``initial`` is C_0."""

    quantile: float
    initial: float
    learning_rate: float
    count_noise: float

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"config key 'clip-quantile' must lie in (0, 1), got {self.quantile!r}")
        for key, value in (("clip-initial", self.initial), ("clip-learning-rate", self.learning_rate),
                           ("clip-count-noise", self.count_noise)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"config key '{key}' must be a finite number > 0, got {value!r}")


def count_noise_for(configured: float, expected_batch: float) -> float:
    """σ_b: ``clip-count-noise`` when > 0, else (0 = auto) the paper's ``expected batch size / 20``."""
    if configured < 0 or not math.isfinite(configured):
        raise ValueError(f"config key 'clip-count-noise' must be >= 0 (0 = expected batch size / 20), got {configured!r}")
    return float(configured) if configured > 0 else float(expected_batch) / COUNT_NOISE_DIVISOR


def split_noise(noise_multiplier: float, count_noise: float) -> float:
    """σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−½): the gradient's multiplier so that gradient + count release cost exactly σ.

    Raises:
        ValueError: ``count_noise <= noise_multiplier / 2`` (no split exists); the message says what to change.
    """
    sigma, sb = float(noise_multiplier), float(count_noise)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"noise multiplier must be > 0, got {noise_multiplier!r}")
    if not sb > sigma / 2:
        raise ValueError(f"adaptive clipping needs clip-count-noise (sigma_b = {sb:.4g}) > noise-multiplier / 2 = "
                         f"{sigma / 2:.4g} (Andrew et al., Theorem 1): raise clip-count-noise above {sigma / 2:.4g}, "
                         "or lower the noise (a larger target-epsilon or fewer planned steps)")
    return (sigma ** -2 - (2.0 * sb) ** -2) ** -0.5


def combined_multiplier(gradient_multiplier: float, count_noise: float) -> float:
    """The one Gaussian multiplier equivalent to σ_Δ on the sum plus σ_b on the centered count (sensitivity ½)."""
    return (gradient_multiplier ** -2 + (2.0 * count_noise) ** -2) ** -0.5


def centered_count(unclipped: int, batch: int) -> float:
    """Σ_i (b_i − ½) over the batch: changes by exactly ±½ when one patient is added or removed."""
    return float(unclipped) - 0.5 * float(batch)


def noisy_fraction(unclipped: int, batch: int, noise: float, expected_batch: float) -> float:
    """b̃: the noisy fraction of unclipped gradients, over the public expected batch size B."""
    return (centered_count(unclipped, batch) + float(noise)) / float(expected_batch) + 0.5


def geometric_update(clip: float, fraction: float, quantile: float, learning_rate: float) -> float:
    """C · exp(−η_C (b̃ − γ))."""
    return float(clip) * math.exp(-float(learning_rate) * (float(fraction) - float(quantile)))


@dataclass
class AdaptiveState:
    """What one optimizer's adaptive clipping has done so far (read with :func:`clip_summary`)."""

    settings: AdaptiveClip
    noise_multiplier: float  # σ, what the accountant records
    gradient_multiplier: float  # σ_Δ, what the gradient noise uses
    expected_batch: float
    device: torch.device
    clip: float = 0.0
    pending: tuple[int, int] | None = None
    steps: int = 0
    low: float = math.inf
    high: float = 0.0
    fractions: list = field(default_factory=list)

    def observe(self, unclipped: int, batch: int) -> None:
        """Called by clip-and-accumulate with the step's (unclipped, batch) counts (never released as such)."""
        self.pending = (int(unclipped), int(batch))

    def update(self, noise: float) -> float:
        """Release the noisy fraction of this step and return the next step's C."""
        if self.pending is None:
            raise RuntimeError("adaptive clipping: add_noise ran without a clip-and-accumulate of the same step")
        unclipped, batch = self.pending
        self.pending = None
        frac = noisy_fraction(unclipped, batch, noise, self.expected_batch)
        self.fractions.append(frac)
        self.steps += 1
        self.clip = geometric_update(self.clip, frac, self.settings.quantile, self.settings.learning_rate)
        self.low, self.high = min(self.low, self.clip), max(self.high, self.clip)
        return self.clip


def attach(dp_optimizer, settings: AdaptiveClip, *, noise_multiplier: float, expected_batch: float) -> AdaptiveState:
    """Turn an Opacus ``DPOptimizer`` (wired by :func:`omnifuse_core.privacy.dpsgd.make_private`) adaptive.

    The optimizer keeps ``noise_multiplier = σ`` (what its step hook hands the accountant); its ``add_noise`` is
    replaced by one that adds σ_Δ·C to the clipped sum, releases the noisy centered count and updates C. The
    clip-and-accumulate must be ``dpsgd._clip_and_accumulate``, which reports the step's counts.
    """
    import torch

    from .dpsgd import _clip_and_accumulate

    sigma_delta = split_noise(noise_multiplier, settings.count_noise)
    p = dp_optimizer.params[0] if dp_optimizer.params else None
    state = AdaptiveState(settings, float(noise_multiplier), sigma_delta, float(expected_batch),
                          p.device if p is not None else torch.device("cpu"), clip=float(settings.initial),
                          low=float(settings.initial), high=float(settings.initial))
    dp_optimizer.max_grad_norm = float(settings.initial)
    dp_optimizer.omnifuse_adaptive = state
    dp_optimizer.clip_and_accumulate = types.MethodType(_clip_and_accumulate, dp_optimizer)
    dp_optimizer.add_noise = types.MethodType(_add_noise, dp_optimizer)
    return state


def _add_noise(self) -> None:
    """Opacus' ``DPOptimizer.add_noise`` with std σ_Δ·C, then the noisy centered count and the update of C."""
    import torch
    from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

    state: AdaptiveState = self.omnifuse_adaptive
    std = state.gradient_multiplier * float(self.max_grad_norm)
    for p in self.params:
        _check_processed_flag(p.summed_grad)
        noise = _generate_noise(std=std, reference=p.summed_grad, generator=self.generator,
                                secure_mode=self.secure_mode)
        p.grad = (p.summed_grad + noise).view_as(p)
        _mark_as_processed(p.summed_grad)
    ref = torch.zeros((1,), dtype=torch.float64, device=state.device)
    count_noise = float(_generate_noise(std=state.settings.count_noise, reference=ref, generator=self.generator,
                                        secure_mode=self.secure_mode)[0])
    self.max_grad_norm = state.update(count_noise)


def clip_summary(dp_optimizer) -> dict:
    """The ledger/report fields of an adaptive optimizer's steps (``{}`` for fixed clipping)."""
    state: AdaptiveState | None = getattr(dp_optimizer, "omnifuse_adaptive", None)
    if state is None:
        return {}
    s = state.settings
    fr = state.fractions
    return {"clipping": "adaptive", "clip_quantile": s.quantile, "clip_learning_rate": s.learning_rate,
            "clip_count_noise": s.count_noise, "clip_noise_multiplier": state.gradient_multiplier,
            "clip_initial": s.initial, "clip_final": state.clip, "clip_min": state.low, "clip_max": state.high,
            "clip_steps": state.steps, "clip_mean_unclipped": (sum(fr) / len(fr)) if fr else None}


def settings_for(cfg: Any, expected_batch: float, noise_multiplier: float, *, initial: Optional[float] = None
                 ) -> Optional[AdaptiveClip]:
    """The :class:`AdaptiveClip` of a run config (None unless ``max-grad-norm: adaptive``).

    Args:
        cfg: the run's ``Config``.
        expected_batch: B = q·N.
        noise_multiplier: σ of the schedule (checked against σ_b: :func:`split_noise`).
        initial: C to start from (a later round resumes from the last C); None = ``clip-initial``.

    Raises:
        ValueError: σ_b <= σ / 2 or a bad setting; the message names the config key.
    """
    if not cfg.adaptive_clip:
        return None
    settings = AdaptiveClip(cfg.clip_quantile, float(initial if initial is not None else cfg.clip_initial),
                            cfg.clip_learning_rate, count_noise_for(cfg.clip_count_noise, expected_batch))
    split_noise(noise_multiplier, settings.count_noise)
    return settings


def ledger_fields(settings: AdaptiveClip, noise_multiplier: float) -> dict:
    """The adaptive fields of a ledger event, from the settings a round trained with."""
    return {"clipping": "adaptive", "clip_quantile": settings.quantile, "clip_learning_rate": settings.learning_rate,
            "clip_count_noise": settings.count_noise,
            "clip_noise_multiplier": split_noise(noise_multiplier, settings.count_noise), "clip_initial": settings.initial}


def resume_clip(events: Sequence[dict], run_id: Optional[str]) -> Optional[float]:
    """The clip norm the last adaptive DP-SGD event of ``run_id`` ended with (None: none in the ledger)."""
    last = [e for e in events if e.get("type") == "dpsgd" and e.get("clipping") == "adaptive"
            and e.get("run_id") == run_id]
    return float(last[-1]["max_grad_norm"]) if last else None


def mechanism_entry(events: Sequence[dict]) -> Optional[dict]:
    """The report's ``mechanism.adaptive_clipping`` block (None when no event clipped adaptively)."""
    ada = [e for e in events if e.get("type") == "dpsgd" and e.get("clipping") == "adaptive"]
    if not ada:
        return None
    uniq = lambda key: sorted({e[key] for e in ada})  # noqa: E731
    return {"method": "adaptive clipping (Andrew et al., NeurIPS 2021): geometric update towards the target "
                      "quantile of per-sample gradient norms, from a noisy centered unclipped count",
            "target_quantile": uniq("clip_quantile"), "learning_rate": uniq("clip_learning_rate"),
            "count_noise_std": uniq("clip_count_noise"), "gradient_noise_multiplier": uniq("clip_noise_multiplier"),
            "initial_clip": ada[0]["clip_initial"], "final_clip": ada[-1]["max_grad_norm"],
            "clip_per_round": [[e.get("round"), e["clip_initial"], e["max_grad_norm"]] for e in ada],
            "accounting": "the gradient sum (noise multiplier sigma_delta) and the count (std sigma_b, sensitivity "
                          "1/2) of a step are one Gaussian mechanism with multiplier noise_multiplier: "
                          "1/sigma^2 = 1/sigma_delta^2 + 1/(2 sigma_b)^2; accounted at sigma"}
