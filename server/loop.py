"""The federated round loop: train -> validate -> aggregate -> evaluate (val) -> record -> checkpoint, then a final
evaluation on every site's test split of the model ``final-model`` selects (the last round's, or the round with the
best federated validation metric). Resumes from ``<run-dir>/checkpoints``."""
from __future__ import annotations

import json
import logging
import time

from flwr.app import ConfigRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid

from omnifuse_core import protocol as P
from omnifuse_core.config import Config
from omnifuse_core.metrics import best_prediction_mode, headline_metric
from omnifuse_core.pooled import add_histograms, pooled_entry, pooled_survival_entry
from omnifuse_core.thresholds import choose_threshold, threshold_entry as _threshold_entry
from omnifuse_core.selection import RoundSelection

from .exchange import send_and_receive
from .checkpoint import Checkpoint, load_latest, load_round, point_final, save_checkpoint, update_state
from .privacy import PrivacyRollup
from .run_dir import RunRecorder, weighted_global
from .setup import exchange, initial_model
from .strategy import OmniFuseStrategy, to_numpy, to_record

log = logging.getLogger(__name__)
TIMEOUT_S = 3600.0


def run_federation(grid: Grid, cfg: Config, *, resume: bool = False, run_id: int = 0) -> RunRecorder:
    """Run (or continue) a federated training run and write its run directory.

    Args:
        grid: Flower's Grid of the ServerApp.
        cfg: resolved configuration (``cfg.run_dir`` absolute).
        resume: continue after the newest checkpoint in ``<run-dir>/checkpoints`` if there is one.

    Returns:
        The recorder (``.path`` is metrics.json).
    """
    rec = RunRecorder(cfg, resume=resume)
    rec.attach_log()
    try:
        _run(grid, cfg, rec, resume, run_id)
    finally:
        rec.close()
    return rec


