"""In-memory training for the benchmarks: centralized (pooled), federated (an in-process round loop) and local-only,
on sites loaded once; every function returns the test metrics *and* the per-patient test scores and labels that the
paired bootstrap (``bench/bootstrap.py``) needs, plus the per-epoch TLA trace.

* :func:`train_centralized` is what ``sim.modes.run_centralized`` does: pool the sites' train splits, ``rounds``
  chunks of ``local-epochs`` epochs with ``seed_offset = round``, ``final-model`` selection on the per-site validation
  metrics, the prediction mode chosen on the pooled validation split, per-site test metrics and their
  sample-weighted mean.
* :func:`train_federated` is what the Flower federation does (``server/loop.py`` + ``client/site_runtime.py``) for a
  non-DP run, without Flower: each round every site trains the global weights for ``local-epochs`` epochs
  (``seed_offset = round``), the updates are aggregated with ``strategy`` (``server.aggregation``, modality-aware by
  default, weighted by each site's training counts), the global model is evaluated on every site's validation split
  (the prediction mode for ``prediction: auto`` is chosen on that, as the server does), and the final test uses the
  model ``final-model`` selects. What it leaves out: reply validation (every update is valid here), node sampling
  (``fraction-train`` < 1), time-outs and checkpoints.
* :func:`train_local_only` is ``sim.modes.run_local``: one model per site, trained and tested on that site alone.

With ``dp: true`` every trainer runs DP-SGD through the site privacy layer (``sim.dp_reference.ReferenceDP``, the
same calibration, pre-flight check, ledger and accounting as a Flower site; state in a temporary folder): one
accountant per site (federated, local) or for the pooled training set (centralized). The result's ``privacy``
holds each population's spent epsilon, sigma and noise ratio.

Test scores come from ``omnifuse_core.trainer.predict`` (label-free); labels enter only the metric.
Nothing here imports flwr.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

HEAD = "auroc"


def restrict(ds, names):
    """The dataset with only the modalities ``names`` (in that order); what loading with ``modalities`` gives."""
    from omnifuse_core.batch import MultimodalDataset

    index = [ds.modality_names.index(n) for n in names]
    specs = [ds.specs[i] for i in index]
    return MultimodalDataset(specs, {n: ds.inputs[n] for n in names}, ds.present[:, index].clone(), ds.labels,
                             list(ds.patient_ids))


def restrict_sites(sites: list, names) -> list:
    """Copies of ``sites`` whose splits hold only the modalities ``names``."""
    import dataclasses

    out = []
    for s in sites:
        parts = {k: restrict(v, names) for k, v in s.splits.items()}
        out.append(dataclasses.replace(s, specs=list(parts["train"].specs), **parts))
    return out


def _check(sites: list, cfg) -> None:
    names = [s.name for s in sites[0].specs]
    if names != cfg.modality_list:
        raise ValueError(f"sites hold modalities {names} but the config asks for {cfg.modality_list}; "
                         "restrict the sites with restrict_sites() first")


def ids_digest(ds) -> str:
    """A short digest of the split's patient order (checks that paired runs score the same patients)."""
    return hashlib.sha1("\n".join(map(str, ds.patient_ids)).encode()).hexdigest()[:12]


