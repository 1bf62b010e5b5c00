"""B4 federation value: federated vs centralized vs each site alone (local-only), OmniFuse vs concat, beside the
generator's oracle, mean ± std over seeds with paired tests.

Usage:
  .venv/bin/python bench/federation_value.py --preset laziness --config demo --seeds 5 [--rounds 3 --local-epochs 1]
      [--runs federated/omnifuse,local/omnifuse] [--threads 1] [--out bench/results/federation_value.json]
  .venv/bin/python bench/federation_value.py --quick      # smoke preset, 1 seed, 1 epoch

Runs (the same seeds for every run, so differences are paired): centralized {ehr_only, concat, omnifuse} train in
memory on the pooled sites (``bench.common.train_centralized`` = ``sim.modes.run_centralized``); local/omnifuse
(every site trains alone, ``sim.modes.run_local``) and federated {omnifuse, concat} (Flower simulation,
``sim.federated.run_federated``) go through the real entry points. Every run sees the same number of epochs:
centralized and local-only ``rounds × local-epochs`` epochs, federated ``rounds`` rounds of ``local-epochs``.
The metric is the test AUROC per site and its sample-weighted mean over sites ("global"); the oracle is the
generator's Bayes-optimal risk given the modalities each patient actually has (``observed``), per site and
weighted the same way, so it is an upper bound on the same scale.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, choose, environment, federation, load_all, load_config,  # noqa: E402
                          resolve_args, restrict_sites, run_mode, train_centralized, write_result)
from bench.stats import fmt, fnum, markdown_table, mean_std, paired_test, target, targets_lines  # noqa: E402

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


def oracle_auroc(oracle: dict, sites: list[str], source: str = "observed") -> dict:
    """The oracle's test AUROC per site and its sample-weighted mean (``global``), as our runs report it."""
    per = {s: oracle["per_site"][s]["test"][source]["binary"] for s in sites if s in oracle.get("per_site", {})}
    n = sum(v["n"] for v in per.values())
    glob = sum(v["auroc"] * v["n"] for v in per.values()) / n if n else float("nan")
    return {"global": glob, "sites": {s: v["auroc"] for s, v in per.items()}}


def _run(name: str, args, data: Path, sites, seed: int) -> dict:
    mode, overrides = RUNS[name]
    cfg = load_config(args, seed=seed, **overrides)
    if mode == "centralized":
        res = train_centralized(restrict_sites(sites, cfg.modality_list), cfg)
    else:
        res = run_mode(mode, cfg, data, args.work / "runs" / "federation_value" / f"{name.replace('/', '-')}-{seed}",
                       reuse=args.reuse)
    return {"global": res["auroc"], "sites": res["sites"], "seconds": res["seconds"]}


def _targets(summary: dict, per_seed: dict, oracle: dict) -> dict:
    out = {}
    fed, cen, loc = (per_seed.get(k) for k in ("federated/omnifuse", "centralized/omnifuse", "local/omnifuse"))
    if fed and cen:
        d = paired_test([r["global"] for r in fed], [r["global"] for r in cen])["mean_diff"]
        out["federated_vs_centralized"] = target("federated − centralized OmniFuse AUROC", d, -0.01)
    if fed:
        out["federated_vs_oracle"] = target("federated OmniFuse − oracle (observed) AUROC",
                                            summary["federated/omnifuse"]["global"]["mean"] - oracle["global"], -0.03)
    if fed and loc:
        for site in sorted(summary["federated/omnifuse"]["sites"]):
            gain = paired_test([r["sites"].get(site) for r in fed], [r["sites"].get(site) for r in loc])["mean_diff"]
            out[f"federated_vs_local[{site}]"] = target(f"{site}: federated − local-only AUROC", gain, 0.02)
    if fed and per_seed.get("federated/concat"):
        d = paired_test([r["global"] for r in fed], [r["global"] for r in per_seed["federated/concat"]])["mean_diff"]
        out["omnifuse_vs_concat_federated"] = target("federated: OmniFuse − concat AUROC", d, 0.03)
    return out


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--runs", default="", help=f"comma-separated subset of {list(RUNS)}")
    args = resolve_args(ap.parse_args(), "federation_value")
    names = choose(ap, args.runs, list(RUNS), QUICK_RUNS if args.quick else list(RUNS), "run")
    base = load_config(args)
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    sites = load_all(data, base) if any(RUNS[n][0] == "centralized" for n in names) else None
    site_names = [str(s) for s in _site_names(data)]
    oracle = oracle_auroc(json.loads((data / "oracle.json").read_text()), site_names)
    seeds = list(range(args.seeds))
    per_seed: dict[str, list[dict]] = {n: [] for n in names}
    for seed in seeds:
        for name in names:
            per_seed[name].append(_run(name, args, data, sites, seed))
            log.info("seed %d %s: global AUROC %s (%.1f s)", seed, name, fnum(per_seed[name][-1]["global"]),
                     per_seed[name][-1]["seconds"])
    summary = {n: {"global": mean_std(r["global"] for r in runs),
                   "sites": {s: mean_std(r["sites"].get(s) for r in runs) for s in site_names},
                   "seconds": mean_std(r["seconds"] for r in runs)} for n, runs in per_seed.items()}
    targets = _targets(summary, per_seed, oracle)
    rows = [[n, fmt(summary[n]["global"]), *(fmt(summary[n]["sites"][s]) for s in site_names)] for n in names]
    rows.append(["oracle (observed modalities)", fnum(oracle["global"]),
                 *(fnum(oracle["sites"].get(s)) for s in site_names)])
    md = markdown_table(["run", "global AUROC", *site_names], rows)
    write_result(args.out, {
        "benchmark": "B4 federation value", "preset": args.preset, "config": args.config,
        "data_seed": args.data_seed, "seeds": seeds, "quick": args.quick, "runs": names,
        "run_overrides": {n: RUNS[n][1] for n in names}, "per_seed": per_seed, "summary": summary,
        "oracle": oracle, "metric": "test AUROC per site; global = sample-weighted mean over sites",
        "targets": targets, "config_resolved": base.to_flat(), "environment": environment(), "markdown": md})
    print(f"B4 federation value (preset {args.preset}, config {args.config}, {base.rounds} x {base.local_epochs} "
          f"epochs, {len(seeds)} seed(s))")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


def _site_names(data: Path) -> list:
    import yaml

    fed = yaml.safe_load((data / "federation.yaml").read_text())
    return list(fed.get("sites", []))


if __name__ == "__main__":
    main()
