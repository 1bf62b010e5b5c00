"""B2 ablation (paper Table 4 rows a–f): OmniFuse with DWFuse, TLA, forward and backward imputation toggled.

Usage:
  .venv/bin/python bench/ablation.py --preset laziness --config demo --seeds 5 [--rows a,b,f] \
      [--out bench/results/ablation.json]
  .venv/bin/python bench/ablation.py --quick      # smoke preset, 1 seed, 1 epoch, rows a and f

Rows (each one config key, see docs/method.md): (a) full OmniFuse; (b) without DWFuse (use-dwfuse: false, ω ≡ 1);
(c) without TLA (use-tla: false); (d) without forward imputation (use-forward: false: missing slots keep e_m(0));
(e) without backward imputation (use-backward: false); (f) none of the four. Centralized, in memory on sites loaded
once (``bench.common.train_centralized``); each row vs (a) with a paired t-test over the same seeds. The issue's
claim is that each component adds accuracy: the target for rows b–f is full − row > 0.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, choose, environment, federation, load_all, load_config,  # noqa: E402
                          resolve_args, train_centralized, write_result)
from bench.stats import fmt, fnum, markdown_table, mean_std, paired_test, target, targets_lines  # noqa: E402

log = logging.getLogger("bench.ablation")

ROWS = {  # id -> (label, config overrides on fusion: omnifuse)
    "a": ("full OmniFuse", {}),
    "b": ("− DWFuse", {"use_dwfuse": False}),
    "c": ("− TLA", {"use_tla": False}),
    "d": ("− forward imputation", {"use_forward": False}),
    "e": ("− backward imputation", {"use_backward": False}),
    "f": ("− all four", {"use_dwfuse": False, "use_tla": False, "use_forward": False, "use_backward": False}),
}
QUICK_ROWS = ["a", "f"]


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--rows", default="", help=f"comma-separated row ids out of {list(ROWS)}")
    args = resolve_args(ap.parse_args(), "ablation")
    rows = choose(ap, args.rows, list(ROWS), QUICK_ROWS if args.quick else list(ROWS), "row")
    if "a" not in rows:
        rows = ["a", *rows]  # every row is compared with the full model
    base = load_config(args, fusion="omnifuse")
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    sites = load_all(data, base)
    seeds = list(range(args.seeds))
    runs: dict[str, list] = {r: [] for r in rows}
    for seed in seeds:
        for r in rows:
            res = train_centralized(sites, base.replace(seed=seed, **ROWS[r][1]))
            runs[r].append(res["auroc"])
            log.info("seed %d row %s (%s): AUROC %s (%.1f s)", seed, r, ROWS[r][0], fnum(res["auroc"]), res["seconds"])
    table, targets = {}, {}
    for r in rows:
        cell = {"label": ROWS[r][0], "overrides": ROWS[r][1], "auroc": mean_std(runs[r])}
        if r != "a":
            cell["full_minus_row"] = paired_test(runs["a"], runs[r])
            targets[f"row_{r}"] = target(f"full − ({r}) {ROWS[r][0]} AUROC", cell["full_minus_row"]["mean_diff"], 0.0,
                                       ">")
        table[r] = cell
    md = markdown_table(["row", "variant", "AUROC", "full − row", "paired t p"], [
        [r, c["label"], fmt(c["auroc"]), fnum(c.get("full_minus_row", {}).get("mean_diff")) if r != "a" else "—",
         fnum(c.get("full_minus_row", {}).get("t_p")) if r != "a" else "—"] for r, c in table.items()])
    write_result(args.out, {
        "benchmark": "B2 ablation", "mode": "centralized", "preset": args.preset, "config": args.config,
        "data_seed": args.data_seed, "seeds": seeds, "quick": args.quick, "rows": rows,
        "metric": "test AUROC, sample-weighted mean over sites", "table": table, "targets": targets,
        "config_resolved": base.to_flat(), "environment": environment(), "markdown": md})
    print(f"B2 ablation (centralized, preset {args.preset}, config {args.config}, {len(seeds)} seed(s))")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


if __name__ == "__main__":
    main()
