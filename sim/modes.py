"""Centralized (pooled) and local-only training on site folders, writing the same run directory as federated runs.

* ``centralized`` pools every site's train split (an upper reference that needs pooled data — for comparison
  only); it trains ``rounds × local-epochs`` epochs in ``rounds`` chunks so its curve lines up with federated rounds.
* ``local`` trains one model per site on that site alone and evaluates it on the site's own splits.

Both standardize with statistics combined from per-site sums and counts, exactly as the federation does, and
report per-site metrics plus the sample-weighted global mean (``final.global``); centralized also reports
``final.pooled`` (metrics on the pooled test split).

With ``dp: true`` both train with DP-SGD through the site privacy layer (``sim.dp_reference``): one accountant for
the pooled training set (centralized) or one per site (local), so DP utility compares like for like.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from omnifuse_core import protocol as P
from omnifuse_core.batch import MultimodalDataset
from omnifuse_core.config import Config
from omnifuse_core.data.declared import check_declared
from omnifuse_core.data.descriptor import parse_descriptor
from omnifuse_core.data.site import SiteData, load_site
from omnifuse_core.data.stats import combine_stats, site_stats
from omnifuse_core.metrics import headline_metric
from omnifuse_core.models import build_model
from omnifuse_core.pooled import pooled_entry, pooled_survival_entry
from omnifuse_core.provenance import run_provenance
from omnifuse_core.selection import RoundSelection, load_selected, offer_model
from omnifuse_core.thresholds import choose_threshold, threshold_entry
from omnifuse_core.trainer import choose_prediction_mode, evaluate, resolve_device, set_seed, train_local
from omnifuse_core.weights import get_trainable
from server.checkpoint import Checkpoint, save_checkpoint
from server.run_dir import RunRecorder, weighted_global
from sim.dp_reference import ReferenceDP, pooled_fingerprint

log = logging.getLogger(__name__)


def site_folders(data: Path) -> list[Path]:
    """Site folders of a federation folder (``federation.yaml``: ``sites``) or a single site folder."""
    data = Path(data)
    fed = data / "federation.yaml"
    if fed.is_file():
        try:
            names = (yaml.safe_load(fed.read_text()) or {}).get("sites") or []
        except yaml.YAMLError as exc:
            raise ValueError(f"{fed}: not valid YAML ({exc})") from exc
        if not names:
            raise ValueError(f"{fed}: no 'sites' listed; list the site folder names under 'sites:'")
        return [data / str(n) for n in names]
    if (data / "site.yaml").is_file():
        return [data]
    raise ValueError(f"{data}: neither a federation folder (federation.yaml) nor a site folder (site.yaml); "
                     "create one with `omnifuse synth` or see docs/data-format.md")


def load_sites(data: Path, cfg: Config) -> list[SiteData]:
    """Load every site with statistics combined from per-site aggregates (no pooled raw data)."""
    paths = site_folders(data)
    declared = {d.name: list(d.modalities) for d in (parse_descriptor(Path(p))[0] for p in paths) if d is not None}
    check_declared(declared, cfg)  # before loading: an undeclared modality would fail later with a vaguer message
    stats = combine_stats([site_stats(p, cfg) for p in paths], gene_policy=cfg.genomics_gene_policy,
                          vocab_size=cfg.ehr_vocab_size)
    return [load_site(p, cfg, stats=stats) for p in paths]


def _recorder(cfg: Config, out: Path, mode: str) -> RunRecorder:
    cfg = cfg.replace(run_dir=str(Path(out).resolve()))
    rec = RunRecorder(cfg)
    rec.data["mode"] = mode
    rec.data["strategy"] = None
    rec.data["provenance"] = run_provenance(cfg)
    return rec


def _availability(sites: list[SiteData]) -> dict:
    """Per site and split: patients and how many have each modality (aggregates, shown in the report)."""
    return {s.name: {split: ds.modality_counts() for split, ds in s.splits.items()} for s in sites}


def _notes(sites: list[SiteData]) -> dict[str, list[str]]:
    """Each site's data notes (genes missing or extra, fills, unused modalities): what loading changed or ignored."""
    return {s.name: list((s.report.summary if s.report else {}).get("notes", [])) for s in sites}


