"""B12 — adaptive clipping (issue 25): test AUROC of fixed-clip and adaptive DP-SGD at the same ε.

Every arm trains the DP profile (``configs/demo-dp.yaml``) through ``bench.training`` with the same site privacy
layer a Flower site uses, at the same target ε, so σ, q and the steps (hence ε) are the same in every arm; only
the clipping differs. Arms: ``fixed`` (the config's ``max-grad-norm``, tuned for the profile: 0.1), ``fixed-1``
(C = 1, the untuned default) and ``adaptive`` (``max-grad-norm: adaptive`` with the clip-* defaults: γ = 0.5,
C_0 = 1, η_C = 0.2, σ_b = B/20); ``adaptive-q0.1`` (γ = 0.1) and ``auto`` (``dp-schedule: auto``: each site
picks its expected batch, docs/privacy.md; here σ, q and the steps differ, ε does not) only when named in ``--arms``. Δ = paired
difference against ``fixed`` over (data seed, model seed); the DP noise of each run is seeded from a fresh site
secret, so arms are paired in data and model seed, not in noise draws.

Usage:
  .venv/bin/python bench/adaptive_clip.py --preset demo --data-seeds 1 --seeds 2 --modes centralized --threads 1
  .venv/bin/python bench/adaptive_clip.py --quick      # smoke preset, smoke-dp config (seconds)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fnum, fp, markdown_table, summary  # noqa: E402

ARMS = {"fixed": {}, "fixed-1": {"max_grad_norm": 1.0}, "adaptive": {"max_grad_norm": "adaptive"},
        "adaptive-q0.1": {"max_grad_norm": "adaptive", "clip_quantile": 0.1},  # this and auto: only with --arms
        "auto": {"dp_schedule": "auto"},  # issue 25 item 3: each site picks its batch (fixed clip C of the config)
        "auto+adaptive": {"dp_schedule": "auto", "max_grad_norm": "adaptive"}}
DEFAULT_ARMS = ("fixed", "fixed-1", "adaptive")


def _worst(runs: list, key: str) -> float:
    """Mean over runs of the largest per-population value of a privacy metric (NaN when absent)."""
    vals = []
    for r in runs:
        per = [v.get(key) for v in (r.get("privacy") or {}).values() if v.get(key) is not None]
        if per:
            vals.append(max(per))
    return sum(vals) / len(vals) if vals else float("nan")


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=2))
    ap.add_argument("--modes", default="centralized", help="federated and/or centralized")
    ap.add_argument("--epsilon", type=float, default=8.0, help="target epsilon of every arm")
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated subset of {list(ARMS)}")
    args = ap.parse_args()
    args.config = args.config or ("smoke-dp" if args.quick else "demo-dp")
    args.preset = args.preset or ("smoke" if args.quick else "demo")
    args = resolve_args(args, "adaptive_clip", preset_in_name=True)
    modes = [m for m in args.modes.split(",") if m]
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        ap.error(f"--arms: unknown {unknown}; choose from {list(ARMS)}")
    base = load_config(args)
    data_seeds, seeds = seeds_of(args)
    keys = {(m, a): f"{m}/{a}" for m in modes for a in arms}
    specs = [RunSpec(keys[m, a], ds, s, m, {"dp": True, "target_epsilon": args.epsilon, **ARMS[a]})
             for ds in data_seeds for s in seeds for m in modes for a in arms]
    runs = by_key(execute(specs, args))
    table, lines = {}, []
    for (m, a), key in keys.items():
        cell = {"mode": m, "arm": a, "auroc": summary(runs[key]),
                "per_run_auroc": [r.get("auroc") for r in runs[key]],
                "spent": {k: _worst(runs[key], k) for k in ("epsilon", "noise_multiplier", "noise_ratio",
                                                            "max_grad_norm")}}
        if a != "fixed" and "fixed" in arms:
            cell["vs_fixed"] = compare(runs[key], runs[keys[m, "fixed"]], reps=args.bootstrap, seed=args.bootstrap_seed)
        table[key] = cell
        sp = cell["spent"]
        lines.append([m, a, fnum(sp["epsilon"], 2), fnum(sp["noise_multiplier"], 3), fnum(sp["max_grad_norm"], 3),
                      fmt(cell["auroc"]), fdiff(cell.get("vs_fixed")), fp(cell.get("vs_fixed"))])
    md = markdown_table(["mode", "clipping", "ε spent (max pop.)", "σ", "final C (max pop.)", "test AUROC",
                         "Δ vs fixed", "p"], lines)
    publish(args, {"benchmark": "B12 adaptive clipping", "preset": args.preset, "config": args.config,
                   "modes": modes, "arms": {a: ARMS[a] for a in arms}, "epsilon": args.epsilon,
                   "data_seeds": data_seeds, "seeds": seeds, "metric": "test AUROC, sample-weighted mean over sites",
                   "table": table, "config_resolved": base.to_flat()},
            [x for k in keys.values() for x in runs[k]],
            f"B12 adaptive clipping (preset {args.preset}, config {args.config}, ε = {args.epsilon:g}, "
            f"{len(data_seeds)} data seed(s) × {len(seeds)} model seed(s))", md, {})


if __name__ == "__main__":
    main()
