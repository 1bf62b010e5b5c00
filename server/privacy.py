"""Server-side privacy: the roll-up of the sites' own reports, refusals, and the optional central DP step.

**Sites' example-level DP** is decided, enforced and accounted at each site (``client/site_privacy.py``). The
server only collects what each site reports (its privacy report JSON and ``privacy.*`` metrics), records which
site refused a round and why, and writes ``RUN/privacy/`` (``<site>.json`` per site, ``summary.json``,
``privacy.md``, ``privacy.html``) after every round. Epsilons are never summed across sites.

**Central DP** (``central-dp: true``, client-level adjacency: add/remove one whole site) is DP-FedAvg with
server-side fixed clipping (McMahan et al. 2018), the mechanism of Flower's
``DifferentialPrivacyServerSideFixedClipping``: each accepted site's update ``w_site - w_global`` is clipped to
L2 norm ``C`` (``central-clip-norm``), the clipped updates are summed and divided by the fixed number ``m`` of
sites sampled for the round, and Gaussian noise of standard deviation ``sigma * C / m``
(``central-noise-multiplier``) is added. We apply it as our aggregation rule instead of wrapping the strategy
with Flower's class because that wrapper (flwr 1.41) (1) skips the whole aggregation when any site replies with an
error — one site refusing its privacy budget would stop the federation from learning; (2) adds noise calibrated
for a uniform mean, while our default rules weight sites by their counts (a larger sensitivity); and (3) its
accountant accepts only ``FedAvg.aggregate_train``. So under central DP the aggregate is the uniform mean of
clipped updates (refusing or rejected sites contribute zero, ``m`` stays fixed), replacing ``strategy``.
Its client-level epsilon is accounted from ``[(sigma, 1.0, releases)]`` (no sampling amplification is claimed)
and reported separately in ``summary.json`` under ``central_dp``.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from omnifuse_core.config import Config
from omnifuse_core.privacy.accounting import cross_check_epsilon, epsilon_from_history
from omnifuse_core.privacy.report import (REPORT_INFO_KEY, federation_summary, load_report_source,
                                         secure_aggregation_entry, write_reports)

from .aggregation import Aggregator, SiteUpdate, Weights

log = logging.getLogger(__name__)
REFUSAL_MARKERS = ("PrivacyRefused", "BudgetExceeded", "LedgerCorrupt")


def is_privacy_refusal(reason: str) -> bool:
    """True when a rejected reply's reason is a site's privacy refusal (budget cap, corrupt ledger)."""
    return any(marker in reason for marker in REFUSAL_MARKERS)


class CentralDPAggregator(Aggregator):
    """DP-FedAvg with server-side fixed clipping (see module docstring).

    Args:
        noise_multiplier: sigma (``central-noise-multiplier``), > 0.
        clip_norm: C (``central-clip-norm``), > 0.
        rng: numpy generator for the noise (None = fresh OS entropy; pass one only in tests).
    """

    name = "central_dp"

    def __init__(self, noise_multiplier: float, clip_norm: float, rng: Optional[np.random.Generator] = None) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"config key 'central-noise-multiplier' must be > 0, got {noise_multiplier!r}")
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"config key 'central-clip-norm' must be > 0, got {clip_norm!r}")
        self.sigma, self.clip = float(noise_multiplier), float(clip_norm)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.sampled = 0
        self.last: dict = {}

    def begin_round(self, sampled: int) -> None:
        """Set m, the number of sites the round was sent to (the fixed denominator)."""
        self.sampled = int(sampled)

    def aggregate(self, global_w: Mapping[str, np.ndarray], updates: list[SiteUpdate],
                  groups: Mapping[str, str]) -> Weights:
        m = max(self.sampled, len(updates), 1)
        total = {n: np.zeros(np.shape(a), dtype=np.float64) for n, a in global_w.items()}
        clipped = 0
        for u in updates:
            delta = {n: u.arrays[n].astype(np.float64) - np.asarray(g, dtype=np.float64) for n, g in global_w.items()}
            norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
            scale = min(1.0, self.clip / norm) if norm > 0 else 1.0
            clipped += scale < 1.0
            for n, d in delta.items():
                total[n] += d * scale
        std = self.sigma * self.clip / m
        out = {n: (np.asarray(global_w[n], dtype=np.float64) + t / m + self.rng.normal(0.0, std, size=t.shape))
               .astype(np.float32) for n, t in total.items()}
        self.last = {"released": True, "sampled": m, "contributing": len(updates), "clipped": int(clipped),
                     "noise_std": std, "noise_multiplier": self.sigma, "clip_norm": self.clip}
        log.info("central DP: %d/%d site updates (%d clipped to %.3g), Gaussian noise std %.4g", len(updates), m,
                 clipped, self.clip, std)
        return out


def central_accounting(cfg: Config, releases: int) -> dict:
    """Client-level epsilon of ``releases`` central-DP aggregates (no sampling amplification claimed)."""
    hist = [(cfg.central_noise_multiplier, 1.0, releases)] if releases else []
    with np.errstate(divide="ignore"):  # Opacus' PRV takes log(1 - q) = log(0) at q = 1 (harmless)
        eps = epsilon_from_history(hist, cfg.delta, cfg.accountant)
        eps_rdp = epsilon_from_history(hist, cfg.delta, "rdp")
    return {"level": "client (add/remove one whole site)", "mechanism": "DP-FedAvg, server-side fixed clipping",
            "noise_multiplier": cfg.central_noise_multiplier, "clip_norm": cfg.central_clip_norm,
            "sample_rate": 1.0, "releases": releases, "delta": cfg.delta, "accountant": cfg.accountant,
            "epsilon": eps, "epsilon_rdp": eps_rdp,
            "epsilon_cross_check": cross_check_epsilon(hist, cfg.delta),
            "note": "client-level guarantee of the aggregate; separate from, and never combined with, the "
                    "sites' example-level epsilons"}


class PrivacyRollup:
    """Collects site reports and refusals each round and writes ``RUN/privacy/`` and ``metrics.json`` privacy.

    Args:
        cfg: the run configuration.
        run_dir: the run directory (existing site reports there are kept, e.g. on resume).
    """

    def __init__(self, cfg: Config, run_dir: str | Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.enabled = bool(cfg.dp or cfg.central_dp)
        self.reports: dict[str, dict] = {}
        if self.enabled and (self.run_dir / "privacy").is_dir():
            try:
                self.reports = {r["site"]: r for r in load_report_source(self.run_dir / "privacy")[0]}
            except (OSError, ValueError) as exc:
                log.warning("previous privacy reports in %s are unreadable (%s); they will be rewritten",
                            self.run_dir / "privacy", exc)
        self.central: Optional[CentralDPAggregator] = (
            CentralDPAggregator(cfg.central_noise_multiplier, cfg.central_clip_norm) if cfg.central_dp else None)

    def collect(self, train_info: Mapping[str, Mapping], rejected: Mapping[str, str]) -> dict:
        """Take this round's site reports; return the round's privacy entries for metrics.json."""
        for site, info in train_info.items():
            text = info.get(REPORT_INFO_KEY)
            if not text:
                if self.cfg.dp:
                    log.warning("site '%s' sent no privacy report although dp is on", site)
                continue
            try:
                report = json.loads(text)
            except json.JSONDecodeError as exc:
                log.warning("site '%s' sent an unreadable privacy report (%s); kept the previous one", site, exc)
                continue
            self.reports[site] = {**report, "site": site}
        entry: dict = {}
        refused = {s: r for s, r in rejected.items() if is_privacy_refusal(r)}
        if refused:
            for site, reason in refused.items():
                log.warning("round refused by site '%s' (privacy): %s", site, reason)
            entry["privacy_refused"] = refused
        if self.central is not None:
            entry["central_dp"] = dict(self.central.last) or {"released": False}
            self.central.last = {}
        return entry

    def write(self, rounds: list[dict]) -> Optional[dict]:
        """Write ``RUN/privacy/`` from the latest report of every site; returns the summary (None if DP is off)."""
        if not self.enabled:
            return None
        central = None
        if self.central is not None:
            releases = sum(1 for r in rounds if (r.get("central_dp") or {}).get("released"))
            central = central_accounting(self.cfg, releases)
        reports = [self.reports[s] for s in sorted(self.reports)]
        summary = federation_summary(reports, central)
        summary["secure_aggregation"] = secure_aggregation_entry(self.cfg.secure_aggregation, {
            k: v for k, v in self.cfg.to_flat().items() if k.startswith("secagg-")})
        write_reports(self.run_dir, reports, summary)
        return summary
