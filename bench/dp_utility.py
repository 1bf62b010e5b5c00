"""B5 — DP utility: test AUROC against epsilon, federated and centralized, with the membership-inference AUC.

Every run trains the DP profile (``configs/demo-dp.yaml``) through ``bench.training`` with the same site privacy
layer a Flower site uses (sigma calibrated once for the planned schedule, the pre-flight check, TLA noisy-max
counted, a ledger per population): federated = one accountant per site, centralized = one for the pooled training
set. epsilon = inf is the same config without DP (same DP-compatible layers). Each DP row is compared with the
non-DP row of its mode, paired over (data seed, model seed) with the two-level bootstrap of ``bench/bootstrap.py``;
federated is compared with centralized at every epsilon. The membership-inference AUC is the loss-threshold attack
(members = training patients, non-members = the same sites' validation and test patients): a lower-bound check of
leakage, not a guarantee.

Usage:
  .venv/bin/python bench/dp_utility.py --preset demo --data-seeds 3 --seeds 3 --jobs 2 --threads 1
  .venv/bin/python bench/dp_utility.py --preset demo-x5 --data-seeds 1 --seeds 3 --jobs 2 --threads 1
  .venv/bin/python bench/dp_utility.py --quick        # smoke preset, smoke-dp config, epsilon 8 and inf (seconds)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fnum, fp, markdown_table, summary, target  # noqa: E402

EPSILONS = (1.0, 3.0, 8.0, math.inf)
QUICK_EPSILONS = (8.0, math.inf)


def eps_name(eps: float) -> str:
    return "inf" if math.isinf(eps) else f"{eps:g}"


def row_overrides(eps: float) -> dict:
    if math.isinf(eps):
        return {"dp": False, "dp_compatible": True}
    return {"dp": True, "target_epsilon": eps}


def _mean(runs: list, path: tuple) -> float:
    vals = []
    for r in runs:
        v = r
        for k in path:
            v = (v or {}).get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and math.isfinite(v):
            vals.append(float(v))
    return sum(vals) / len(vals) if vals else float("nan")


def _privacy(runs: list) -> dict:
    """Mean over runs of the largest per-population spent epsilon, sigma and noise ratio."""
    def worst(r, key):
        vals = [v.get(key) for v in (r.get("privacy") or {}).values() if v.get(key) is not None]
        return max(vals) if vals else None
    return {k: _mean([{k: worst(r, k)} for r in runs], (k,)) for k in ("epsilon", "noise_multiplier", "noise_ratio")}


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=3))
    ap.add_argument("--modes", default="federated,centralized", help="federated and/or centralized")
    ap.add_argument("--epsilons", default="", help="comma-separated epsilons, inf = no DP (default 1,3,8,inf)")
    args = ap.parse_args()
    if args.config is None:
        args.config = "smoke-dp" if args.quick else "demo-dp"
    if args.preset is None:
        args.preset = "smoke" if args.quick else "demo"
    args = resolve_args(args, "dp_utility", preset_in_name=True)
    args.mia = True
    modes = [m for m in args.modes.split(",") if m]
    epsilons = [float(e) for e in args.epsilons.split(",") if e] or list(QUICK_EPSILONS if args.quick else EPSILONS)
    if math.inf not in epsilons:
        epsilons.append(math.inf)
    base = load_config(args)
    data_seeds, seeds = seeds_of(args)
    keys = {(m, e): f"{m}/eps{eps_name(e)}" for m in modes for e in epsilons}
    specs = [RunSpec(keys[m, e], ds, s, m, row_overrides(e)) for ds in data_seeds for s in seeds
             for m in modes for e in epsilons]
    runs = by_key(execute(specs, args))
    table, targets, lines = {}, {}, []
    for (m, e), key in keys.items():
        cell = {"mode": m, "epsilon_target": None if math.isinf(e) else e, "auroc": summary(runs[key]),
                "mia_auc": _mean(runs[key], ("mia", "auc")), "mia_tpr_at_1pct_fpr": _mean(runs[key], ("mia", "tpr_at_1pct_fpr")),
                **({"spent": _privacy(runs[key])} if math.isfinite(e) else {})}
        if math.isfinite(e):
            cell["vs_nodp"] = compare(runs[key], runs[keys[m, math.inf]], reps=args.bootstrap, seed=args.bootstrap_seed)
            targets[f"mia_{m}_{eps_name(e)}"] = target(f"{m} ε={eps_name(e)} membership-inference AUC",
                                                        cell["mia_auc"], 0.55, "<=")
        if m == "federated" and "centralized" in modes:
            cell["vs_centralized"] = compare(runs[key], runs[keys["centralized", e]], reps=args.bootstrap,
                                             seed=args.bootstrap_seed)
        table[key] = cell
        spent = cell.get("spent", {})
        lines.append([m, eps_name(e), fnum(spent.get("epsilon"), 2) if spent else "–",
                      fnum(spent.get("noise_multiplier"), 2) if spent else "–",
                      fnum(spent.get("noise_ratio"), 2) if spent else "–", fmt(cell["auroc"]),
                      fdiff(cell.get("vs_nodp")), fp(cell.get("vs_nodp")), fdiff(cell.get("vs_centralized")),
                      fnum(cell["mia_auc"])])
    if "federated" in modes:
        limits = {8.0: -0.03 if args.preset == "demo-x5" else -0.05, 3.0: -0.10}
        for e, lim in limits.items():
            if e in epsilons:
                targets[f"federated_eps{eps_name(e)}_vs_nodp"] = target(
                    f"federated ε={eps_name(e)} − no DP AUROC", table[keys["federated", e]]["vs_nodp"]["mean_diff"], lim)
        if 8.0 in epsilons and args.preset == "demo":
            targets["federated_eps8_auroc"] = target("federated ε=8 AUROC on the demo federation",
                                                     table[keys["federated", 8.0]]["auroc"]["mean"], 0.70)
    md = markdown_table(["mode", "ε", "ε spent (max site)", "σ (max site)", "noise ratio σ√P/B (max site)",
                         "test AUROC", "Δ vs no DP", "p", "Δ fed − central", "MIA AUC"], lines)
    publish(args, {
        "benchmark": "B5 DP utility", "preset": args.preset, "config": args.config, "modes": modes,
        "epsilons": [eps_name(e) for e in epsilons], "data_seeds": data_seeds, "seeds": seeds,
        "metric": "test AUROC, sample-weighted mean over sites; MIA = loss-threshold attack AUC",
        "table": table, "config_resolved": base.to_flat()},
        [x for k in keys.values() for x in runs[k]],
        f"B5 DP utility (preset {args.preset}, config {args.config}, {len(data_seeds)} data seed(s) × {len(seeds)} "
        "model seed(s)); Δ = paired mean difference [95 % two-level bootstrap CI], p = paired t-test", md, targets)


if __name__ == "__main__":
    main()
