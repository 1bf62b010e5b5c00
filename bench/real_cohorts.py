"""B9 — real cohorts: small public clinical survival cohorts in the 3-site layout, OmniFuse (federated and centralized)
against an elastic-net Cox model (scikit-survival) on the same training patients with the same gaps.

The cohorts ship inside PyPI wheels and are loaded at benchmark time, never vendored (``pip install -e '.[bench]'``):
``gbsg2`` (German Breast Cancer Study Group 2, 686 patients) and ``whas500`` (Worcester Heart Attack Study, 500) from
scikit-survival, ``lung`` (NCCTG advanced lung cancer, 228) from lifelines. The gene-expression cohorts of
scikit-survival and SurvSet are **not** used (they are kept for independent checks).

Layout of one repeat (seed ``r``): patients shuffled into 3 sites (40 / 35 / 25 %), each split train / val / test
(60 / 20 / 20 %, stratified by event); every cohort's features are two tabular modalities — ``clinical`` (demographics,
history) and ``markers`` (measurements, tumour or disease markers). ``site_c`` has no ``markers`` modality at all,
and 20 % of the patients at ``site_a`` / ``site_b`` lack it (the issue's "one site without genomics, 20 % missing
elsewhere"). Cells the cohort itself leaves empty stay empty (the loader mean-fills and counts them).

Arms (every one scores the same test patients):
* ``fed/<config>``: the federated round loop (``bench.training.train_federated``, the ServerApp's algorithm in one
  process), ``cent/<config>``: pooled training (``train_centralized``);
* ``coxnet``: ``CoxnetSurvivalAnalysis`` (l1_ratio 0.5) on the pooled training patients, ``markers`` mean-imputed
  with a missing indicator (the same gaps), penalty chosen on the validation patients' C-index;
  ``coxnet-complete``: the same without the simulated gaps (an upper anchor).

Metric: Harrell's C on all test patients pooled across sites (``c_pooled``; the benchmark may pool, a deployment
cannot) and the site-stratified C that runs record (``c_strat``, omnifuse_core.pooled). Per cohort the mean over
repeats with a 95 % t-interval of the paired difference to ``coxnet`` and to ``cent/<config>``.

Example:
  python -m bench.real_cohorts --cohorts gbsg2,whas500,lung --repeats 5 --configs demo,small-cohort \\
      --seeds 2 --out bench/results/issue15/real_cohorts.json
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sim.cv import t_interval  # mean and 95 % t-interval (shared with omnifuse cv)

log = logging.getLogger("bench.real_cohorts")
SITES = (("site_a", 0.40), ("site_b", 0.35), ("site_c", 0.25))
SPLITS = (("train", 0.6), ("val", 0.2), ("test", 0.2))


def load_cohort(name: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """``(frame with time, event and numeric features, clinical columns, marker columns)``."""
    if name == "gbsg2":
        from sksurv.datasets import load_gbsg2
        x, y = load_gbsg2()
        df = pd.DataFrame({"age": x["age"], "menostat_post": (x["menostat"] == "Post").astype(float),
                           "hormone_therapy": (x["horTh"] == "yes").astype(float), "tsize": x["tsize"],
                           "tgrade": x["tgrade"].map({"I": 1.0, "II": 2.0, "III": 3.0}).astype(float),
                           "pnodes": x["pnodes"], "progrec": x["progrec"], "estrec": x["estrec"]})
        df["time"], df["event"] = y["time"], y["cens"].astype(int)
        return df, ["age", "menostat_post", "hormone_therapy"], ["tsize", "tgrade", "pnodes", "progrec", "estrec"]
    if name == "whas500":
        from sksurv.datasets import load_whas500
        x, y = load_whas500()
        df = pd.DataFrame({c: x[c].astype(float) for c in x.columns})
        df["time"], df["event"] = y["lenfol"], y["fstat"].astype(int)
        return df, ["age", "gender", "bmi", "cvd", "afb", "chf"], ["diasbp", "hr", "sysbp", "los", "miord", "mitype",
                                                                    "sho", "av3"]
    if name == "lung":
        from lifelines.datasets import load_lung
        d = load_lung()
        df = pd.DataFrame({"age": d["age"].astype(float), "sex": d["sex"].astype(float), "ph_ecog": d["ph.ecog"],
                           "ph_karno": d["ph.karno"], "pat_karno": d["pat.karno"], "meal_cal": d["meal.cal"],
                           "wt_loss": d["wt.loss"]})
        df["time"], df["event"] = d["time"].astype(float), d["status"].astype(int)
        return df, ["age", "sex", "ph_ecog"], ["ph_karno", "pat_karno", "meal_cal", "wt_loss"]
    raise SystemExit(f"unknown cohort {name!r}; choose from gbsg2, whas500, lung")


def patient_ids(n: int) -> list[str]:
    """The ids the layout gives a cohort's rows (row order)."""
    return [f"p{i:05d}" for i in range(n)]


