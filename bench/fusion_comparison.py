"""B1 fusion comparison (paper Table 3 shape): every fusion on modality pairs and on all modalities, plus the
dominant modality alone, mean ± std over seeds and a paired test of each fusion against concat.

Usage:
  .venv/bin/python bench/fusion_comparison.py --preset laziness --config demo --seeds 5 \
      [--federated] [--fusions concat,omnifuse] [--subsets all,ehr+image] [--out bench/results/fusion_comparison.json]
  .venv/bin/python bench/fusion_comparison.py --quick      # smoke preset, 1 seed, 1 epoch, concat + omnifuse

Centralized runs train in memory on sites loaded once (``bench.common.train_centralized``, identical to
``sim.modes.run_centralized``); ``--federated`` runs every cell through ``sim.federated.run_federated`` instead
(Flower simulation, one virtual SuperNode per site). One generated federation (``--data-seed``); the seeds vary the
model initialisation and shuffling, and the same seeds are used by every method (paired).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, federation, load_all, load_config, resolve_args, restrict_sites,  # noqa: E402
                          run_mode, environment, train_centralized, write_result)
from bench.stats import fmt, fnum, markdown_table, mean_std, paired_test, target, targets_lines  # noqa: E402

log = logging.getLogger("bench.fusion_comparison")

FUSIONS = ["concat", "sum", "se_gate", "late", "moddrop", "healnet", "dwfuse", "omnifuse"]
SUBSETS = {"ehr+image": "ehr,image", "ehr+text": "ehr,text", "ehr+genomics": "ehr,genomics",
           "all": "ehr,image,text,genomics"}
DOMINANT = "ehr"
QUICK_FUSIONS, QUICK_SUBSETS = ["concat", "omnifuse"], ["all"]


def _parse() -> tuple:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--federated", action="store_true", help="federated runs (Flower simulation) instead of pooled")
    ap.add_argument("--fusions", default="", help=f"comma-separated subset of {FUSIONS}")
    ap.add_argument("--subsets", default="", help=f"comma-separated subset of {list(SUBSETS)}")
    args = ap.parse_args()
    args = resolve_args(args, "fusion_comparison-federated" if args.federated else "fusion_comparison")
    fusions = [f for f in args.fusions.split(",") if f] or (QUICK_FUSIONS if args.quick else FUSIONS)
    subsets = [s for s in args.subsets.split(",") if s] or (QUICK_SUBSETS if args.quick else list(SUBSETS))
    for bad in [f for f in fusions if f not in FUSIONS] + [s for s in subsets if s not in SUBSETS]:
        ap.error(f"unknown fusion or subset {bad!r}; fusions: {FUSIONS}, subsets: {list(SUBSETS)}")
    return args, fusions, subsets


def _cell(args, data, sites, modalities: str, fusion: str, seed: int) -> dict:
    cfg = load_config(args, fusion=fusion, modalities=modalities, seed=seed)
    if args.federated:
        out = args.work / "runs" / "fusion_comparison" / f"{modalities.replace(',', '+')}-{fusion}-{seed}"
        return run_mode("federated", cfg, data, out, reuse=args.reuse)
    return train_centralized(restrict_sites(sites, cfg.modality_list), cfg)


def main() -> None:
    args, fusions, subsets = _parse()
    base = load_config(args)
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    sites = None if args.federated else load_all(data, base)
    seeds = list(range(args.seeds))
    runs: dict[str, dict[str, list]] = {}
    dominant = [None] * len(seeds)
    for i, seed in enumerate(seeds):
        dominant[i] = _cell(args, data, sites, DOMINANT, "concat", seed)["auroc"]
        log.info("seed %d %s only: %s", seed, DOMINANT, fnum(dominant[i]))
        for subset in subsets:
            for fusion in fusions:
                res = _cell(args, data, sites, SUBSETS[subset], fusion, seed)
                runs.setdefault(subset, {}).setdefault(fusion, []).append(res["auroc"])
                log.info("seed %d %s %s: AUROC %s (%.1f s)", seed, subset, fusion, fnum(res["auroc"]), res["seconds"])
    table = {}
    for subset in subsets:
        table[subset] = {}
        for fusion in fusions:
            cell = {"auroc": mean_std(runs[subset][fusion])}
            if fusion != "concat" and "concat" in runs[subset]:
                cell["vs_concat"] = paired_test(runs[subset][fusion], runs[subset]["concat"])
            cell["vs_dominant"] = paired_test(runs[subset][fusion], dominant)
            table[subset][fusion] = cell
    dom = mean_std(dominant)
    targets = {}
    if "omnifuse" in fusions and "concat" in fusions:
        for subset in subsets:
            gain = table[subset]["omnifuse"]["vs_concat"]["mean_diff"]
            targets[f"omnifuse_vs_concat[{subset}]"] = target("full OmniFuse − concat AUROC", gain, 0.03)
    header = ["fusion"] + [f"{s} AUROC" for s in subsets] + [f"Δ vs concat ({s}), p" for s in subsets]
    rows = [[f"{DOMINANT} only", *([fmt(dom)] * len(subsets)), *(["—"] * len(subsets))]]
    for fusion in fusions:
        deltas = []
        for s in subsets:
            t = table[s][fusion].get("vs_concat")
            deltas.append("—" if t is None else f"{fnum(t['mean_diff'], 3)}, p={fnum(t['t_p'], 3)}")
        rows.append([fusion, *(fmt(table[s][fusion]["auroc"]) for s in subsets), *deltas])
    md = markdown_table(header, rows)
    mode = "federated" if args.federated else "centralized"
    write_result(args.out, {
        "benchmark": "B1 fusion comparison", "mode": mode, "preset": args.preset, "config": args.config,
        "data_seed": args.data_seed, "seeds": seeds, "quick": args.quick, "fusions": fusions, "subsets": subsets,
        "metric": "test AUROC, sample-weighted mean over sites", "dominant": {"modality": DOMINANT, "auroc": dom},
        "table": table, "targets": targets, "config_resolved": base.to_flat(), "environment": environment(),
        "markdown": md})
    print(f"B1 fusion comparison ({mode}, preset {args.preset}, config {args.config}, {len(seeds)} seed(s)); "
          "paired t-test over seeds vs concat")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


if __name__ == "__main__":
    main()
