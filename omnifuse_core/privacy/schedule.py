"""Budget-aware DP schedule (config ``dp-schedule: auto``): each site picks its own expected batch B.

The rule (docs/privacy.md, "Budget-aware schedule"), deterministic and computed from numbers the site already has
(ε, δ, its training records N, the run's rounds, its local epochs, the trainable parameter count P):

1. candidates B = 16, 32, 64, ... (powers of two), each with ``B <= N / 2`` (q <= 1/2), ``B <= MAX_BATCH`` (memory:
   Opacus keeps B per-sample gradients of P numbers) and ``local-epochs * int(N / B) >= MIN_STEPS_PER_ROUND``;
2. for each, σ is calibrated for that whole schedule (q = B/N, T = rounds × local-epochs × int(1/q) steps, the
   DP-SGD share of ε) and the pre-flight's per-step noise ratio ``r = σ·√P / B`` is computed;
3. the pick is the candidate with the smallest r (ties: the smaller B). σ grows slower than B (≈ √B at a fixed
   number of epochs), so r falls as B grows and the pick is the largest admissible B; the step floor keeps it
   from trading all the steps away. Local epochs and lr are kept as configured (see the docs for why).

The constants come from the synthetic demo federation's measurements (BENCHMARKS.md, "Issue 14", B5), not from any
site's private data: ``MIN_STEPS_PER_ROUND = 6`` is the fewest steps per round with which B5's DP profile trained a
useful model (hospital_d: 280 training patients, batch 128, 3 local epochs = 3 × 2 steps); the verdict thresholds
are the pre-flight's (``dp-max-noise-ratio``, limit 5 from B5). Nothing here imports Flower.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

from .accounting import calibrate_noise_multiplier
from .dpsgd import planned_steps_per_epoch
from .preflight import check_noise

log = logging.getLogger(__name__)

FIXED, AUTO = "fixed", "auto"
SCHEDULES = (FIXED, AUTO)
MIN_BATCH = 16  # smallest candidate expected batch
MAX_BATCH = 1024  # largest candidate: per-sample gradients are B x P numbers in memory
MIN_STEPS_PER_ROUND = 6  # B5: the DP profile trained with 3 epochs x 2 steps per round at its smallest site
RULE = (f"smallest noise ratio sigma*sqrt(P)/B over B = {MIN_BATCH}, {2 * MIN_BATCH}, ... <= min(N/2, {MAX_BATCH}) "
        f"with local-epochs*int(N/B) >= {MIN_STEPS_PER_ROUND} steps per round; sigma calibrated for each whole "
        "schedule; local-epochs and lr as configured")


@dataclass(frozen=True)
class Candidate:
    """One candidate expected batch and its calibrated schedule."""

    batch_size: int
    sample_rate: float
    steps_per_round: int
    total_steps: int
    noise_multiplier: float
    ratio: float
    verdict: str


@dataclass(frozen=True)
class AutoSchedule:
    """The site's choice: the picked expected batch, the kept epochs / lr, the candidate table and why."""

    batch_size: int
    sample_rate: float
    local_epochs: int
    lr: float
    noise_multiplier: float
    ratio: float
    verdict: str
    n_train: int
    n_params: int
    rounds: int
    epsilon: float  # the DP-SGD share of target-epsilon the candidates were calibrated for
    delta: float
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)
    rule: str = RULE

    def to_dict(self) -> dict:
        out = asdict(self)
        out["candidates"] = [asdict(c) for c in self.candidates]
        out["dp_schedule"] = AUTO
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "AutoSchedule":
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "candidates"}
        return cls(**fields, candidates=tuple(Candidate(**c) for c in d.get("candidates", ())))

    def table(self) -> str:
        """The candidate table as text, the pick marked with ``*``."""
        rows = [f"{'':1} {'B':>5} {'q':>7} {'steps/round':>11} {'sigma':>7} {'ratio':>7}  verdict"]
        for c in self.candidates:
            mark = "*" if c.batch_size == self.batch_size else " "
            rows.append(f"{mark} {c.batch_size:>5} {c.sample_rate:>7.4f} {c.steps_per_round:>11} "
                        f"{c.noise_multiplier:>7.3f} {c.ratio:>7.2f}  {c.verdict}")
        return "\n".join(rows)

    def message(self, site: str) -> str:
        return (f"site '{site}': dp-schedule auto picked batch-size {self.batch_size} (q = {self.sample_rate:.4f}, "
                f"noise ratio {self.ratio:.2f}, {self.verdict}) for N = {self.n_train}, P = {self.n_params:,}, "
                f"epsilon {self.epsilon:.3g} (DP-SGD share), {self.rounds} rounds x {self.local_epochs} local epochs, "
                f"lr {self.lr:g}; rule: {self.rule}\n{self.table()}")


def candidate_batches(n_train: int, local_epochs: int) -> list[int]:
    """The admissible expected batches of the rule (may be empty for a very small site)."""
    out, b = [], MIN_BATCH
    while b <= min(n_train // 2, MAX_BATCH):
        if local_epochs * planned_steps_per_epoch(n_train, b)[1] >= MIN_STEPS_PER_ROUND:
            out.append(b)
        b *= 2
    return out


def choose_schedule(n_train: int, *, epsilon: float, delta: float, rounds: int, local_epochs: int, lr: float,
                    n_params: int, limit: float, accountant: str = "prv") -> AutoSchedule:
    """The rule's pick for one site (see the module docstring).

    Args:
        n_train: the site's training records N.
        epsilon: the ε the DP-SGD steps may spend over the whole schedule (target-epsilon less planned noisy-max).
        delta: target δ.
        rounds: planned rounds.
        local_epochs, lr: kept as configured (recorded).
        n_params: trainable parameters P (> 0).
        limit: the pre-flight limit ``dp-max-noise-ratio`` (for the verdicts).
        accountant: ``prv`` or ``rdp`` (as for the calibration).

    Raises:
        ValueError: no admissible batch (naming the smallest site size that has one), or P < 1.
    """
    if n_params < 1:
        raise ValueError("dp-schedule auto needs the model's trainable parameter count P (got 0)")
    batches = candidate_batches(n_train, local_epochs)
    if not batches:
        need = max(2 * MIN_BATCH, MIN_BATCH * math.ceil(MIN_STEPS_PER_ROUND / max(local_epochs, 1)))
        raise ValueError(f"dp-schedule auto has no admissible batch for N = {n_train} training records (needs "
                         f"N >= {need} at local-epochs {local_epochs}); set dp-schedule: fixed and a batch-size")
    cands = []
    for b in batches:
        q, per_epoch = planned_steps_per_epoch(n_train, b)
        per_round = local_epochs * per_epoch
        sigma = calibrate_noise_multiplier(epsilon, delta, q, rounds * per_round, accountant)
        chk = check_noise("", n_train=n_train, sample_rate=q, noise_multiplier=sigma, n_params=n_params,
                          steps=rounds * per_round, limit=limit)
        cands.append(Candidate(b, q, per_round, rounds * per_round, sigma, chk.ratio, chk.verdict))
    pick = min(cands, key=lambda c: (c.ratio, c.batch_size))
    return AutoSchedule(batch_size=pick.batch_size, sample_rate=pick.sample_rate, local_epochs=int(local_epochs),
                        lr=float(lr), noise_multiplier=pick.noise_multiplier, ratio=pick.ratio, verdict=pick.verdict,
                        n_train=int(n_train), n_params=int(n_params), rounds=int(rounds), epsilon=float(epsilon),
                        delta=float(delta), candidates=tuple(cands))