def layout(df: pd.DataFrame, clinical: list[str], markers: list[str], out: Path, seed: int,
           missing: float = 0.2) -> Path:
    """Write the 3-site federation of repeat ``seed`` under ``out`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    df = df.reset_index(drop=True).copy()
    df["patient_id"] = patient_ids(len(df))
    order = rng.permutation(len(df))
    bounds = np.cumsum([0] + [round(f * len(df)) for _, f in SITES[:-1]] + [len(df)])
    shutil.rmtree(out, ignore_errors=True)
    for k, (site, _) in enumerate(SITES):
        part = df.iloc[order[bounds[k]:bounds[k + 1]]].copy()
        part["split"] = ""
        for ev in (0, 1):  # stratified by event
            idx = rng.permutation(np.flatnonzero(part["event"].to_numpy() == ev))
            cut = np.cumsum([0] + [round(f * len(idx)) for _, f in SPLITS[:-1]] + [len(idx)])
            for j, (split, _) in enumerate(SPLITS):
                part.iloc[idx[cut[j]:cut[j + 1]], part.columns.get_loc("split")] = split
        mods = {"clinical": {"type": "tabular", "columns": clinical}}
        if site == "site_c":
            part = part.drop(columns=markers)
        else:
            mods["markers"] = {"type": "tabular", "columns": markers}
            gone = rng.random(len(part)) < missing
            part.loc[part.index[gone], markers] = np.nan
        folder = out / site
        folder.mkdir(parents=True)
        part[["patient_id", "split", "time", "event", *clinical, *([] if site == "site_c" else markers)]].to_csv(
            folder / "cohort.csv", index=False)
        (folder / "site.yaml").write_text(yaml.safe_dump({
            "site": site, "cohort": "cohort.csv", "id-column": "patient_id", "split-column": "split",
            "labels": {"survival": ["time", "event"]}, "modalities": mods}, sort_keys=False))
    (out / "federation.yaml").write_text(yaml.safe_dump({"sites": [s for s, _ in SITES]}))
    return out


# --- the anchor ------------------------------------------------------------------------------------------
def _design(frames: dict, clinical: list[str], markers: list[str], train_means: pd.Series) -> dict:
    """Features with ``markers`` mean-imputed (training means) and a missing-markers indicator."""
    out = {}
    for split, f in frames.items():
        x = f.reindex(columns=clinical + markers).astype(float)
        x["markers_missing"] = x[markers].isna().all(axis=1).astype(float)
        out[split] = x.fillna(train_means).to_numpy()
    return out


def coxnet(fed: Path, clinical: list[str], markers: list[str], *, complete: pd.DataFrame | None = None) -> dict:
    """Elastic-net Cox on the pooled training patients; ``{site: test risk}`` (``complete``: the gap-free table)."""
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    frames = {s: pd.read_csv(fed / s / "cohort.csv") for s, _ in SITES}
    if complete is not None:  # same patients and splits, features without the simulated gaps
        full = complete.set_index("patient_id")
        frames = {s: f[["patient_id", "split", "time", "event"]].join(full[clinical + markers], on="patient_id")
                  for s, f in frames.items()}
    pooled = pd.concat(frames.values(), keys=list(frames), names=["site", None]).reset_index(level=0)
    by = {sp: pooled[pooled["split"] == sp] for sp, _ in SPLITS}
    means = by["train"].reindex(columns=clinical + markers).astype(float).mean()
    x = _design(by, clinical, markers, means)
    scaler = StandardScaler().fit(x["train"])
    x = {k: np.nan_to_num(scaler.transform(v)) for k, v in x.items()}
    y = Surv.from_arrays(by["train"]["event"].astype(bool), by["train"]["time"])
    path = CoxnetSurvivalAnalysis(l1_ratio=0.5, alpha_min_ratio=0.01, n_alphas=30, fit_baseline_model=False).fit(
        x["train"], y)
    best, best_c = None, -1.0
    for alpha in path.alphas_:
        c = harrell(by["val"]["time"], by["val"]["event"], path.predict(x["val"], alpha=alpha))
        if c > best_c:
            best, best_c = alpha, c
    risk = path.predict(x["test"], alpha=best)
    test = by["test"].assign(risk=risk)
    return {s: (g[["time", "event"]].to_numpy(float), g["risk"].to_numpy(float)) for s, g in test.groupby("site")}


def harrell(time, event, risk) -> float:
    from omnifuse_core.metrics import concordance_index

    return concordance_index(np.asarray(time, float), np.asarray(event, float), np.asarray(risk, float))


def c_scores(per_site: dict) -> dict:
    """``c_pooled`` (all test patients) and ``c_strat`` (pairs within sites) from ``{site: (labels[n,2], risk)}``."""
    from omnifuse_core.pooled import concordance_counts, pooled_concordance

    labels = np.concatenate([v[0] for v in per_site.values()])
    risk = np.concatenate([v[1] for v in per_site.values()])
    strat = pooled_concordance([concordance_counts(y[:, 0], y[:, 1], r) for y, r in per_site.values()])
    return {"c_pooled": harrell(labels[:, 0], labels[:, 1], risk), "c_strat": strat["c_index"]}


# --- OmniFuse arms ---------------------------------------------------------------------------------------
def omnifuse_arm(fed: Path, config: str, mode: str, seed: int, threads: int) -> dict:
    import torch

    from bench.training import train_centralized, train_federated
    from omnifuse_core.config import Config
    from sim.modes import load_sites

    torch.set_num_threads(threads)
    name, *sets = config.split("+")  # "small-cohort+lr=0.02+rounds=30": a config with overrides
    cfg = Config.load(name).with_overrides(sets).replace(task="survival", modalities="clinical,markers", seed=seed,
                                                         device="cpu")
    sites = load_sites(fed, cfg)
    res = (train_federated if mode == "fed" else train_centralized)(sites, cfg)
    return {s: (res["labels"][s], res["scores"][s]) for s in res["scores"]}


def summarise(rows: list[dict], configs: list[str]) -> dict:
    out: dict = {}
    for cohort in dict.fromkeys(r["cohort"] for r in rows):
        rs = [r for r in rows if r["cohort"] == cohort]
        arms = list(dict.fromkeys(k for r in rs for k in r["c"]))
        entry = {"repeats": len(rs), "mean": {a: {m: float(np.mean([r["c"][a][m] for r in rs]))
                                                 for m in ("c_pooled", "c_strat")} for a in arms}, "diff": {}}
        for cfg in configs:
            for ref in ("coxnet", f"cent/{cfg}"):
                if f"fed/{cfg}" not in arms or ref not in arms:
                    continue
                for m in ("c_pooled", "c_strat"):
                    entry["diff"][f"fed/{cfg} - {ref} ({m})"] = t_interval(
                        [r["c"][f"fed/{cfg}"][m] - r["c"][ref][m] for r in rs])
        out[cohort] = entry
    return out


def markdown(summary: dict, configs: list[str], seeds: int) -> str:
    lines = []
    for cohort, e in summary.items():
        lines += [f"**{cohort}** ({e['repeats']} repeated layouts x {seeds} model seeds; Harrell's C on the pooled "
                  "test patients / site-stratified)", "", "| arm | C pooled | C stratified |", "|---|---|---|"]
        lines += [f"| {a} | {v['c_pooled']:.3f} | {v['c_strat']:.3f} |" for a, v in e["mean"].items()]
        lines += ["", "| paired difference (per repeat) | mean | 95 % t-interval |", "|---|---|---|"]
        lines += [f"| {k} | {m:+.3f} | [{lo:+.3f}, {hi:+.3f}] |" for k, (m, lo, hi) in e["diff"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cohorts", default="gbsg2,whas500,lung")
    ap.add_argument("--repeats", type=int, default=5, help="repeated site layouts / splits (seeds 0..R-1)")
    ap.add_argument("--configs", default="demo,small-cohort",
                    help="OmniFuse configs (names or YAML files), each optionally with +key=value overrides")
    ap.add_argument("--first-repeat", type=int, default=0, help="seed of the first layout (tune on others)")
    ap.add_argument("--seeds", type=int, default=2, help="model seeds per layout (their C-indices are averaged)")
    ap.add_argument("--modes", default="fed,cent")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench/work/real_cohorts"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/real_cohorts.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    configs = [c for c in args.configs.split(",") if c]
    rows, t0 = [], time.perf_counter()
    for cohort in args.cohorts.split(","):
        df, clinical, markers = load_cohort(cohort)
        for rep in range(args.first_repeat, args.first_repeat + args.repeats):
            fed = layout(df, clinical, markers, args.work / f"{cohort}-{rep}", seed=rep)
            c = {"coxnet": c_scores(coxnet(fed, clinical, markers)),
                 "coxnet-complete": c_scores(coxnet(fed, clinical, markers, complete=df.assign(
                     patient_id=patient_ids(len(df)))))}
            for cfg in configs:
                for mode in args.modes.split(","):
                    per_seed = [c_scores(omnifuse_arm(fed, cfg, mode, s, args.threads)) for s in range(args.seeds)]
                    c[f"{mode}/{cfg}"] = {m: float(np.mean([p[m] for p in per_seed])) for m in ("c_pooled", "c_strat")}
            rows.append({"cohort": cohort, "repeat": rep, "c": c})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".rows.json").write_text(json.dumps(rows, indent=1))  # partial results
            log.warning("%s repeat %d: %s (%.0f s)", cohort, rep,
                        {k: round(v["c_pooled"], 3) for k, v in c.items()}, time.perf_counter() - t0)
    summary = summarise(rows, configs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "summary": summary, "seconds": time.perf_counter() - t0}, indent=1))
    md = markdown(summary, configs, args.seeds)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
