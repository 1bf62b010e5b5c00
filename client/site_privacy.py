"""The site's privacy layer for one federated round (DESIGN §6). Nothing here imports flwr.

Per round, at the site and under the site's own control:

1. open the site's ledger (``<state-dir>/privacy-ledger/<fingerprint>.jsonl``) — unreadable or corrupt: refuse;
2. get the noise multiplier σ for the planned schedule — calibrated ONCE per schedule and stored in
   ``<state-dir>/privacy-calibration/<fingerprint>.json`` so later rounds, restarts and resumed runs reuse it;
3. project ε with the round's planned DP-SGD steps and noisy-max selections; refuse above the site's cap;
4. train with ``DPSettings(σ, max-grad-norm, report-noisy-max)`` (``max-grad-norm: adaptive``: the clip norm adapts,
   the gradient gets σ_Δ and the unclipped count σ_b so that each step still costs exactly σ: adaptive_clip.py);
5. append what was actually spent to the ledger (fsynced) BEFORE the reply leaves the site;
6. build the site's privacy report (no patient data) and the ``privacy.*`` metrics for the reply.

The site's cap is node config ``max-epsilon`` (set by the hospital). When the hospital set none, the cap is
``min(target-epsilon, DEFAULT_MAX_EPSILON)`` — one planned run's worth, and never more than 10 without the
hospital's explicit consent (``max-epsilon = "inf"`` disables the cap). See docs/privacy.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omnifuse_core.config import Config
from omnifuse_core.privacy import (LedgerCorrupt, PrivacyLedger, SiteBudget, calibrate_noise_multiplier,
                                   make_noisy_select, noisy_max_event)
from omnifuse_core.privacy import adaptive_clip
from omnifuse_core.privacy.dpsgd import planned_steps_per_epoch
from omnifuse_core.privacy.noisy_max import MINING_MONOTONE, noisy_max_epsilon
from omnifuse_core.privacy.preflight import NoiseCheck, check_noise
from omnifuse_core.privacy.schedule import AUTO, AutoSchedule, choose_schedule
from omnifuse_core.tla import selections_in_call
from omnifuse_core.privacy.report import build_provenance, site_report

log = logging.getLogger(__name__)

DEFAULT_MAX_EPSILON = 10.0
CALIBRATION_DIR = "privacy-calibration"


class PrivacyRefused(RuntimeError):
    """The site refuses this round (corrupt ledger, unusable calibration, budget cap); nothing was trained."""


@dataclass(frozen=True)
class Schedule:
    """The site's planned DP schedule for a run configuration."""

    sample_rate: float
    steps_per_round: int
    rounds: int
    total_steps: int
    noisy_max_per_round: int  # selections in a round whose incoming model is trained (every round but the first)
    noisy_max_first_round: int = 0  # selections in round 1: the first epoch trains before the first mining

    def noisy_max_in_round(self, server_round: int) -> int:
        return self.noisy_max_first_round if server_round <= 1 else self.noisy_max_per_round

    @property
    def noisy_max_total(self) -> int:
        return self.noisy_max_first_round + max(self.rounds - 1, 0) * self.noisy_max_per_round


def site_cap(max_epsilon: Optional[float], cfg: Config) -> float:
    """The site's cap: node config ``max-epsilon``, else ``min(target-epsilon, DEFAULT_MAX_EPSILON)``."""
    if max_epsilon is not None:
        if math.isnan(max_epsilon) or max_epsilon <= 0:
            raise PrivacyRefused(f"node config max-epsilon = {max_epsilon!r}; set a number > 0 (or \"inf\")")
        return float(max_epsilon)
    cap = min(float(cfg.target_epsilon), DEFAULT_MAX_EPSILON)
    log.warning("node config has no 'max-epsilon'; this site's lifetime cap defaults to %g (min(target-epsilon, "
                "%g)); a hospital should set its own cap", cap, DEFAULT_MAX_EPSILON)
    return cap


