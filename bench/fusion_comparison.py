"""B1 fusion comparison (paper Table 3 shape): every fusion on modality pairs and on all modalities, plus the
dominant modality alone, with paired differences against concat and 95 % bootstrap intervals.

Usage:
  .venv/bin/python bench/fusion_comparison.py --data-seeds 3 --seeds 3 [--federated | --flower] [--jobs 8] \
      [--fusions concat,omnifuse] [--subsets all,ehr+image] [--out bench/results/fusion_comparison.json]
  .venv/bin/python bench/fusion_comparison.py --quick      # smoke preset, 1 seed, 1 epoch, concat + omnifuse

Rows (``--fusions``): the registered fusions, plus two OmniFuse/ModDrop rows that separate the ModDrop-like effect
of OmniFuse's simulated missingness: ``omnifuse_hfp`` = OmniFuse with ``hide-for-prediction: true`` (the prediction
losses also see the hidden view, the old behaviour), and ``moddrop_matched`` = ModDrop at OmniFuse's hiding rate
(a sample with k ≥ 2 present modalities hides a uniform 1..k−1 of them with probability ``hide-prob``, i.e. each
present modality with probability ``hide-prob``/2, so ModDrop gets ``moddrop-prob`` = ``hide-prob``/2). Extra
comparisons: OmniFuse (hide-for-prediction) − OmniFuse and − ModDrop (matched rate), OmniFuse − dominant alone.

Centralized runs train in memory (``bench.training.train_centralized`` = ``sim.modes.run_centralized``);
``--federated`` uses the in-process round loop (``bench.training.train_federated``: modality-aware aggregation,
no Flower; it reproduces a Flower simulation's scores to float rounding, tested); ``--flower`` runs every cell as
a Flower simulation (``sim.federated``, one at a time, ``--reuse`` keeps finished runs). Synthetic federations
``--data-seeds`` × model seeds ``--seeds``, the same for every fusion (paired).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, choose, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fp, markdown_table, summary, target  # noqa: E402

log = logging.getLogger("bench.fusion_comparison")

LABELS = {"concat": "concat", "sum": "sum", "se_gate": "SE-gate", "late": "late fusion", "moddrop": "ModDrop",
          "moddrop_matched": "ModDrop (OmniFuse's hiding rate)", "healnet": "HEALNet-style", "dwfuse": "DWFuse only",
          "omnifuse": "full OmniFuse", "omnifuse_hfp": "OmniFuse (hide-for-prediction)"}
FUSIONS = list(LABELS)
SUBSETS = {"ehr+image": "ehr,image", "ehr+text": "ehr,text", "ehr+genomics": "ehr,genomics",
           "all": "ehr,image,text,genomics"}
DOMINANT = "ehr"
QUICK_FUSIONS, QUICK_SUBSETS = ["concat", "omnifuse"], ["all"]
EXTRA = [("omnifuse_hfp", "omnifuse"), ("omnifuse_hfp", "moddrop_matched"), ("omnifuse", "dominant")]


def overrides(fusion: str, base) -> dict:
    """Config overrides of a row."""
    if fusion == "omnifuse_hfp":
        return {"fusion": "omnifuse", "hide_for_prediction": True}
    if fusion == "moddrop_matched":
        return {"fusion": "moddrop", "moddrop_prob": base.hide_prob / 2.0}
    return {"fusion": fusion}


def _parse():
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=3))
    ap.add_argument("--federated", action="store_true", help="federated (in-process round loop) instead of pooled")
    ap.add_argument("--flower", action="store_true", help="federated through Flower simulations (one at a time)")
    ap.add_argument("--fusions", default="", help=f"comma-separated subset of {FUSIONS}")
    ap.add_argument("--subsets", default="", help=f"comma-separated subset of {list(SUBSETS)}")
    args = ap.parse_args()
    args.federated = args.federated or args.flower
    name = "fusion_comparison" + ("-flower" if args.flower else "-federated" if args.federated else "")
    args = resolve_args(args, name, preset_in_name=True)
    fusions = choose(ap, args.fusions, FUSIONS, QUICK_FUSIONS if args.quick else FUSIONS, "fusion")
    subsets = choose(ap, args.subsets, list(SUBSETS), QUICK_SUBSETS if args.quick else list(SUBSETS), "subset")
    return args, fusions, subsets


def main() -> None:
    args, fusions, subsets = _parse()
    base = load_config(args)
    mode = "flower" if args.flower else "federated" if args.federated else "centralized"
    data_seeds, seeds = seeds_of(args)
    specs = []
    for ds in data_seeds:
        for s in seeds:
            specs.append(RunSpec("dominant", ds, s, mode, {"fusion": "concat", "modalities": DOMINANT}))
            specs += [RunSpec(f"{sub}/{f}", ds, s, mode, {**overrides(f, base), "modalities": SUBSETS[sub]})
                      for sub in subsets for f in fusions]
    runs = by_key(execute(specs, args))
    kw = {"reps": args.bootstrap, "seed": args.bootstrap_seed}
    table, targets = {}, {}
    for sub in subsets:
        table[sub] = {}
        for f in fusions:
            cell = {"label": LABELS[f], "overrides": overrides(f, base), "auroc": summary(runs[f"{sub}/{f}"])}
            if f != "concat" and "concat" in fusions:
                cell["vs_concat"] = compare(runs[f"{sub}/{f}"], runs[f"{sub}/concat"], **kw)
            table[sub][f] = cell
        extra = {}
        for a, b in EXTRA:
            if a in fusions and (b in fusions or b == "dominant"):
                arm_b = runs["dominant"] if b == "dominant" else runs[f"{sub}/{b}"]
                extra[f"{a} − {b}"] = compare(runs[f"{sub}/{a}"], arm_b, **kw)
        table[sub]["_extra"] = extra
        if "omnifuse" in fusions and "concat" in fusions:
            targets[f"omnifuse_vs_concat[{sub}]"] = target(f"{sub}: full OmniFuse − concat AUROC",
                                                           table[sub]["omnifuse"]["vs_concat"]["mean_diff"], 0.03)
    dom = summary(runs["dominant"])
    header = ["fusion"] + [f"{s} AUROC" for s in subsets] + [f"Δ vs concat ({s}) [95 % CI], p" for s in subsets]
    rows = [[f"{DOMINANT} only", *([fmt(dom)] * len(subsets)), *(["—"] * len(subsets))]]
    for f in fusions:
        deltas = [f"{fdiff(table[s][f].get('vs_concat'))}, p={fp(table[s][f].get('vs_concat'))}"
                  if "vs_concat" in table[s][f] else "—" for s in subsets]
        rows.append([LABELS[f], *(fmt(table[s][f]["auroc"]) for s in subsets), *deltas])
    md = markdown_table(header, rows)
    extra_rows = [[name, sub, fdiff(c), fp(c)] for sub in subsets for name, c in table[sub]["_extra"].items()]
    if extra_rows:
        md += "\n\n" + markdown_table(["comparison", "modalities", "Δ [95 % CI]", "paired t p"], extra_rows)
    publish(args, {
        "benchmark": "B1 fusion comparison", "mode": mode, "preset": args.preset, "config": args.config,
        "data_seeds": data_seeds, "seeds": seeds, "fusions": fusions, "subsets": subsets,
        "metric": "test AUROC, sample-weighted mean over sites", "dominant": {"modality": DOMINANT, "auroc": dom},
        "table": table, "config_resolved": base.to_flat()},
        [r for k in runs for r in runs[k]],
        f"B1 fusion comparison ({mode}, preset {args.preset}, config {args.config}, {len(data_seeds)} data seed(s) × "
        f"{len(seeds)} model seed(s)); Δ = paired mean difference [95 % two-level bootstrap CI], p = paired t-test",
        md, targets)


if __name__ == "__main__":
    main()
