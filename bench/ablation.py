"""B2 ablation (paper Table 4): OmniFuse's components added one at a time to concat, centralized or federated, with
paired differences and 95 % bootstrap intervals over data seeds, model seeds and test patients.

Usage:
  .venv/bin/python bench/ablation.py --data-seeds 3 --seeds 3 [--federated] [--rows a,b,f] [--jobs 8] \
      [--style table4|removal|reduction] [--out bench/results/ablation.json]
  .venv/bin/python bench/ablation.py --quick [--federated]     # smoke preset, 1 seed, 1 epoch, rows a, c, f

Styles (each row is a set of config overrides, see docs/method.md):

* ``table4`` (default, cumulative from concat as in the paper): (a) concat; (b) + DWFuse (OmniFuse with TLA and both
  imputation directions off); (c) + TLA; (d) + IMP-forward; (e) + IMP-backward instead of forward (DWFuse, TLA and
  backward imputation); (f) all four = full OmniFuse. Each row is compared with (a) and with the row before it in the
  table (for (e) that is (d)). Targets: (f) − (a) ≥ 0.03; no row more than 0.005 below the previous one.
* ``removal`` (the earlier table): (a) full OmniFuse and (b)–(f) with one or all components removed; each row
  compared with (a); target full − row > 0.
* ``reduction`` (B2b): full OmniFuse with ``imputation-reduction`` ``sum`` vs ``mean`` (sum − mean).

Rows with TLA also report the TLA trace: which modality combination was mined as lazy, counted per epoch
(centralized) or per site and local epoch (federated; epoch k of a site = its k-th local epoch over all rounds),
and the share of mined epochs whose lazy combination is the dominant modality (``--dominant``, default ehr).
Runs: ``bench.training`` (centralized = ``sim.modes.run_centralized``; federated = the in-process round loop with
modality-aware aggregation, no Flower), in parallel with ``--jobs``.
"""
from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (add_run_args, base_parser, choose, load_config, resolve_args, seeds_of)  # noqa: E402
from bench.runner import RunSpec, by_key, execute, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fp, markdown_table, summary, target  # noqa: E402

log = logging.getLogger("bench.ablation")

_OFF = {"use_dwfuse": False, "use_tla": False, "use_forward": False, "use_backward": False}
_ON = {k: True for k in _OFF}
STYLES = {
    "table4": {
        "a": ("concat", {"fusion": "concat"}),
        "b": ("+ DWFuse", {"fusion": "omnifuse", **_OFF, "use_dwfuse": True}),
        "c": ("+ TLA", {"fusion": "omnifuse", **_OFF, "use_dwfuse": True, "use_tla": True}),
        "d": ("+ IMP-forward", {"fusion": "omnifuse", **_ON, "use_backward": False}),
        "e": ("+ IMP-backward instead of forward", {"fusion": "omnifuse", **_ON, "use_forward": False}),
        "f": ("all four (full OmniFuse)", {"fusion": "omnifuse", **_ON}),
    },
    "removal": {
        "a": ("full OmniFuse", {"fusion": "omnifuse"}),
        "b": ("− DWFuse", {"fusion": "omnifuse", "use_dwfuse": False}),
        "c": ("− TLA", {"fusion": "omnifuse", "use_tla": False}),
        "d": ("− forward imputation", {"fusion": "omnifuse", "use_forward": False}),
        "e": ("− backward imputation", {"fusion": "omnifuse", "use_backward": False}),
        "f": ("− all four", {"fusion": "omnifuse", **_OFF}),
    },
    "reduction": {
        "mean": ("full OmniFuse, imputation-reduction mean", {"fusion": "omnifuse", "imputation_reduction": "mean"}),
        "sum": ("full OmniFuse, imputation-reduction sum", {"fusion": "omnifuse", "imputation_reduction": "sum"}),
    },
}
QUICK_ROWS = {"table4": ["a", "c", "f"], "removal": ["a", "f"], "reduction": ["mean", "sum"]}


COLUMNS = {"table4": {"vs_first": "Δ vs (first) [95 % CI]", "vs_prev": "Δ vs previous row [95 % CI]"},
           "removal": {"full_minus_row": "full − row [95 % CI]"},
           "reduction": {"vs_first": "row − (first) [95 % CI]"}}