def plan_schedule(n_train: int, cfg: Config, *, uses_tla: bool, site: str = "") -> Schedule:
    """Planned DP-SGD steps exactly as the trainer takes them (``local-epochs x int(1/q)`` per round).

    Args:
        n_train: the site's number of training records N.
        cfg: run configuration (batch-size, local-epochs, rounds / planned-rounds).
        uses_tla: whether the model makes report-noisy-max selections (one per local epoch whose incoming model
            is trained: :func:`omnifuse_core.tla.selections_in_call`).
        site: the site name (for messages).

    Raises:
        PrivacyRefused: no training records, ``batch-size`` > N, or ``delta`` >= 1/N (each names the fix).
    """
    who = f"site '{site}'" if site else "the site"
    if n_train < 1:
        raise PrivacyRefused(f"{who} has no training records; nothing to train with DP")
    if cfg.batch_size > n_train:
        raise PrivacyRefused(f"{who}: batch-size {cfg.batch_size} exceeds its {n_train} training patients; Poisson "
                             f"sampling needs q = batch-size / N <= 1: set batch-size <= {n_train}")
    if cfg.delta >= 1.0 / n_train:
        raise PrivacyRefused(f"{who}: delta = {cfg.delta:g} is not below 1/N = 1/{n_train} = {1.0 / n_train:.3g}; "
                             "a delta that large allows releasing a patient's record outright: set delta well "
                             f"below {1.0 / n_train:.1g} (e.g. 1e-5)")
    q, per_epoch = planned_steps_per_epoch(n_train, cfg.batch_size)
    rounds = cfg.planned_rounds if cfg.planned_rounds > 0 else cfg.rounds
    per_round = cfg.local_epochs * per_epoch
    return Schedule(sample_rate=q, steps_per_round=per_round, rounds=rounds, total_steps=rounds * per_round,
                    noisy_max_per_round=selections_in_call(cfg.local_epochs, True) if uses_tla else 0,
                    noisy_max_first_round=selections_in_call(cfg.local_epochs, False) if uses_tla else 0)


def with_tla_scale(cfg: Config, schedule: Schedule) -> Config:
    """``cfg`` with the Laplace scale b that TLA's report-noisy-max uses at this site.

    ``tla-noise-scale > 0`` is used as given. ``0`` (auto) picks b so that the schedule's planned selections, at
    2/b each (non-monotone scores), spend ``tla-epsilon-share`` of ``target-epsilon``:
    ``b = 2 · selections / (share · target)``; with no selections b stays 0 (never used).
    """
    if cfg.tla_noise_scale > 0 or schedule.noisy_max_total == 0:
        return cfg
    per = cfg.tla_epsilon_share * cfg.target_epsilon / schedule.noisy_max_total
    return cfg.replace(tla_noise_scale=noisy_max_epsilon(1.0, monotone=MINING_MONOTONE) / per)


def _noisy_max_eps(cfg: Config) -> float:
    return noisy_max_epsilon(cfg.tla_noise_scale, monotone=MINING_MONOTONE)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_state(path: Path, site: str) -> dict:
    if not path.exists():
        return {"schedules": {}, "secret": secrets.token_hex(16)}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state.get("schedules"), dict) or not isinstance(state.get("secret"), str):
            raise ValueError("missing 'schedules' or 'secret'")
    except (OSError, ValueError) as exc:
        raise PrivacyRefused(f"site '{site}' refuses to train: its privacy calibration file {path} is unreadable "
                             f"({exc}). Restore it from a backup; deleting it would re-calibrate the noise "
                             "mid-schedule") from exc
    return state