def _run(grid: Grid, cfg: Config, rec: RunRecorder, resume: bool, run_id: int) -> None:
    t0 = time.monotonic()
    if cfg.strategy == "fedprox" and cfg.proximal_mu <= 0:
        log.warning("strategy fedprox with proximal-mu = 0 is plain FedAvg; set proximal-mu > 0")
    base = {k: v for k, v in cfg.to_flat().items()}
    fed = exchange(grid, cfg, base, TIMEOUT_S)
    ckpt = load_latest(rec.checkpoints) if resume else None
    weights, shapes, groups = initial_model(cfg, fed.specs_json, fed.task_json)
    start, mode = 1, "" if cfg.prediction == "auto" else cfg.prediction
    strategy = OmniFuseStrategy(cfg, shapes=shapes, groups=groups, node_sites=fed.node_sites)
    privacy = PrivacyRollup(cfg, rec.root)
    if privacy.central is not None:  # central DP replaces the aggregation rule (see server/privacy.py)
        log.warning("central-dp: aggregation is the uniform mean of clipped updates (DP-FedAvg) instead of '%s'",
                    cfg.strategy)
        strategy.aggregator = privacy.central
    selection = RoundSelection(cfg.final_model, cfg.early_stopping)
    if ckpt is not None:
        if ckpt.state.get("config_digest") != cfg.digest():
            log.warning("resuming from a checkpoint written with a different config (digest %s, now %s)",
                        ckpt.state.get("config_digest"), cfg.digest())
        weights, start, mode = ckpt.weights, ckpt.round + 1, ckpt.state.get("prediction_mode", mode)
        strategy.aggregator.load_state(ckpt.strategy_arrays, ckpt.state.get("strategy_state", {}))
        rec.keep_rounds(ckpt.round)
        _restore_selection(selection, ckpt, rec)
        log.info("resuming after round %d", ckpt.round)
    base.update({P.STATS_JSON: json.dumps(fed.stats), P.SPECS_JSON: fed.specs_json, P.TASK_JSON: fed.task_json})
    arrays = to_record(weights)
    head = headline_metric(cfg.task)
    stopped = None
    thresholds = {r["round"]: r.get("threshold") for r in rec.data.get("rounds", [])}  # kept rounds of a resumed run
    # fused evaluation: the model a train exchange sends is validated at the sites before they train on it, so
    # round r's validation arrives with round r+1's replies; the last model gets a validation exchange of its own.
    # A round is checkpointed when trained ("validated": false) and its checkpoint state updated when validated.
    pending = None  # (round, its model) awaiting validation
    if ckpt is not None and ckpt.state.get("validated") is False:
        pending = (ckpt.round, arrays)  # resumed: the checkpoint's model is validated with the first train exchange

    def validated(r: int, r_arrays, sites: dict, hists: dict, timing: dict | None = None) -> bool:
        """Record round ``r``'s validation and update the selection and the round's checkpoint; True = stop."""
        nonlocal mode
        glob = weighted_global(sites) if sites else {}
        if cfg.prediction == "auto":
            mode = best_prediction_mode(glob, head) or mode
        thresholds[r] = _threshold(hists, cfg)
        if selection.offer(r, glob.get(head), (r_arrays, mode)) and selection.rule == "best-val":
            log.info("round %d: best validation %s so far (%s)", r, head, glob.get(head))
        fields = {"global": glob, "sites": dict(sites), "prediction_mode": mode or None, "threshold": thresholds[r]}
        if timing:  # its own evaluate exchange: add that message's timing to the round's
            merged = next((e.get("timing") for e in rec.data["rounds"] if e.get("round") == r), None) or {}
            for site, t in timing.items():
                merged.setdefault(site, {})["evaluate"] = t
            fields["timing"] = merged
        rec.update_round(r, fields)  # one metrics.json write
        done = r - start + 1
        eta = (time.monotonic() - t0) / max(done, 1) * max(cfg.rounds - r, 0)
        flwr_log(logging.INFO, "OmniFuse round %d/%d: validation %s = %s (ETA %.0f s)", r, cfg.rounds, head,
                 f"{glob[head]:.4f}" if isinstance(glob.get(head), float) else glob.get(head), eta)
        update_state(rec.checkpoints, r, {"prediction_mode": mode, "selection": selection.state(), "validated": True})
        return selection.should_stop(r)

    if pending and not cfg.fused_evaluate:  # resumed before its validation exchange: run it first
        _evaluate(grid, strategy, pending[0], pending[1], base, "val", mode)
        validated(*pending, strategy.eval_sites, strategy.eval_hists, strategy.eval_timing)
        pending = None
    layout = None
    if cfg.secure_aggregation:
        from . import secure
        from omnifuse_core.secure_sum import SumLayout

        # count scale: the largest site's training set (every site already sent its size in the stats query)
        layout = SumLayout.build(shapes, groups, cfg.modality_list, cfg.strategy, fed.max_train)
        log.info("secure aggregation (SecAgg+): %d values per site upload, count scale %g", layout.size,
                 layout.scale)
    stop = False
    for rnd in range(start, cfg.rounds + 1):
        t_round = time.monotonic()
        train_cfg = {**base, **({P.EVAL_SPLIT: "val", P.PREDICTION_MODE: mode or ""} if pending else {})}
        if layout is not None:  # SecAgg+: the server receives only the sum (server/secure.py)
            new_arrays = secure.train_round(grid, strategy, rnd, arrays, ConfigRecord(train_cfg), layout, run_id)
        else:
            messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(train_cfg), grid))
            if privacy.central is not None:
                privacy.central.begin_round(len(messages))
            replies = send_and_receive(grid, messages, timeout=cfg.round_timeout, poll=cfg.poll_interval)
            new_arrays, _ = strategy.aggregate_train(rnd, replies)
        if new_arrays is None:
            log.error("round %d: no valid site update; the global model is unchanged", rnd)
        else:
            arrays = new_arrays
        if pending:
            stop = validated(*pending, strategy.fused_sites, strategy.fused_hists)
        for site, metrics in strategy.train_sites.items():
            rec.record_privacy(site, {k: v for k, v in P.unprefixed(P.PRIVACY_PREFIX, metrics).items()})
        rec.record_round({
            "round": rnd, "global": {}, "sites": {},
            "train": {s: {**P.unprefixed(P.TRAIN_PREFIX, m), "counts": P.metrics_to_counts(m),
                          "steps": m.get(P.STEPS), "trace": json.loads(strategy.train_info[s].get(P.TRACE_JSON, "{}"))}
                      for s, m in strategy.train_sites.items()},
            "rejected": dict(strategy.rejected), "missing": dict(strategy.missing),
            **({"secure_sum": dict(strategy.secure)} if layout is not None else {}),
            **privacy.collect(strategy.train_info, strategy.rejected), "seconds": 0.0,
            "timing": {s: {"train": P.unprefixed(P.TIME_PREFIX, m)} for s, m in strategy.train_sites.items()}})
        _write_privacy(rec, privacy)
        save_checkpoint(rec.checkpoints, Checkpoint(
            round=rnd, weights=to_numpy(arrays), strategy_arrays=strategy.aggregator.state_arrays(),
            state={"strategy": cfg.strategy, "strategy_state": strategy.aggregator.state_meta(),
                   "config_digest": cfg.digest(), "specs": json.loads(fed.specs_json),
                   "task": json.loads(fed.task_json), "groups": groups, "prediction_mode": mode,
                   "selection": selection.state(), "validated": False},
            stats=fed.stats))
        if cfg.fused_evaluate:
            pending = (rnd, arrays)
        else:
            _evaluate(grid, strategy, rnd, arrays, base, "val", mode)
            stop = validated(rnd, arrays, strategy.eval_sites, strategy.eval_hists, strategy.eval_timing)
        rec.update_round(rnd, {"seconds": round(time.monotonic() - t_round, 2)})
        if stop:
            log.info("early stopping after round %d: no better validation %s since round %d (patience %d)",
                     rnd, head, selection.best_round, cfg.early_stopping)
            stopped = rnd
            break
    if pending:  # the last trained model's validation (fused evaluation)
        _evaluate(grid, strategy, pending[0], pending[1], base, "val", mode)
        validated(*pending, strategy.eval_sites, strategy.eval_hists, strategy.eval_timing)
    final_round, rnd_arrays, mode = _final_model(selection, cfg, arrays, mode, head)
    threshold = thresholds.get(final_round)
    glob = _evaluate(grid, strategy, final_round, rnd_arrays, base, "test", mode,
                     cfg.threshold if threshold is None else threshold)
    if (rec.checkpoints / f"round-{final_round:04d}.safetensors").is_file():
        point_final(rec.checkpoints, final_round)
    rec.record_final({"global": glob, "sites": strategy.eval_sites, "split": "test",
                      "prediction_mode": mode or None, "rounds": cfg.rounds, "final_model": cfg.final_model,
                      "model_round": final_round, "stopped_early": stopped,
                      "timing": {s: {"evaluate": t} for s, t in strategy.eval_timing.items()},
                      "threshold": _threshold_entry(cfg, threshold, f"validation of round {final_round}"), "seconds": round(time.monotonic() - t0, 2),
                      **pooled_entry(list(strategy.eval_hists.values()), cfg.score_bins, cfg.seed),
                      **pooled_survival_entry(list(strategy.eval_conc.values()))})
    log.info("final test %s = %s (model of round %d); metrics in %s", head, glob.get(head), final_round, rec.path)