def _flat(a, n: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(n, -1)
    return a[:, 0] if a.shape[1] == 1 else a


def outputs_on_test(model, sites: list, cfg, device) -> dict:
    """Per-site test metrics, scores and labels of ``model`` (the prediction mode it holds)."""
    from omnifuse_core.metrics import compute_metrics
    from omnifuse_core.trainer import predict

    metrics, scores, labels, digests = {}, {}, {}, {}
    for s in sites:
        if not len(s.test):
            continue
        out = predict(model, s.test, cfg, device=device)
        y = s.test.labels.numpy()
        metrics[s.name] = compute_metrics(cfg.task, y, out["score"])
        scores[s.name] = _flat(out["score"], len(s.test))
        labels[s.name] = _flat(y, len(s.test))  # survival: [n, 2] (time, event)
        digests[s.name] = ids_digest(s.test)
    return {"metrics": metrics, "scores": scores, "labels": labels, "ids": digests}


def run_result(test: dict, start: float, **extra) -> dict:
    """A run's result from :func:`outputs_on_test`: the global AUROC (sample-weighted over sites, as every run
    directory's ``final.global``), per-site AUROC, the per-patient arrays, seconds since ``start`` and ``extra``."""
    from server.run_dir import weighted_global

    return {"auroc": weighted_global(test["metrics"]).get(HEAD, float("nan")),
            "sites": {k: v.get(HEAD) for k, v in test["metrics"].items()},
            "scores": test["scores"], "labels": test["labels"], "ids": test["ids"],
            "seconds": time.perf_counter() - start, **extra}


def _dp(cfg):
    """A :class:`sim.dp_reference.ReferenceDP` with its state in a fresh temporary folder."""
    import tempfile

    from sim.dp_reference import ReferenceDP

    run_dir = Path(tempfile.mkdtemp(prefix="bench-dp-"))
    return ReferenceDP(cfg.replace(run_dir=str(run_dir)), run_dir)


def _privacy(dp) -> dict:
    out = {k: {f: v.get(f) for f in ("epsilon", "noise_multiplier", "noise_ratio", "trainable_params", "steps",
                                    "max_grad_norm", "sample_rate")}
           for k, v in dp.metrics.items()}
    for k, report in dp.reports.items():  # the expected batch q*N (dp-schedule auto: the site's own pick)
        if k in out:
            out[k]["expected_batch"] = ((report.get("mechanism") or {}).get("preflight") or {}).get("expected_batch")
    return out


def membership(model, sites: list, cfg, device) -> dict:
    """Loss-threshold membership inference on the final model: members = every site's training patients,
    non-members = their validation and test patients (binary task). A lower-bound check of leakage."""
    from omnifuse_core.privacy.membership import loss_threshold_auc
    from omnifuse_core.trainer import predict

    def losses(ds) -> np.ndarray:
        if not len(ds):
            return np.zeros(0)
        p = np.clip(np.asarray(predict(model, ds, cfg, device=device)["score"], dtype=np.float64).reshape(-1),
                    1e-7, 1 - 1e-7)
        y = ds.labels.numpy().astype(np.float64).reshape(-1)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    members = np.concatenate([losses(s.train) for s in sites])
    others = np.concatenate([losses(s.val) for s in sites] + [losses(s.test) for s in sites])
    return loss_threshold_auc(members, others)


def _lazy(trace: dict) -> list:
    """The lazy combination of every epoch of one ``train_local`` call (None: no mining before that epoch)."""
    return list(trace.get("lazy", []))


def train_centralized(sites: list, cfg, *, timer: Optional[dict] = None, mia: bool = False,
                      keep_model: bool = False) -> dict:
    """Centralized (pooled) training and test in memory, as ``sim.modes.run_centralized`` does.

    Returns:
        ``{"auroc": sample-weighted mean of per-site test AUROC, "pooled_auroc", "sites": {site: auroc},
        "scores"/"labels": {site: per-patient test array}, "ids", "prediction_mode", "model_round",
        "lazy": {"pooled": [lazy combination per epoch]}, "seconds"}``; with ``keep_model`` also ``"model"``, the
        selected model itself (not JSON: for in-process probes such as ``bench/probe.py``).
    """
    from omnifuse_core.batch import MultimodalDataset
    from omnifuse_core.metrics import headline_metric
    from omnifuse_core.models import build_model
    from omnifuse_core.selection import RoundSelection, load_selected, offer_model
    from omnifuse_core.trainer import choose_prediction_mode, evaluate, resolve_device, set_seed, train_local
    from server.run_dir import weighted_global

    _check(sites, cfg)
    start = time.perf_counter()
    device = resolve_device(cfg)
    set_seed(cfg.seed)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    train = MultimodalDataset.concat([s.train for s in sites])
    selection = RoundSelection(cfg.final_model, cfg.early_stopping)
    lazy: list = []
    dp = _dp(cfg)
    from sim.dp_reference import pooled_fingerprint

    pooled_fp = pooled_fingerprint([s.fingerprint for s in sites])
    for rnd in range(1, cfg.rounds + 1):
        lazy += _lazy(dp.train("pooled", pooled_fp, train, model, rnd, lambda c, d, r=rnd: train_local(
            model, train, c, device=device, seed_offset=r, trained=r > 1, dp=d)).trace)
        if selection.rule == "best-val" or cfg.early_stopping:  # the validation metrics run_centralized records
            val = {s.name: evaluate(model, s.val, cfg, device=device) for s in sites if len(s.val)}
            if offer_model(selection, rnd, weighted_global(val).get(headline_metric(cfg.task)), model):
                break
    if timer is not None:
        timer["train_s"] = time.perf_counter() - start
    model_round = load_selected(selection, model, cfg.rounds)
    mode = choose_prediction_mode(model, evaluate(model, MultimodalDataset.concat([s.val for s in sites]), cfg,
                                                  device=device))
    pooled = evaluate(model, MultimodalDataset.concat([s.test for s in sites]), cfg, device=device)
    return run_result(outputs_on_test(model, sites, cfg, device), start, pooled_auroc=pooled.get(HEAD),
                      prediction_mode=mode, model_round=model_round, lazy={"pooled": lazy} if any(lazy) else {},
                      privacy=_privacy(dp), mia=membership(model, sites, cfg, device) if mia else None,
                      **({"model": model} if keep_model else {}))


def train_federated(sites: list, cfg, *, mia: bool = False) -> dict:
    """Federated training without Flower (see the module docstring); same return value as
    :func:`train_centralized` (``lazy``: per site, the lazy combination of every local epoch of every round)."""
    from omnifuse_core.models import build_model
    from omnifuse_core.selection import RoundSelection
    from omnifuse_core.metrics import best_prediction_mode, headline_metric
    from omnifuse_core.trainer import evaluate, resolve_device, set_seed, train_local
    from omnifuse_core.weights import get_trainable, param_groups, set_trainable
    from server.aggregation import SiteUpdate, build_aggregator
    from server.run_dir import weighted_global

    _check(sites, cfg)
    head = headline_metric(cfg.task)  # what server.loop selects rounds and prediction modes on
    start = time.perf_counter()
    device = resolve_device(cfg)
    set_seed(cfg.seed)  # server.setup.initial_model: the seeded global model
    model = build_model(sites[0].specs, sites[0].task, cfg)
    weights, groups = dict(get_trainable(model)), dict(param_groups(model))
    default_mode = getattr(model, "prediction_mode", None)
    aggregator = build_aggregator(cfg)
    selection = RoundSelection(cfg.final_model, cfg.early_stopping)
    mode = "" if cfg.prediction == "auto" else cfg.prediction
    lazy: dict[str, list] = {}
    dp = _dp(cfg)

    def set_mode(m: str) -> None:  # client.site_runtime.run_evaluate: the server's mode, else the model's default
        if hasattr(model, "prediction_mode"):
            model.prediction_mode = m or default_mode

    for rnd in range(1, cfg.rounds + 1):
        updates = []
        for s in sites:  # the same trainable weights as a freshly built site model (no buffers, no frozen params)
            set_trainable(model, weights)
            res = dp.train(s.name, s.fingerprint, s.train, model, rnd, lambda c, d, r=rnd, ds=s.train: train_local(
                model, ds, c, device=device, seed_offset=r, trained=r > 1, dp=d))
            updates.append(SiteUpdate(s.name, dict(get_trainable(model)), dict(res.counts)))
            lazy.setdefault(s.name, []).extend(_lazy(res.trace))
        if len(updates) >= cfg.min_train_replies:
            weights = aggregator.aggregate(weights, updates, groups)
        set_trainable(model, weights)
        set_mode(mode)
        val = {s.name: evaluate(model, s.val, cfg, device=device) for s in sites if len(s.val)}
        glob = weighted_global(val) if val else {}
        if cfg.prediction == "auto":
            mode = best_prediction_mode(glob, head) or mode
        selection.offer(rnd, glob.get(head), (weights, mode))
        if selection.should_stop(rnd):
            break
    final_round, (weights, mode) = ((selection.round, selection.payload) if selection.payload is not None
                                    else (cfg.rounds, (weights, mode)))
    set_trainable(model, weights)
    set_mode(mode)
    return run_result(outputs_on_test(model, sites, cfg, device), start, prediction_mode=mode or None,
                      model_round=final_round, lazy={k: v for k, v in lazy.items() if any(v)}, privacy=_privacy(dp),
                      mia=membership(model, sites, cfg, device) if mia else None)


def train_local_only(sites: list, cfg, *, mia: bool = False) -> dict:
    """Every site trains and tests its own model (``sim.modes.run_local``); same return value as
    :func:`train_centralized` (``prediction_mode`` and ``model_round`` per site)."""
    from omnifuse_core.metrics import headline_metric
    from omnifuse_core.models import build_model
    from omnifuse_core.selection import RoundSelection, load_selected, offer_model
    from omnifuse_core.trainer import choose_prediction_mode, evaluate, resolve_device, set_seed, train_local

    if mia:
        raise ValueError("membership inference is measured on one model; local-only runs train one per site")
    _check(sites, cfg)
    start = time.perf_counter()
    device = resolve_device(cfg)
    set_seed(cfg.seed)  # run_local seeds once, then builds every site's model in turn
    models = {s.name: build_model(s.specs, s.task, cfg) for s in sites}
    selections = {s.name: RoundSelection(cfg.final_model, cfg.early_stopping) for s in sites}
    lazy: dict[str, list] = {}
    stopped: set = set()  # sites whose training stopped early (sim.modes.run_local)
    dp = _dp(cfg)
    for rnd in range(1, cfg.rounds + 1):
        for s in sites:
            if s.name in stopped:
                continue
            m = models[s.name]
            res = dp.train(s.name, s.fingerprint, s.train, m, rnd, lambda c, d, r=rnd, m=m, ds=s.train: train_local(
                m, ds, c, device=device, seed_offset=r, trained=r > 1, dp=d))
            lazy.setdefault(s.name, []).extend(_lazy(res.trace))
            if len(s.val):
                value = evaluate(models[s.name], s.val, cfg, device=device).get(headline_metric(cfg.task))
                if offer_model(selections[s.name], rnd, value, models[s.name]):
                    stopped.add(s.name)
    parts = {"metrics": {}, "scores": {}, "labels": {}, "ids": {}}
    modes, rounds = {}, {}
    for s in sites:
        m = models[s.name]
        rounds[s.name] = load_selected(selections[s.name], m, cfg.rounds)
        modes[s.name] = choose_prediction_mode(m, evaluate(m, s.val, cfg, device=device))
        one = outputs_on_test(m, [s], cfg, device)
        for k in parts:
            parts[k].update(one[k])
    return run_result(parts, start, prediction_mode=modes, model_round=rounds,
                      lazy={k: v for k, v in lazy.items() if any(v)}, privacy=_privacy(dp))


def flower_test_outputs(run_dir: Path, sites: list, cfg) -> dict:
    """Per-patient test scores of a finished Flower run: the model its final test used (``checkpoints/final.json``,
    or the last round), rebuilt in this process; its metrics reproduce the run's own ``final`` entry."""
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import resolve_device
    from omnifuse_core.weights import set_trainable
    from server.checkpoint import load_latest, load_round

    ckpts = Path(run_dir) / "checkpoints"
    final = ckpts / "final.json"
    ckpt = load_round(ckpts, int(json.loads(final.read_text())["round"])) if final.is_file() else load_latest(ckpts)
    if ckpt is None:
        raise ValueError(f"{run_dir}: no checkpoint to rebuild the final model from")
    model = build_model(sites[0].specs, sites[0].task, cfg)
    set_trainable(model, ckpt.weights)
    mode = ckpt.state.get("prediction_mode")
    if mode and hasattr(model, "prediction_mode"):
        model.prediction_mode = mode
    return outputs_on_test(model, sites, cfg, resolve_device(cfg))


TRAINERS = {"centralized": train_centralized, "federated": train_federated, "local": train_local_only}