def comparisons(style: str, rows: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """Per row, its comparisons ``{column: (arm A, arm B)}``, each reported as A − B."""
    first = rows[0]
    out: dict[str, dict] = {r: {} for r in rows}
    for i, r in enumerate(rows[1:], 1):
        if style == "removal":
            out[r]["full_minus_row"] = (first, r)
        else:
            out[r]["vs_first"] = (r, first)
        if style == "table4":
            out[r]["vs_prev"] = (r, rows[i - 1])
    return out


NOT_MINED = "(not mined)"


def lazy_summary(runs: list[dict], dominant: str) -> dict | None:
    """Lazy combinations mined by TLA over the runs: counts per place (``pooled`` or a site) and epoch, overall
    counts, epochs without mining (an untrained model's first epoch), and the share of mined epochs whose lazy
    combination is ``dominant`` (overall and per place); None when no epoch was mined."""
    counts: dict[str, dict[str, Counter]] = {}
    for r in runs:
        for place, seq in (r.get("lazy") or {}).items():
            for epoch, combo in enumerate(seq, 1):
                counts.setdefault(place, {}).setdefault(str(epoch), Counter())[combo or NOT_MINED] += 1
    per_place = {p: sum(ep.values(), Counter()) for p, ep in counts.items()}
    overall = sum(per_place.values(), Counter())
    unmined = overall.pop(NOT_MINED, 0)
    total = sum(overall.values())
    if not total:
        return None

    def share(c: Counter) -> float:
        mined = sum(n for k, n in c.items() if k != NOT_MINED)
        return c[dominant] / mined if mined else float("nan")

    return {"counts": {p: {e: dict(c.most_common()) for e, c in ep.items()} for p, ep in counts.items()},
            "overall": dict(overall.most_common()), "epochs_mined": total, "epochs_not_mined": unmined,
            "dominant": dominant, "dominant_share": overall[dominant] / total,
            "dominant_share_by_place": {p: share(c) for p, c in per_place.items()}}


def _trace_table(table: dict, dominant: str) -> str:
    lines = []
    for r, cell in table.items():
        lz = cell.get("lazy")
        for place, epochs in (lz or {}).get("counts", {}).items():
            cells = [", ".join(f"{c}×{n}" for c, n in epochs[e].items()) for e in sorted(epochs, key=int)]
            lines.append([r, place, f"{lz['dominant_share_by_place'][place]:.0%}", " / ".join(cells)])
    if not lines:
        return ""
    return ("\n\nTLA trace: lazy combination mined at each epoch, counted over runs (epochs separated by /); "
            f"share = mined epochs whose lazy combination is {dominant}\n\n"
            + markdown_table(["row", "where", f"share lazy = {dominant}", "combinations per epoch"], lines))


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=3))
    ap.add_argument("--style", choices=list(STYLES), default="table4", help="table4 (default), removal or reduction")
    ap.add_argument("--rows", default="", help="comma-separated row ids of the style (default: all)")
    ap.add_argument("--federated", action="store_true", help="federated (in-process round loop) instead of pooled")
    ap.add_argument("--dominant", default="ehr", help="the dominant modality (TLA trace share)")
    args = ap.parse_args()
    suffix = ("" if args.style == "table4" else f"-{args.style}") + ("-federated" if args.federated else "")
    args = resolve_args(args, "ablation" + suffix, preset_in_name=True)
    spec = STYLES[args.style]
    rows = choose(ap, args.rows, list(spec), QUICK_ROWS[args.style] if args.quick else list(spec), "row")
    mode = "federated" if args.federated else "centralized"
    base = load_config(args)
    data_seeds, seeds = seeds_of(args)
    specs = [RunSpec(r, ds, s, mode, spec[r][1]) for ds in data_seeds for s in seeds for r in rows]
    runs = by_key(execute(specs, args))
    cmp = comparisons(args.style, rows)
    table, targets, done = {}, {}, {}
    for r in rows:
        cell = {"label": spec[r][0], "overrides": spec[r][1], "auroc": summary(runs[r])}
        for name, (x, y) in cmp[r].items():
            if (x, y) not in done:
                done[(x, y)] = compare(runs[x], runs[y], reps=args.bootstrap, seed=args.bootstrap_seed)
            cell[name] = {"a": x, "b": y, **done[(x, y)]}
            if name == "vs_prev":
                targets[f"row_{r}_vs_prev"] = target(f"({r}) − ({y}) AUROC", cell[name]["mean_diff"], -0.005)
            elif name == "full_minus_row":
                targets[f"row_{r}"] = target(f"full − ({r}) {spec[r][0]} AUROC", cell[name]["mean_diff"], 0.0, ">")
        cfg = load_config(args, **spec[r][1])
        if cfg.fusion == "omnifuse" and cfg.use_tla:
            cell["lazy"] = lazy_summary(runs[r], args.dominant)
        table[r] = cell
    if args.style == "table4" and rows[0] == "a" and "f" in rows:
        targets["f_vs_a"] = target("(f) all four − (a) concat AUROC", table["f"]["vs_first"]["mean_diff"], 0.03)
    cols = COLUMNS[args.style]
    md = markdown_table(["row", "variant", "AUROC", *(x for c in cols.values() for x in (c, "p"))], [
        [r, c["label"], fmt(c["auroc"]), *(x for n in cols for x in (fdiff(c.get(n)), fp(c.get(n))))]
        for r, c in table.items()]) + _trace_table(table, args.dominant)
    publish(args, {
        "benchmark": f"B2 ablation ({args.style})", "style": args.style, "mode": mode, "preset": args.preset,
        "config": args.config, "data_seeds": data_seeds, "seeds": seeds, "rows": rows,
        "metric": "test AUROC, sample-weighted mean over sites", "table": table, "config_resolved": base.to_flat()},
        [x for r in rows for x in runs[r]],
        f"B2 ablation, {args.style} ({mode}, preset {args.preset}, config {args.config}, {len(data_seeds)} data "
        f"seed(s) × {len(seeds)} model seed(s)); Δ = paired mean difference, [95 % two-level bootstrap CI], "
        f"p = paired t-test over runs", md, targets)


if __name__ == "__main__":
    main()