def _final_model(selection: RoundSelection, cfg: Config, arrays, mode: str, head: str) -> tuple:
    """``(round, arrays, prediction mode)`` of the model the final test uses."""
    if selection.payload is None:  # no round ran in this process and none was restored, or no finite metric
        if selection.rule == "best-val":
            log.warning("final-model best-val: no round had a finite validation %s; testing the last model", head)
        return cfg.rounds, arrays, mode
    if selection.rule == "best-val":
        log.info("final-model best-val: testing the model of round %d (validation %s %.4f)", selection.round,
                 head, selection.value)
    return (selection.round, *selection.payload)


def _restore_selection(selection: RoundSelection, ckpt: Checkpoint, rec: RunRecorder) -> None:
    """Continue the round selection of the interrupted run (its selected round's weights come from disk)."""
    state = ckpt.state.get("selection") or {}
    if state.get("rule") != selection.rule or not state.get("round"):
        return
    picked = ckpt if int(state["round"]) == ckpt.round else load_round(rec.checkpoints, int(state["round"]))
    selection.restore(state, (to_record(picked.weights), picked.state.get("prediction_mode", "")))


def _write_privacy(rec: RunRecorder, privacy: PrivacyRollup) -> None:
    """``RUN/privacy/`` after every round; the central-DP (client-level) epsilon also goes to metrics.json."""
    summary = privacy.write(rec.data["rounds"])
    if summary and summary.get("central_dp"):
        rec.data["privacy_central"] = summary["central_dp"]
        rec.write()


def _threshold(hists: dict, cfg: Config):
    """The binary decision threshold ``threshold-rule`` picks on the sites' validation histograms (None for other
    tasks): from counts per score bin only."""
    if not hists:
        return None
    return choose_threshold(*add_histograms(list(hists.values())), cfg.threshold_rule, cfg.threshold)


def _evaluate(grid, strategy: OmniFuseStrategy, rnd: int, arrays, base: dict, split: str, mode: str,
              threshold: float | None = None) -> dict:
    config = ConfigRecord({**base, P.SPLIT: split, P.PREDICTION_MODE: mode or "",
                           **({P.THRESHOLD: float(threshold)} if threshold is not None else {})})
    replies = send_and_receive(grid, strategy.configure_evaluate(rnd, arrays, config, grid),
                               timeout=strategy.cfg.round_timeout, poll=strategy.cfg.poll_interval)
    strategy.aggregate_evaluate(rnd, replies)
    return weighted_global(strategy.eval_sites) if strategy.eval_sites else {}


