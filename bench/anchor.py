"""Classical anchor: scikit-learn HistGradientBoosting and L2-logistic regression on per-modality summary features,
the reference every deep-model AUROC is read against (pooled = all patients in one place: a reference, not a
deployment).

Usage:
  .venv/bin/python bench/anchor.py --preset reliability --data-seeds 3 [--work bench/work] [--models hgb,logistic]
      [--settings pooled,local] [--subsets ehr image text genomics image,genomics]
  .venv/bin/python bench/anchor.py --quick      # smoke preset
  .venv/bin/python bench/anchor.py --preset reliability --models hgb,mlp --settings pooled   # trees vs a neural net
      on the same features (bench/anchor_mlp.py: the diagnosis, not part of the default anchor)

Features (:func:`modality_features`, label-free, NaN for every feature of a missing modality): EHR sequences, per
value column of the discretizer (12 continuous values and the 47 one-hot category columns) the mean / last / min /
max over the steps where that variable is observed, plus the observation count of each of the 17 variables; tabular
EHR, genomics and the cached text embedding as they are; images, 4 x 4 average-pooled intensities plus mean, std
and the 50/90/99 % quantiles, per channel. Fitting (:func:`anchor_result`): on the train split only; logistic C
(median imputation + missing indicators + scaling, fitted on train) and the number of boosting iterations are chosen
on the validation split (its AUROC; its log-loss where the AUROC is undefined); the test labels enter only the
metric. ``pooled``: one model on all sites' train splits; ``local``: one per site (a site whose train split has a
single class is logged, counted in ``skipped`` and not scored). ``--subsets``: per modality subset, the sites
restricted to it and to the patients who have all of it (as ``bench/learnability.py``, B8).
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench.anchor")

TASKS = ("binary", "multiclass")
MODELS = ("hgb", "logistic", "mlp")
DEFAULT_MODELS = ("hgb", "logistic")
SETTINGS = ("pooled", "local")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
HGB = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 15, "min_samples_leaf": 20,
       "l2_regularization": 1.0, "early_stopping": False}
QUANTILES = (0.5, 0.9, 0.99)
LABELS = {"pooled/hgb": "pooled HGB", "pooled/logistic": "pooled logistic", "local/hgb": "local HGB",
          "local/logistic": "local logistic", "pooled/mlp": "pooled MLP (anchor features)",
          "local/mlp": "local MLP (anchor features)"}


# --- features -------------------------------------------------------------------------------------------------
def _ehr_sequence(x: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    from omnifuse_core.data import mimic_schema as S

    n, t, f = x.shape
    if f != S.FEATURES_PER_STEP:  # not the MIMIC layout: every channel over every step
        obs, counts, labels = np.ones((n, t, f), bool), None, [f"ch{j}" for j in range(f)]
    else:  # value column -> the mask of its variable (a one-hot block shares one)
        var_of = [v for v, var in enumerate(S.VARIABLES) for _ in S.CATEGORICAL_VALUES.get(var, [None])]
        mask = x[:, :, S.MASK_START:] > 0.5
        obs, counts, labels = mask[:, :, var_of], mask.sum(axis=1).astype(np.float64), S.FEATURE_NAMES[:S.MASK_START]
    vals = x[:, :, :obs.shape[2]].astype(np.float64)
    k = obs.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(k > 0, (vals * obs).sum(axis=1) / k, np.nan)
    lo = np.where(k > 0, np.where(obs, vals, np.inf).min(axis=1), np.nan)
    hi = np.where(k > 0, np.where(obs, vals, -np.inf).max(axis=1), np.nan)
    last_step = t - 1 - np.argmax(obs[:, ::-1, :], axis=1)  # [n, cols]
    last = np.where(k > 0, np.take_along_axis(vals, last_step[:, None, :], axis=1)[:, 0, :], np.nan)
    blocks, names = [mean, last, lo, hi], [f"{name}:{c}:{s}" for s in ("mean", "last", "min", "max") for c in labels]
    if counts is not None:
        blocks.append(counts)
        names += [f"{name}:{v}:count" for v in S.VARIABLES]
    return np.concatenate(blocks, axis=1), names


def _image(x: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    import torch

    n, c = x.shape[:2]
    grid = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(x, dtype=torch.float64), 4).reshape(n, c * 16)
    flat = x.reshape(n, c, -1).astype(np.float64)
    stats = [flat.mean(axis=2), flat.std(axis=2), *np.quantile(flat, QUANTILES, axis=2)]  # each [n, c]
    names = [f"{name}:c{ch}:grid{i // 4}{i % 4}" for ch in range(c) for i in range(16)]
    names += [f"{name}:c{ch}:{s}" for s in ("mean", "std", *(f"q{int(q * 100)}" for q in QUANTILES)) for ch in range(c)]
    return np.concatenate([grid.numpy(), *stats], axis=1), names


def modality_features(ds) -> tuple[np.ndarray, list[str]]:
    """Label-free per-modality summary features of every patient of a split (see the module docstring).

    Args:
        ds: a :class:`omnifuse_core.batch.MultimodalDataset`.

    Returns:
        ``(X float64 [N, F], feature names)``; every feature of a modality the patient lacks is NaN.
    """
    from omnifuse_core.batch import KIND_IMAGE, KIND_SEQUENCE

    blocks, names = [], []
    for m, spec in enumerate(ds.specs):
        x = ds.inputs[spec.name].detach().cpu().numpy()
        if spec.kind == KIND_SEQUENCE:
            feats, labels = _ehr_sequence(x, spec.name)
        elif spec.kind == KIND_IMAGE:
            feats, labels = _image(x, spec.name)
        else:  # tabular EHR, text embedding, genomics: the values as they are
            feats = x.reshape(len(x), -1).astype(np.float64)
            labels = [f"{spec.name}:{j}" for j in range(feats.shape[1])]
        feats[~ds.present[:, m].numpy()] = np.nan
        blocks.append(feats)
        names += labels
    return (np.concatenate(blocks, axis=1) if blocks else np.zeros((len(ds), 0))), names


# --- fitting --------------------------------------------------------------------------------------------------
def _labels(ds) -> np.ndarray:
    return ds.labels.numpy().reshape(len(ds)).astype(int)


def _criterion(task: str, y: np.ndarray, p: np.ndarray, k: int) -> float:
    """Validation score to maximise: AUROC, or minus the log-loss where the AUROC is undefined (one class)."""
    from sklearn.metrics import log_loss, roc_auc_score

    if not len(y):
        return float("nan")
    try:
        if task == "binary":
            return float(roc_auc_score(y, p))
        return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))))
    except ValueError:
        return -float(log_loss(y, p, labels=list(range(k))))


def _full(proba: np.ndarray, classes: np.ndarray, task: str, k: int) -> np.ndarray:
    """Class probabilities over all ``k`` classes (classes absent from training get 0); binary: P(y = 1)."""
    out = np.zeros((len(proba), k))
    out[:, classes.astype(int)] = proba
    return out[:, 1] if task == "binary" else out


def fit_and_score(model: str, X: dict, y: dict, task: str, k: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Fit on ``X["train"]``, choose the hyperparameter on ``X["val"]``, return the test scores.

    Args:
        model: ``hgb``, ``logistic`` or ``mlp`` (:mod:`bench.anchor_mlp`).
        X: ``{"train", "val", "test"}`` feature matrices.
        y: ``{"train", "val"}`` labels (the test labels are never passed in).
        task: ``binary`` or ``multiclass``.
        k: number of classes.
        seed: random state of the estimator.

    Returns:
        ``(test scores, {"C" or "max_iter": chosen value, "val_criterion": its validation score})``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def crit(p) -> float:
        return _criterion(task, y["val"], p, k)

    def pick(vals: list, default: int) -> int:  # the best finite validation score, the first of ties
        ok = [v if math.isfinite(v) else -np.inf for v in vals]
        return int(np.argmax(ok)) if np.isfinite(ok).any() else default

    keep = ~np.isnan(X["train"]).all(axis=0)  # a column never observed in training carries nothing (HGB fails)
    X = {p: v[:, keep] for p, v in X.items()}
    if model == "hgb":  # ties: the fewest iterations
        est = HistGradientBoostingClassifier(**HGB, random_state=seed).fit(X["train"], y["train"])
        vals = [crit(_full(p, est.classes_, task, k)) for p in est.staged_predict_proba(X["val"])]
        best = pick(vals, len(vals) - 1)
        proba = next(itertools.islice(est.staged_predict_proba(X["test"]), best, None))
        return _full(proba, est.classes_, task, k), {"max_iter": best + 1, "val_criterion": vals[best]}
    if model == "logistic":  # ties: the strongest regularisation
        fits = [make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler(),
                              LogisticRegression(C=c, max_iter=2000, random_state=seed)).fit(X["train"], y["train"])
                for c in C_GRID]
        vals = [crit(_full(f.predict_proba(X["val"]), f.classes_, task, k)) for f in fits]
        best = pick(vals, C_GRID.index(1.0))
        return (_full(fits[best].predict_proba(X["test"]), fits[best].classes_, task, k),
                {"C": C_GRID[best], "val_criterion": vals[best]})
    if model == "mlp":  # the diagnosis: a neural net on the same features (bench/anchor_mlp.py)
        from bench.anchor_mlp import fit_mlp

        return fit_mlp(X, y, task, k, crit, seed)
    raise ValueError(f"unknown anchor model {model!r}; choose from {list(MODELS)}")


def anchor_result(sites: list, cfg, model: str = "hgb", setting: str = "pooled", seed: int = 0) -> dict:
    """One anchor run, in the shape of ``bench.training.run_result`` (plus ``pooled_auroc``, ``skipped``, ``hyper``).

    Args:
        sites: loaded sites (``bench.common.load_all``), possibly restricted (``bench.training.restrict_sites``).
        cfg: the run config; ``cfg.task`` must be ``binary`` or ``multiclass``.
        model: ``hgb`` | ``logistic``.
        setting: ``pooled`` (all train splits together) | ``local`` (one model per site).
        seed: estimator random state.

    Returns:
        ``{"auroc": sample-weighted mean of per-site test AUROC, "pooled_auroc": AUROC of all scored test patients,
        "sites", "scores", "labels", "ids", "seconds", "model", "setting", "hyper": {site or "pooled": chosen},
        "skipped": {site: why}, "n_skipped", "features"}``.
    """
    from bench.training import ids_digest, run_result
    from omnifuse_core.metrics import compute_metrics

    if cfg.task not in TASKS:
        raise ValueError(f"the classical anchor supports tasks {list(TASKS)}, not {cfg.task!r}")
    if model not in MODELS or setting not in SETTINGS:
        raise ValueError(f"anchor model {model!r} / setting {setting!r}: choose {list(MODELS)} / {list(SETTINGS)}")
    start = time.perf_counter()
    k = 2 if cfg.task == "binary" else int(sites[0].task.num_outputs)
    feats = {s.name: {p: modality_features(getattr(s, p))[0] for p in ("train", "val", "test")} for s in sites}
    width = feats[sites[0].name]["train"].shape[1]
    groups = {"pooled": sites} if setting == "pooled" else {s.name: [s] for s in sites}
    test = {"metrics": {}, "scores": {}, "labels": {}, "ids": {}}
    hyper, skipped = {}, {}
    for group, members in groups.items():
        X = {p: np.concatenate([feats[s.name][p] for s in members]) for p in ("train", "val", "test")}
        y = {p: np.concatenate([_labels(getattr(s, p)) for s in members]) for p in ("train", "val")}
        if len(np.unique(y["train"])) < 2:
            skipped[group] = f"train split has fewer than two classes ({len(y['train'])} patients)"
            log.warning("%s %s: %s site %s not scored: %s", model, setting, cfg.task, group, skipped[group])
            continue
        scores, hyper[group] = fit_and_score(model, X, y, cfg.task, k, seed)
        at = 0
        for s in members:
            part, at = scores[at:at + len(s.test)], at + len(s.test)
            if len(s.test):
                labels = s.test.labels.numpy().reshape(len(s.test))
                test["metrics"][s.name] = compute_metrics(cfg.task, labels, part)
                test["scores"][s.name], test["labels"][s.name] = part, labels.astype(np.float64)
                test["ids"][s.name] = ids_digest(s.test)
    scored = [s.name for s in sites if s.name in test["scores"]]
    pooled = (compute_metrics(cfg.task, np.concatenate([test["labels"][n] for n in scored]),
                              np.concatenate([test["scores"][n] for n in scored])).get("auroc")
              if scored else float("nan"))
    return run_result(test, start, pooled_auroc=pooled, model=model, setting=setting, hyper=hyper,
                      skipped=skipped, n_skipped=len(skipped), features=width)


# --- command line ---------------------------------------------------------------------------------------------
def anchor_rows(sites_of_seed, cfg, data_seeds: list, seeds: list, keys=("pooled/hgb", "local/hgb")) -> dict:
    """Anchor runs to sit beside a deep-model table, paired with its runs by (data seed, model seed).

    The anchor is fitted once per data seed (estimator seed 0; HGB without early stopping and the logistic are
    deterministic given the data) and its result repeated under every model seed, so ``bench.stats.compare`` pairs
    it with each deep run on the same test patients; its own spread over model seeds is zero by construction.

    Args:
        sites_of_seed: ``data seed -> loaded sites``.
        cfg: the table's config (task, modalities).
        data_seeds, seeds: the table's data and model seeds.
        keys: ``setting/model`` pairs, e.g. ``pooled/hgb``.

    Returns:
        ``{"anchor/<setting>_<model>": [run results sorted by (data seed, model seed)]}``.
    """
    out: dict = {}
    for key in keys:
        setting, model = key.split("/")
        name = f"anchor/{setting}_{model}"
        for ds in data_seeds:
            r = anchor_result(sites_of_seed(ds), cfg, model=model, setting=setting, seed=0)
            out.setdefault(name, []).extend({**r, "key": name, "data_seed": ds, "seed": s, "mode": setting}
                                            for s in seeds)
    return out


def oracle(data: Path, site_names: list, task: str, subset: list | None = None) -> dict:
    """The oracle's test AUROC from ``oracle.json``: observed modalities (per site, sample-weighted ``global`` and
    ``pooled``), or with ``subset`` the global value for that subset (as ``bench/learnability.py``)."""
    import json

    path = data / "oracle.json"
    o = json.loads(path.read_text()) if path.is_file() else {}
    key = "+".join(subset) if subset else "observed"
    pooled = (o.get("global", {}).get("test", {}).get(key) or {}).get(task, {}).get("auroc")
    per = {s: o["per_site"][s]["test"][key][task] for s in site_names
           if key in o.get("per_site", {}).get(s, {}).get("test", {})}
    n = sum(v["n"] for v in per.values())
    return {"pooled": pooled, "global": sum(v["auroc"] * v["n"] for v in per.values()) / n if n else pooled,
            "sites": {s: v["auroc"] for s, v in per.items()}}


def _cell(values) -> str:
    from bench.stats import fmt, fnum, mean_std

    values = list(values)
    return fnum(values[0]) if len(values) == 1 else fmt(mean_std(values))


def _markdown(results: list, oracles: dict, keys: list, tags: list, data_seeds: list, site_names: list,
              subsets: bool) -> str:
    """Per data seed (and their mean ± std): global / pooled / per-site AUROC and the oracle; or per subset."""
    from bench.stats import markdown_table

    groups = [(str(d), [d]) for d in data_seeds] + ([("mean", data_seeds)] if len(data_seeds) > 1 else [])

    def runs(tag: str, key: str, seeds: list) -> list:
        return [r for r in results if r["key"] == f"{tag}/{key}" and r["data_seed"] in seeds]

    if subsets:
        return markdown_table(["subset", "data seed", *(LABELS[k] for k in keys), "oracle (subset observed)"],
                              [[t, g, *(_cell(r["auroc"] for r in runs(t, k, ds)) for k in keys),
                                _cell(oracles[(t, d)]["pooled"] for d in ds)] for t in tags for g, ds in groups])
    rows = []
    for g, ds in groups:
        for k in keys:
            rs = runs("all", k, ds)
            rows.append([g, LABELS[k], _cell(r["auroc"] for r in rs), _cell(r["pooled_auroc"] for r in rs),
                         *(_cell(r["sites"].get(s) for r in rs) for s in site_names), sum(r["n_skipped"] for r in rs)])
        os_ = [oracles[("all", d)] for d in ds]
        rows.append([g, "oracle (observed modalities)", _cell(o["global"] for o in os_),
                     _cell(o["pooled"] for o in os_), *(_cell(o["sites"].get(s) for o in os_) for s in site_names), ""])
    return markdown_table(["data seed", "run", "global AUROC", "pooled AUROC", *site_names, "sites not scored"], rows)


def main() -> None:
    import torch
    from threadpoolctl import threadpool_limits

    from bench.common import (add_run_args, base_parser, choose, environment, federation, load_all, load_config,
                              resolve_args, run_records, write_result, write_scores)
    from bench.learnability import having_all
    from bench.stats import mean_std
    from bench.training import restrict_sites

    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=1))
    ap.set_defaults(threads=1)
    ap.add_argument("--models", default="", help=f"comma-separated subset of {list(MODELS)}")
    ap.add_argument("--settings", default="", help=f"comma-separated subset of {list(SETTINGS)}")
    ap.add_argument("--subsets", nargs="+", default=None, help="modality subsets, e.g. ehr image,genomics")
    args = ap.parse_args()
    args = resolve_args(args, "anchor-subsets" if args.subsets else "anchor", preset_in_name=True)
    torch.set_num_threads(max(1, args.threads))
    threadpool_limits(max(1, args.threads))
    keys = [f"{st}/{m}" for st in choose(ap, args.settings, SETTINGS, SETTINGS, "setting")
            for m in choose(ap, args.models, MODELS, DEFAULT_MODELS, "model")]
    cfg = load_config(args)
    data_seeds = list(range(args.data_seed, args.data_seed + args.data_seeds))
    subsets = [s.split(",") for s in args.subsets] if args.subsets else [None]
    tags = ["+".join(s) if s else "all" for s in subsets]
    results, oracles = [], {}
    for ds in data_seeds:
        data = federation(args.preset, args.sites, ds, args.work)
        sites = load_all(data, cfg)
        for subset, tag in zip(subsets, tags):
            use = having_all(restrict_sites(sites, subset)) if subset else sites
            oracles[(tag, ds)] = oracle(data, [s.name for s in sites], cfg.task, subset)
            for key in keys:
                r = anchor_result(use, cfg, key.split("/")[1], key.split("/")[0], seed=0)
                r.update(key=f"{tag}/{key}", subset=tag, data_seed=ds, seed=0, mode=r["setting"])
                log.info("%s data seed %d: AUROC %.4f, pooled %.4f (%.1f s)", r["key"], ds, r["auroc"],
                         r["pooled_auroc"], r["seconds"])
                results.append(r)
    md = _markdown(results, oracles, keys, tags, data_seeds, [s.name for s in sites], bool(args.subsets))
    # one scores file per subset (its patients differ): arrays as bench.common.write_scores names them
    scores = {t: str(write_scores(args.out if t == "all" else args.out.with_suffix(f".{t}.json"),
                                  [r for r in results if r["subset"] == t])) for t in tags}
    records = run_records(results)
    for rec, r in zip(records, results):
        rec.update({f: r[f] for f in ("subset", "model", "setting", "hyper", "skipped", "n_skipped", "features")})
    summary = {t: {k: {f: mean_std(r[f] for r in results if r["key"] == f"{t}/{k}") for f in ("auroc", "pooled_auroc")}
                   for k in keys} for t in tags}
    write_result(args.out, {
        "benchmark": "classical anchor (HGB + L2-logistic on per-modality summary features)", "preset": args.preset,
        "config": args.config, "task": cfg.task, "data_seeds": data_seeds, "runs_compared": keys, "subsets": tags,
        "hgb": HGB, "logistic_c_grid": list(C_GRID), "summary": summary,
        "oracle": {f"{t}|d{d}": v for (t, d), v in oracles.items()}, "metric": "test AUROC per site; global = "
        "sample-weighted mean over scored sites; pooled = all scored test patients", "runs": records,
        "scores_files": scores, "quick": args.quick, "environment": environment(), "markdown": md})
    print(f"Classical anchor (preset {args.preset}, task {cfg.task}, {len(data_seeds)} data seed(s)); test AUROC")
    print(md)


if __name__ == "__main__":
    main()
