"""Pre-flight check of a DP-SGD schedule: is the Gaussian noise so large against the clipped signal that the model
cannot learn? Computed by each site (or the pooled reference run) before its first step, from numbers it already
has: σ (calibrated for the planned schedule), the expected Poisson batch B = q·N, the clipping norm C and the
number of trainable parameters P.

Each DP-SGD step averages B clipped per-sample gradients (norm ≤ C each, so the mean has norm ≤ C) and adds
Gaussian noise N(0, σ²C²I_P)/B, whose norm is ≈ σ·C·√P / B. The **noise-to-signal ratio** is the noise norm over
the largest possible signal norm::

    r = σ·√P / B        (C cancels)

Over T steps the signal adds up linearly and independent noise as √T, so ``r / √T`` is the ratio of the whole
schedule's summed noise to its largest summed signal (``r_run``). Both are reported; the verdict uses the
per-step ratio ``r`` (what Adam's per-coordinate normalisation sees) with thresholds measured in BENCHMARKS.md
(B5): see docs/privacy.md, "Pre-flight check".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NoiseCheck:
    """The numbers of one site's pre-flight check and their verdict (``ok`` | ``poor`` | ``hopeless``)."""

    site: str
    n_train: int
    expected_batch: float
    sample_rate: float
    noise_multiplier: float
    n_params: int
    steps: int
    ratio: float
    ratio_run: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def message(self, limit: float, *, batch_chosen: bool = False) -> str:
        """A readable account of the numbers and what would lower the ratio.

        ``batch_chosen``: the batch was picked by ``dp-schedule: auto`` (already the lowest ratio the rule allows),
        so a larger batch-size is not offered as a fix.
        """
        head = (f"site '{self.site}': DP-SGD noise-to-signal ratio sigma*sqrt(P)/B = {self.noise_multiplier:.3g} x "
                f"sqrt({self.n_params:,}) / {self.expected_batch:.0f} = {self.ratio:.2f} per step "
                f"(limit {limit:g}; {self.steps} steps, {self.ratio_run:.3f} over the run)")
        if self.verdict == "ok":
            return head
        # what would bring r to the limit, one lever at a time (sigma also depends on q and the steps; first order)
        need = self.ratio / limit
        fixes = [f"fewer trainable parameters (P <= {int(self.n_params / need ** 2):,}: the DP profile, "
                 "configs/demo-dp.yaml, uses linear/pooled encoders)",
                 f"a larger expected batch (batch-size >= {math.ceil(self.expected_batch * need)}, at most the "
                 f"site's {self.n_train} training patients)",
                 "a larger target-epsilon, or more patients"]
        if batch_chosen:
            fixes[1] = (f"not a larger batch: dp-schedule: auto already picked B = {self.expected_batch:.0f}, the lowest "
                        "ratio its rule allows at this site (docs/privacy.md, 'Budget-aware schedule')")
        return head + ". The model would mostly follow noise. To lower it: " + "; ".join(fixes) + "."


def noise_to_signal(noise_multiplier: float, n_params: int, expected_batch: float) -> float:
    """``σ·√P / B``: the norm of one step's Gaussian noise on the mean gradient over the largest clipped signal."""
    if expected_batch <= 0 or n_params < 0:
        raise ValueError(f"need expected_batch > 0 and n_params >= 0, got {expected_batch!r}, {n_params!r}")
    return float(noise_multiplier) * math.sqrt(int(n_params)) / float(expected_batch)


def check_noise(site: str, *, n_train: int, sample_rate: float, noise_multiplier: float, n_params: int, steps: int,
                limit: float) -> NoiseCheck:
    """The pre-flight verdict: ``hopeless`` above ``limit``, ``poor`` above half of it, else ``ok``.

    Args:
        site: the site name (for messages).
        n_train: training records N.
        sample_rate: Poisson rate q (expected batch ``q·N``).
        noise_multiplier: σ of the planned schedule.
        n_params: trainable parameters P of the model DP-SGD trains.
        steps: planned DP-SGD steps of the whole run.
        limit: config key ``dp-max-noise-ratio``.
    """
    batch = float(sample_rate) * int(n_train)
    ratio = noise_to_signal(noise_multiplier, n_params, batch)
    verdict = "hopeless" if ratio > limit else "poor" if ratio > limit / 2 else "ok"
    return NoiseCheck(site=site, n_train=int(n_train), expected_batch=batch, sample_rate=float(sample_rate),
                      noise_multiplier=float(noise_multiplier), n_params=int(n_params), steps=int(steps),
                      ratio=ratio, ratio_run=ratio / math.sqrt(max(int(steps), 1)), verdict=verdict)