def _model_state(model, sites: list[SiteData], extra: dict) -> dict:
    return {"specs": [s.to_dict() for s in model.specs], "task": model.task_spec.to_dict(),
            "prediction_mode": getattr(model, "prediction_mode", None), "fusion": model.cfg.fusion,
            "sites": [s.name for s in sites], **extra}


def _site_metrics(model, sites: list[SiteData], split: str, cfg: Config, device) -> dict[str, dict]:
    return {s.name: evaluate(model, s.splits[split], cfg, device=device) for s in sites if len(s.splits[split])}


def _mode_and_threshold(model, val: MultimodalDataset, cfg: Config, device) -> tuple[Optional[str], Optional[float]]:
    """On ``val``: the prediction mode (``prediction: auto``) and then the decision threshold ``threshold-rule``
    picks (binary; None otherwise) from the score-bin counts a federation uses. One evaluation, and a second only
    when the chosen mode changed the scores."""
    before = getattr(model, "prediction_mode", None)
    m = evaluate(model, val, cfg, device=device, score_hist=True)
    mode = choose_prediction_mode(model, m)
    if cfg.task != "binary" or not len(val):
        return mode, None
    if getattr(model, "prediction_mode", None) != before:
        m = evaluate(model, val, cfg, device=device, score_hist=True)
    return mode, choose_threshold(m[P.HIST_POS], m[P.HIST_NEG], cfg.threshold_rule, cfg.threshold)


def _test_metrics(model_of: Callable[[str], object], sites: list[SiteData], cfg: Config, device,
                  threshold_of: Callable[[str], Optional[float]]) -> tuple[dict, dict]:
    """``(per-site test metrics, final.pooled_* entries)``: the sites' counts added as a federation would
    (omnifuse_core.pooled), so every mode records the same pooled metrics."""
    test, hists, conc = {}, [], []
    for s in sites:
        if len(s.test):
            t = threshold_of(s.name)
            m = evaluate(model_of(s.name), s.test, cfg, device=device, score_hist=True, pair_counts=True,
                         threshold=cfg.threshold if t is None else t)
            if P.HIST_POS in m:
                hists.append((m.pop(P.HIST_POS), m.pop(P.HIST_NEG)))
            if P.CONC_NUM in m:
                conc.append((m.pop(P.CONC_NUM), m.pop(P.CONC_DEN)))
            test[s.name] = m
    return test, {**pooled_entry(hists, cfg.score_bins, cfg.seed), **pooled_survival_entry(conc)}


