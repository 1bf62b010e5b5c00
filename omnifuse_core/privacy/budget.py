"""Site-side round guard: project epsilon before a round, refuse over the cap, record after (DESIGN §6).

Flow per round (in the ClientApp): ``budget = SiteBudget(ledger, delta, max_epsilon)`` (a corrupt ledger raises
:class:`~omnifuse_core.privacy.ledger.LedgerCorrupt` here) -> ``budget.check_round(...)`` (raises
:class:`BudgetExceeded`) -> train -> ``budget.record_round(...)`` **before** the reply leaves the site.
The cap applies to the lifetime spend on this dataset: every event in the ledger, across runs.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

from .accounting import ACCOUNTANTS, epsilon_from_history
from .ledger import DPSGD, PrivacyLedger, validate_event
from .noisy_max import pure_events_from

log = logging.getLogger(__name__)


class BudgetExceeded(RuntimeError):
    """Running the planned round would take the site past its own ``max-epsilon``."""


ADAPTIVE_FIELDS = ("clipping", "clip_quantile", "clip_learning_rate", "clip_count_noise", "clip_noise_multiplier",
                   "clip_initial")


def dpsgd_event(noise_multiplier: float, sample_rate: float, steps: int, *, max_grad_norm: float,
                round: int | None = None, run_id: str | None = None, clip: dict | None = None) -> dict:
    """The ledger event for ``steps`` DP-SGD steps at one (sigma, q).

    ``clip``: adaptive clipping's :func:`~omnifuse_core.privacy.adaptive_clip.clip_summary` (None or empty = fixed
    clipping, whose event is unchanged); its ``ADAPTIVE_FIELDS`` are recorded and ``max_grad_norm`` should be the
    clip norm at the end of the steps. σ stays the accounted multiplier (the noise split costs exactly σ).
    """
    ev = {"type": DPSGD, "noise_multiplier": float(noise_multiplier), "sample_rate": float(sample_rate),
          "steps": int(steps), "max_grad_norm": float(max_grad_norm), "round": round, "run_id": run_id}
    if clip:
        ev.update({k: clip[k] for k in ADAPTIVE_FIELDS})
    validate_event(ev)
    return ev


def epsilon_of_events(events: Sequence[dict], delta: float, accountant: str = "prv") -> float:
    """Epsilon of a list of ledger events (DP-SGD history + pure-DP noisy-max events) with a fresh accountant."""
    hist = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in events if e["type"] == DPSGD]
    pure = pure_events_from([e for e in events if e["type"] != DPSGD])
    return epsilon_from_history(hist, delta, accountant, pure_events=pure)


class SiteBudget:
    """A site's privacy budget guard over its ledger.

    Args:
        ledger: the site's :class:`PrivacyLedger` for this dataset.
        delta: target delta (choose it much smaller than 1/N).
        max_epsilon: the hospital's own cap (node-config ``max-epsilon``); ``inf`` disables the cap.
        accountant: ``"prv"`` or ``"rdp"`` for the numbers compared with the cap.
        site: site name, used in messages.
    """

    def __init__(self, ledger: PrivacyLedger, delta: float, max_epsilon: float, accountant: str = "prv",
                 site: str = "") -> None:
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        if not (0 < delta < 1):
            raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
        if math.isnan(max_epsilon) or max_epsilon <= 0:
            raise ValueError(f"max-epsilon must be > 0, got {max_epsilon!r} (node-config key max-epsilon)")
        self.ledger, self.delta, self.max_epsilon = ledger, float(delta), float(max_epsilon)
        self.accountant, self.site = accountant, site or ledger.fingerprint

    def spent(self) -> float:
        """Epsilon spent so far on this dataset (all ledger events, all runs)."""
        return epsilon_of_events(self.ledger.events(), self.delta, self.accountant)

    def remaining(self) -> float:
        """``max_epsilon - spent()`` (may be negative only if the cap was lowered after spending)."""
        return self.max_epsilon - self.spent()

    def project(self, noise_multiplier: float, sample_rate: float, steps: int,
                extra_events: Sequence[dict] = ()) -> float:
        """Epsilon the site would have spent if this round ran.

        Args:
            noise_multiplier: sigma of the round.
            sample_rate: Poisson rate q of the round.
            steps: planned DP-SGD steps in the round.
            extra_events: planned noisy-max events of the round (e.g. ``noisy_max_event(b, count=epochs)``).

        Returns:
            The projected cumulative epsilon.
        """
        planned = dpsgd_event(noise_multiplier, sample_rate, steps, max_grad_norm=1.0)
        for ev in extra_events:
            validate_event(ev)
        return epsilon_of_events([*self.ledger.events(), planned, *extra_events], self.delta, self.accountant)

    def check_round(self, noise_multiplier: float, sample_rate: float, steps: int,
                    extra_events: Sequence[dict] = ()) -> float:
        """Raise :class:`BudgetExceeded` if the round would exceed the cap; else return the projected epsilon."""
        projected = self.project(noise_multiplier, sample_rate, steps, extra_events)
        if projected > self.max_epsilon:
            raise BudgetExceeded(
                f"site '{self.site}': running this round would bring the privacy loss on dataset "
                f"{self.ledger.fingerprint} to epsilon={projected:.3f} at delta={self.delta:g} ({self.accountant}), "
                f"above this site's cap max-epsilon={self.max_epsilon:g} (already spent: {self.spent():.3f}). "
                "The round was refused and nothing was trained. To continue, the hospital may raise max-epsilon in "
                "its node config (a privacy decision), or the run may use more noise / fewer rounds or steps.")
        log.info("site %s: projected epsilon %.3f <= cap %.3f", self.site, projected, self.max_epsilon)
        return projected

    def record_round(self, noise_multiplier: float, sample_rate: float, steps: int, *, max_grad_norm: float,
                     round: int | None = None, run_id: str | None = None,
                     extra_events: Sequence[dict] = (), clip: dict | None = None) -> float:
        """Append the round's DP-SGD event and noisy-max events to the ledger; return the new cumulative epsilon.

        Call after training and before the reply leaves the site. Recording is never refused: what was spent
        was spent (a round that overshot its projection is logged as a warning). ``clip``: see :func:`dpsgd_event`.
        """
        events = [dpsgd_event(noise_multiplier, sample_rate, steps, max_grad_norm=max_grad_norm, round=round,
                              run_id=run_id, clip=clip)]
        for ev in extra_events:
            ev = dict(ev)
            if ev.get("round") is None:
                ev["round"] = round
            if ev.get("run_id") is None:
                ev["run_id"] = run_id
            events.append(ev)
        for ev in events:
            self.ledger.append(ev)
        spent = self.spent()
        if spent > self.max_epsilon:
            log.warning("site %s: recorded spending epsilon=%.3f exceeds the cap %.3f", self.site, spent,
                        self.max_epsilon)
        return spent