def noise_multiplier_for(state_dir: Path, fingerprint: str, cfg: Config, schedule: Schedule, *,
                         site: str) -> tuple[float, dict]:
    """σ for this schedule: from config ``noise-multiplier`` when > 0, else calibrated once and stored.

    The calibration targets ``target-epsilon`` for the whole planned schedule, DP-SGD plus the planned noisy-max
    selections (``target - planned pure epsilon`` for DP-SGD; exact for PRV, conservative for RDP).

    Returns:
        ``(sigma, calibration record)``.
    """
    path = Path(state_dir) / CALIBRATION_DIR / f"{fingerprint}.json"
    state = _load_state(path, site)
    pure = schedule.noisy_max_total * _noisy_max_eps(cfg) if schedule.noisy_max_total else 0.0
    spec = {"target_epsilon": cfg.target_epsilon, "delta": cfg.delta, "sample_rate": schedule.sample_rate,
            "total_steps": schedule.total_steps, "accountant": cfg.accountant, "planned_pure_epsilon": pure,
            "noise_multiplier_config": cfg.noise_multiplier}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    if key in state["schedules"]:
        entry = state["schedules"][key]
        return float(entry["noise_multiplier"]), entry
    if cfg.noise_multiplier > 0:
        sigma, source = float(cfg.noise_multiplier), "config noise-multiplier"
    else:
        budget = cfg.target_epsilon - pure
        if budget <= 0:
            raise PrivacyRefused(f"site '{site}': the planned TLA noisy-max selections alone cost epsilon={pure:.3f} "
                                 f">= target-epsilon={cfg.target_epsilon:g}; raise tla-noise-scale or target-epsilon")
        try:
            sigma = calibrate_noise_multiplier(budget, cfg.delta, schedule.sample_rate, schedule.total_steps,
                                               cfg.accountant)
        except ValueError as exc:
            raise PrivacyRefused(f"site '{site}': {exc}") from exc
        source = "calibrated once for the planned schedule"
    entry = {**spec, "noise_multiplier": sigma, "source": source, "steps_per_round": schedule.steps_per_round,
             "rounds": schedule.rounds, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    state["schedules"][key] = entry
    _atomic_write(path, json.dumps(state, indent=1, sort_keys=True))
    log.info("site %s: noise multiplier %.4f (%s), stored in %s", site, sigma, source, path)
    return sigma, entry


def auto_schedule_for(state_dir: Path, fingerprint: str, cfg: Config, n_train: int, n_params: int, *,
                      uses_tla: bool, site: str, first: bool) -> tuple[Config, Optional[AutoSchedule]]:
    """``dp-schedule: auto``: ``cfg`` with the batch-size the site's rule picks (:mod:`~omnifuse_core.privacy.schedule`).

    Chosen once per schedule from the site's own N and P and stored beside its calibration, so later rounds and
    restarts reuse it; ``dp-schedule: fixed`` returns ``(cfg, None)``. Local epochs and lr are kept.
    """
    if cfg.dp_schedule != AUTO:
        return cfg, None
    provisional = plan_schedule(n_train, cfg.replace(batch_size=1), uses_tla=uses_tla, site=site)
    b = with_tla_scale(cfg, provisional).tla_noise_scale
    pure = provisional.noisy_max_total * _noisy_max_eps(cfg.replace(tla_noise_scale=b)) \
        if provisional.noisy_max_total else 0.0
    spec = {"target_epsilon": cfg.target_epsilon, "delta": cfg.delta, "n_train": int(n_train), "lr": cfg.lr,
            "rounds": provisional.rounds, "local_epochs": cfg.local_epochs, "n_params": int(n_params),
            "accountant": cfg.accountant, "planned_pure_epsilon": pure, "limit": cfg.dp_max_noise_ratio}
    key = "auto-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(state_dir) / CALIBRATION_DIR / f"{fingerprint}.json"
    state = _load_state(path, site)
    stored = state.setdefault("auto_schedules", {})
    if key in stored:
        choice = AutoSchedule.from_dict(stored[key])
    else:
        if cfg.target_epsilon - pure <= 0:
            raise PrivacyRefused(f"site '{site}': the planned TLA noisy-max selections alone cost epsilon={pure:.3f} "
                                 f">= target-epsilon={cfg.target_epsilon:g}; raise tla-noise-scale or target-epsilon")
        try:
            choice = choose_schedule(n_train, epsilon=cfg.target_epsilon - pure, delta=cfg.delta,
                                     rounds=provisional.rounds, local_epochs=cfg.local_epochs, lr=cfg.lr,
                                     n_params=n_params, limit=cfg.dp_max_noise_ratio, accountant=cfg.accountant)
        except ValueError as exc:
            raise PrivacyRefused(f"site '{site}': {exc}") from exc
        stored[key] = choice.to_dict()
        _atomic_write(path, json.dumps(state, indent=1, sort_keys=True))
        first = True
    if first:
        log.info("pre-flight schedule: %s", choice.message(site))
    return cfg.replace(batch_size=choice.batch_size, local_epochs=choice.local_epochs, lr=choice.lr), choice


def secret_seed(state_dir: Path, fingerprint: str, *parts: Any) -> int:
    """A training seed the server cannot know: the site's stored secret hashed with ``parts``.

    DP noise and Poisson sampling are seeded from it, so they are reproducible at the site but not predictable
    from the run config (a seed known to the server would let it subtract the noise).
    """
    path = Path(state_dir) / CALIBRATION_DIR / f"{fingerprint}.json"
    state = _load_state(path, fingerprint)
    if not path.exists():
        _atomic_write(path, json.dumps(state, indent=1, sort_keys=True))
    digest = hashlib.sha256(json.dumps([state["secret"], *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def run_id_of(cfg: Config, fallback: str) -> str:
    """A stable run id: a hash of the run directory (kept across resumes), else ``fallback``."""
    return "run-" + hashlib.sha256(cfg.run_dir.encode()).hexdigest()[:12] if cfg.run_dir else fallback


def dp_round(site, cfg: Config, *, state_dir: Path, max_epsilon: Optional[float], server_round: int, run_id: str,
             uses_tla: bool, train: Callable[[Config, Any], Any], n_params: int = 0) -> tuple[Any, dict[str, float], dict]:
    """One DP round at the site: guard, train, record (before returning), report.

    Args:
        site: the loaded ``SiteData`` (``name``, ``fingerprint``, ``train``).
        cfg: run configuration (``dp`` on).
        state_dir: the site's state directory (node config ``state-dir``).
        max_epsilon: node config ``max-epsilon`` (None = default cap, see :func:`site_cap`).
        server_round: the round number (recorded in the ledger).
        run_id: run identifier (recorded; the report's headline covers this run's events).
        uses_tla: whether the model makes a noisy-max selection per local epoch.
        train: ``train(cfg, dp_settings) -> TrainResult``; cfg carries the site's secret seed.
        n_params: trainable parameters of the model (for the pre-flight noise check; 0 = skip the check).

    Returns:
        ``(train_result, privacy_metrics, report)``.

    Raises:
        PrivacyRefused: corrupt ledger or calibration, the round would exceed the cap, or the pre-flight check
            finds the noise hopeless (``dp-preflight: error``); nothing trained.
    """
    from omnifuse_core.privacy.budget import BudgetExceeded
    from omnifuse_core.trainer import DPSettings
    import torch

    name, fp = site.name, site.fingerprint
    cap = site_cap(max_epsilon, cfg)
    try:
        ledger = PrivacyLedger(state_dir, fp)
    except (LedgerCorrupt, OSError, ValueError) as exc:
        raise PrivacyRefused(f"site '{name}' refuses to train: {exc}") from exc
    run_cfg = cfg  # the run's config (the report's provenance hash); cfg below carries the site's schedule
    cfg, auto = auto_schedule_for(state_dir, fp, cfg, len(site.train), n_params, uses_tla=uses_tla, site=name,
                                  first=server_round <= 1)
    schedule = plan_schedule(len(site.train), cfg, uses_tla=uses_tla, site=name)
    b = with_tla_scale(cfg, schedule).tla_noise_scale  # TLA's Laplace scale at this site (auto: from the schedule)
    sigma, calibration = noise_multiplier_for(state_dir, fp, cfg.replace(tla_noise_scale=b), schedule, site=name)
    adaptive = None
    if cfg.adaptive_clip:  # sigma_b and the noise split; the clip norm resumes from this run's last round
        try:
            adaptive = adaptive_clip.settings_for(cfg, min(cfg.batch_size, len(site.train)), sigma,
                                                  initial=adaptive_clip.resume_clip(ledger.events(), run_id))
        except ValueError as exc:
            raise PrivacyRefused(f"site '{name}': {exc}") from exc
    clip = adaptive_clip.ledger_fields(adaptive, sigma) if adaptive else None
    check = preflight(name, cfg, schedule, len(site.train), clip["clip_noise_multiplier"] if clip else sigma,
                      n_params, first=server_round <= 1)
    budget = SiteBudget(ledger, cfg.delta, cap, cfg.accountant, site=name)
    n_select = schedule.noisy_max_in_round(server_round) if uses_tla else 0
    planned = [noisy_max_event(b, count=n_select, monotone=MINING_MONOTONE)] if n_select else []
    try:
        budget.check_round(sigma, schedule.sample_rate, schedule.steps_per_round, planned)
    except BudgetExceeded as exc:
        raise PrivacyRefused(str(exc)) from exc
    seed = secret_seed(state_dir, fp, cfg.seed, run_id, server_round)
    select = make_noisy_select(b, torch.Generator().manual_seed(seed + 1)) if uses_tla else None
    result = train(cfg.replace(seed=seed), DPSettings(sigma, adaptive.initial if adaptive else cfg.max_grad_norm,
                                                      select, adaptive))
    events = list(result.trace.get("dp_event", []) or [])
    clip_norm = (getattr(result, "clip", None) or {}).get("clip_final", adaptive.initial) if adaptive \
        else cfg.max_grad_norm
    spent = budget.record_round(sigma, result.sample_rate or schedule.sample_rate, result.steps,
                                max_grad_norm=clip_norm, round=server_round, run_id=run_id,
                                extra_events=events, clip=clip)
    report = build_report(ledger, name, run_cfg, cap, run_id, calibration, check, auto)
    metrics = {"epsilon": float(report["epsilon"]), "delta": float(cfg.delta), "epsilon_lifetime": float(spent),
               "max_epsilon": cap, "noise_multiplier": sigma, "sample_rate": float(result.sample_rate),
               "steps": int(result.steps), "max_grad_norm": float(clip_norm)}
    if clip:
        metrics["clip_noise_multiplier"] = float(clip["clip_noise_multiplier"])
    if uses_tla:
        metrics["tla_noise_scale"] = float(b)
    if check is not None:
        metrics.update({"noise_ratio": check.ratio, "trainable_params": float(check.n_params)})
    log.info("site %s round %d: spent epsilon %.3f this run, %.3f lifetime (cap %g)", name, server_round,
             report["epsilon"], spent, cap)
    return result, metrics, report


def preflight(site: str, cfg: Config, schedule: Schedule, n_train: int, sigma: float, n_params: int, *,
              first: bool) -> Optional[NoiseCheck]:
    """The pre-flight noise check (:mod:`omnifuse_core.privacy.preflight`) with config ``dp-preflight``.

    ``error``: a hopeless ratio refuses the round (nothing trained, nothing spent); ``warn``: it is logged (in the
    first round) and training goes on; ``off``: no check. A ``poor`` ratio is logged in the first round.
    """
    if not n_params or cfg.dp_preflight == "off":
        return None
    check = check_noise(site, n_train=n_train, sample_rate=schedule.sample_rate, noise_multiplier=sigma,
                        n_params=n_params, steps=schedule.total_steps, limit=cfg.dp_max_noise_ratio)
    text = check.message(cfg.dp_max_noise_ratio, batch_chosen=cfg.dp_schedule == AUTO)
    if check.verdict == "hopeless" and cfg.dp_preflight == "error":
        raise PrivacyRefused(f"{text} Set dp-preflight: warn to train anyway.")
    if first:
        (log.warning if check.verdict != "ok" else log.info)("pre-flight (%s): %s", check.verdict, text)
    return check


def build_report(ledger: PrivacyLedger, site: str, cfg: Config, cap: float, run_id: str,
                 calibration: Optional[dict] = None, check: Optional[NoiseCheck] = None,
                 schedule: Optional[AutoSchedule] = None) -> dict:
    """The site's privacy report for this run (from its ledger; holds no patient data)."""
    prov = build_provenance(run_id=run_id, site=site, fingerprint=ledger.fingerprint, config_hash=cfg.digest())
    mech = {"calibration": calibration} if calibration else None
    if check is not None:
        mech = {**(mech or {}), "preflight": check.to_dict()}
    if schedule is not None:  # dp-schedule auto: the site's pick, its candidate table and the rule
        mech = {**(mech or {}), "schedule": schedule.to_dict()}
    return site_report(ledger, site=site, delta=cfg.delta, max_epsilon=cap, provenance=prov, mechanism=mech,
                       accountant=cfg.accountant, run_id=run_id)