def run_centralized(cfg: Config, data: Path, out: Path, *, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Pool all sites' training data and train one model; returns the run directory."""
    set_seed(cfg.seed)
    sites = load_sites(data, cfg)
    rec = _recorder(cfg, out, "centralized")
    rec.attach_log("train.log")
    try:
        device = resolve_device(cfg)
        train = MultimodalDataset.concat([s.train for s in sites])
        model = build_model(sites[0].specs, sites[0].task, cfg)
        selection, stopped = RoundSelection(cfg.final_model, cfg.early_stopping), None
        dp = ReferenceDP(rec.cfg, rec.root, rec)  # one accountant for the pooled training set
        pooled_fp = pooled_fingerprint([s.fingerprint for s in sites])
        for rnd in range(1, cfg.rounds + 1):
            start = time.perf_counter()
            result = dp.train("pooled", pooled_fp, train, model, rnd, lambda c, d, r=rnd: train_local(
                model, train, c, device=device, seed_offset=r, trained=r > 1, dp=d))
            val = _site_metrics(model, sites, "val", cfg, device)
            stop = offer_model(selection, rnd, weighted_global(val).get(headline_metric(cfg.task)), model)
            rec.record_round({"round": rnd, "global": weighted_global(val), "sites": val,
                              "train": {"pooled": result.metrics}, "trace": {"pooled": result.trace},
                              "seconds": time.perf_counter() - start})
            if progress:
                progress(rnd)
            if stop:
                stopped = rnd
                log.info("early stopping after round %d (best validation at round %d)", rnd, selection.best_round)
                break
        model_round = load_selected(selection, model, cfg.rounds)
        mode, threshold = _mode_and_threshold(model, MultimodalDataset.concat([s.val for s in sites]), cfg, device)
        test, binned = _test_metrics(lambda name: model, sites, cfg, device, lambda name: threshold)
        pooled = evaluate(model, MultimodalDataset.concat([s.test for s in sites]), cfg, device=device,
                          threshold=cfg.threshold if threshold is None else threshold)
        rec.record_final({"global": weighted_global(test), "sites": test, "pooled": pooled, "split": "test",
                          "prediction_mode": mode, "skipped": {s.name: s.skipped for s in sites}, "data_notes": _notes(sites),
                          "availability": _availability(sites), "final_model": cfg.final_model,
                          "model_round": model_round, "stopped_early": stopped, **binned,
                          "threshold": threshold_entry(cfg, threshold, "pooled validation split")})
        dp.write()
        save_checkpoint(rec.checkpoints, Checkpoint(model_round, get_trainable(model),
                                                    state=_model_state(model, sites, {"mode": "centralized"}),
                                                    stats=sites[0].stats))
    finally:
        rec.close()
    return rec.root


def run_local(cfg: Config, data: Path, out: Path, *, progress: Optional[Callable[[int], None]] = None) -> Path:
    """Train one model per site on that site alone; returns the run directory."""
    set_seed(cfg.seed)
    sites = load_sites(data, cfg)
    rec = _recorder(cfg, out, "local")
    rec.attach_log("train.log")
    try:
        device = resolve_device(cfg)
        models = {s.name: build_model(s.specs, s.task, cfg) for s in sites}
        selections = {s.name: RoundSelection(cfg.final_model, cfg.early_stopping) for s in sites}
        stopped: dict[str, int] = {}  # site -> round its training stopped (early stopping, per site)
        dp = ReferenceDP(rec.cfg, rec.root, rec)  # one accountant per site
        for rnd in range(1, cfg.rounds + 1):
            start = time.perf_counter()
            val, train_metrics, traces = {}, {}, {}
            for s in sites:
                if s.name in stopped:
                    continue
                result = dp.train(s.name, s.fingerprint, s.train, models[s.name], rnd,
                                  lambda c, d, r=rnd, m=models[s.name], ds=s.train: train_local(
                                      m, ds, c, device=device, seed_offset=r, trained=r > 1, dp=d))
                train_metrics[s.name], traces[s.name] = result.metrics, result.trace
                if len(s.val):
                    val[s.name] = evaluate(models[s.name], s.val, cfg, device=device)
                    if offer_model(selections[s.name], rnd, val[s.name].get(headline_metric(cfg.task)),
                                   models[s.name]):
                        stopped[s.name] = rnd
            rec.record_round({"round": rnd, "global": weighted_global(val), "sites": val, "train": train_metrics,
                              "trace": traces, "seconds": time.perf_counter() - start})
            if progress:
                progress(rnd)
            if len(stopped) == len(sites):
                break
        modes, model_rounds, thresholds = {}, {}, {}
        for s in sites:
            model_rounds[s.name] = load_selected(selections[s.name], models[s.name], cfg.rounds)
            modes[s.name], thresholds[s.name] = _mode_and_threshold(models[s.name], s.val, cfg, device)
            save_checkpoint(rec.checkpoints / s.name, Checkpoint(
                model_rounds[s.name], get_trainable(models[s.name]), state=_model_state(models[s.name], [s], {"mode": "local"}),
                stats=s.stats))
        test, binned = _test_metrics(models.__getitem__, sites, cfg, device, thresholds.get)
        rec.record_final({"global": weighted_global(test), "sites": test, "split": "test", **binned,
                          "prediction_mode": modes, "skipped": {s.name: s.skipped for s in sites}, "data_notes": _notes(sites),
                          "availability": _availability(sites), "final_model": cfg.final_model,
                          "model_round": model_rounds, "stopped_early": stopped or None,
                          "threshold": {n: threshold_entry(cfg, t, f"validation split of {n}")
                                        for n, t in thresholds.items()} if cfg.task == "binary" else None})
        dp.write()
    finally:
        rec.close()
    return rec.root


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())
