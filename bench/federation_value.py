"""B4 federation value: federated vs centralized vs each site alone (local-only), OmniFuse vs concat, beside the
generator's oracle, with paired differences and 95 % bootstrap intervals over data seeds, model seeds and patients.

Usage:
  .venv/bin/python bench/federation_value.py --data-seeds 3 --seeds 3 [--rounds 3 --local-epochs 1] [--jobs 8]
      [--runs federated/omnifuse,local/omnifuse] [--flower] [--threads 1] [--out bench/results/federation_value.json]
  .venv/bin/python bench/federation_value.py --quick      # smoke preset, 1 seed, 1 epoch

Runs (the same data and model seeds for every run, so differences are paired), all in memory (``bench.training``):
centralized {ehr_only, concat, omnifuse} on the pooled sites (= ``sim.modes.run_centralized``); local/omnifuse, every
site trains alone (= ``sim.modes.run_local``); federated {omnifuse, concat}, the in-process round loop with
modality-aware aggregation (``bench.training.train_federated``; no Flower; it reproduces a Flower simulation's test
scores to float rounding, tested). ``--flower`` runs the federated rows as Flower simulations instead (one at a
time; ``--reuse`` keeps finished ones). Every run sees the same number of epochs: centralized and local-only
``rounds × local-epochs`` epochs, federated ``rounds`` rounds of ``local-epochs``. The metric is the test AUROC per
site and its sample-weighted mean over sites ("global"); the oracle is the generator's Bayes-optimal risk given the
modalities each patient actually has (``observed``), per site and weighted the same way (averaged over the data
seeds), so it is an upper bound on the same scale.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, choose, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, federation_dir, publish, settings_of  # noqa: E402
from bench.stats import compare, fdiff, fmt, fnum, fp, markdown_table, mean_std, summary, target  # noqa: E402

log = logging.getLogger("bench.federation_value")

RUNS = {  # name -> (mode, config overrides)
    "centralized/ehr_only": ("centralized", {"fusion": "concat", "modalities": "ehr"}),
    "centralized/concat": ("centralized", {"fusion": "concat"}),
    "centralized/omnifuse": ("centralized", {"fusion": "omnifuse"}),
    "local/omnifuse": ("local", {"fusion": "omnifuse"}),
    "federated/omnifuse": ("federated", {"fusion": "omnifuse"}),
    "federated/concat": ("federated", {"fusion": "concat"}),
}
QUICK_RUNS = ["centralized/omnifuse", "local/omnifuse", "federated/omnifuse"]
PAIRS = [  # (target id, label, arm A, arm B, threshold of the target on A − B or None)
    ("federated_vs_centralized", "federated − centralized (OmniFuse)", "federated/omnifuse", "centralized/omnifuse",
     -0.01),
    ("omnifuse_vs_concat_federated", "federated OmniFuse − federated concat", "federated/omnifuse",
     "federated/concat", 0.03),
    ("", "centralized OmniFuse − centralized concat", "centralized/omnifuse", "centralized/concat", None),
    ("", "centralized OmniFuse − EHR only", "centralized/omnifuse", "centralized/ehr_only", None),
]


def oracle_auroc(oracle: dict, sites: list[str], source: str = "observed") -> dict:
    """The oracle's test AUROC per site and its sample-weighted mean (``global``), as our runs report it."""
    per = {s: oracle["per_site"][s]["test"][source]["binary"] for s in sites if s in oracle.get("per_site", {})}
    n = sum(v["n"] for v in per.values())
    glob = sum(v["auroc"] * v["n"] for v in per.values()) / n if n else float("nan")
    return {"global": glob, "sites": {s: v["auroc"] for s, v in per.items()}}


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=3))
    ap.add_argument("--runs", default="", help=f"comma-separated subset of {list(RUNS)}")
    ap.add_argument("--flower", action="store_true", help="federated rows as Flower simulations (one at a time)")
    ap.add_argument("--no-anchor", action="store_true", help="leave out the classical anchor rows (bench/anchor.py)")
    args = resolve_args(ap.parse_args(), "federation_value", preset_in_name=True)
    names = choose(ap, args.runs, list(RUNS), QUICK_RUNS if args.quick else list(RUNS), "run")
    base = load_config(args)
    data_seeds, seeds = seeds_of(args)
    folders = [federation_dir(settings_of(args), ds) for ds in data_seeds]
    site_names = [str(s) for s in _site_names(folders[0])]
    oracles = [oracle_auroc(json.loads((f / "oracle.json").read_text()), site_names) for f in folders]
    oracle = {"global": float(np.mean([o["global"] for o in oracles])),
              "sites": {s: float(np.mean([o["sites"][s] for o in oracles if s in o["sites"]])) for s in site_names},
              "per_data_seed": oracles}

    def mode(name: str) -> str:
        m = RUNS[name][0]
        return "flower" if m == "federated" and args.flower else m

    specs = [RunSpec(n, ds, s, mode(n), RUNS[n][1]) for ds in data_seeds for s in seeds for n in names]
    runs = by_key(execute(specs, args))
    if not args.no_anchor:  # the classical anchor beside every run (issue 23): pooled and per-site HGB
        from bench.anchor import anchor_rows
        from bench.runner import load_federation

        from threadpoolctl import threadpool_limits

        with threadpool_limits(max(1, args.threads or 1)):  # OpenMP spin-waits badly on a busy machine
            runs.update(anchor_rows(lambda ds: load_federation(args, ds), base, data_seeds, seeds))
        names = [*names, *(n for n in runs if n.startswith("anchor/"))]
    kw = {"reps": args.bootstrap, "seed": args.bootstrap_seed}
    table = {n: {"global": summary(runs[n]), "sites": {s: summary(runs[n], s) for s in site_names},
                 "seconds": mean_std(r["seconds"] for r in runs[n])} for n in names}
    comparisons, targets = {}, {}
    for tid, label, a, b, threshold in PAIRS:
        if a in runs and b in runs:
            comparisons[label] = compare(runs[a], runs[b], **kw)
            if threshold is not None:
                targets[tid] = target(f"{label} AUROC", comparisons[label]["mean_diff"], threshold)
    if "federated/omnifuse" in runs:
        targets["federated_vs_oracle"] = target("federated OmniFuse − oracle (observed) AUROC",
                                                table["federated/omnifuse"]["global"]["mean"] - oracle["global"], -0.03)
    for arm in ("federated/omnifuse", "federated/concat"):
        if arm in runs and "anchor/pooled_hgb" in runs:
            comparisons[f"{arm} − pooled HGB anchor"] = compare(runs[arm], runs["anchor/pooled_hgb"], **kw)
    if "federated/omnifuse" in runs and "anchor/local_hgb" in runs:
        for site in site_names:
            comparisons[f"{site}: federated OmniFuse − local HGB anchor"] = compare(
                runs["federated/omnifuse"], runs["anchor/local_hgb"], site=site, **kw)
    if "federated/omnifuse" in runs and "local/omnifuse" in runs:
        for site in site_names:
            c = compare(runs["federated/omnifuse"], runs["local/omnifuse"], site=site, **kw)
            comparisons[f"{site}: federated − local-only (OmniFuse)"] = c
            targets[f"federated_vs_local[{site}]"] = target(f"{site}: federated − local-only AUROC",
                                                            c["mean_diff"], 0.02)
    rows = [[n + (" (Flower)" if n in RUNS and mode(n) == "flower" else ""), fmt(table[n]["global"]),
             *(fmt(table[n]["sites"][s]) for s in site_names)] for n in names]
    rows.append(["oracle (observed modalities)", fnum(oracle["global"]),
                 *(fnum(oracle["sites"].get(s)) for s in site_names)])
    md = markdown_table(["run", "global AUROC", *site_names], rows)
    md += "\n\n" + markdown_table(["comparison", "Δ [95 % CI]", "paired t p"],
                                  [[k, fdiff(c), fp(c)] for k, c in comparisons.items()])
    publish(args, {
        "benchmark": "B4 federation value", "preset": args.preset, "config": args.config, "data_seeds": data_seeds,
        "seeds": seeds, "runs_compared": names, "run_modes": {n: mode(n) if n in RUNS else "anchor" for n in names},
        "run_overrides": {n: RUNS[n][1] for n in names if n in RUNS}, "summary": table, "comparisons": comparisons,
        "oracle": oracle, "metric": "test AUROC per site; global = sample-weighted mean over sites",
        "config_resolved": base.to_flat()},
        [r for k in runs for r in runs[k]],
        f"B4 federation value (preset {args.preset}, config {args.config}, {base.rounds} x {base.local_epochs} epochs, "
        f"{len(data_seeds)} data seed(s) × {len(seeds)} model seed(s)); Δ = paired mean difference [95 % two-level "
        "bootstrap CI]", md, targets)


def _site_names(data: Path) -> list:
    import yaml

    fed = yaml.safe_load((data / "federation.yaml").read_text())
    return list(fed.get("sites", []))


if __name__ == "__main__":
    main()
