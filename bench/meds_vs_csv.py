"""B11b — MEDS against per-stay CSVs (issue 26): the same synthetic cohort (same patients, same splits, the same
observations) with its EHR given as MEDS events (``omnifuse synth --ehr-format meds``, ``ehr-meds``) or as the
MIMIC-benchmark per-stay CSVs (``ehr``), trained centralized, local-only and federated with one config.

Usage:
  .venv/bin/python bench/meds_vs_csv.py --preset demo --data-seeds 2 --seeds 2 [--modes centralized,local,federated]
      [--jobs 2 --threads 1] [--set ehr-event-encoder=bag_of_codes] [--out bench/results/issue26/meds_vs_csv_code_stats.json]
  .venv/bin/python bench/meds_vs_csv.py --quick          # smoke preset, 1 seed

Each (data seed, model seed, mode) is trained once per format with the same seeds (``bench.runner``, in memory;
federated = the in-process round loop with modality-aware aggregation). Δ = MEDS − CSV, paired by data seed, model
seed and test patient (95 % two-level bootstrap CI). The two differ only in the EHR path: the CSV series go
through ``ehr-encoder``, the MEDS events through ``ehr-event-encoder`` with the federated code vocabulary.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, choose, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fp, markdown_table, summary, target  # noqa: E402

log = logging.getLogger("bench.meds_vs_csv")

MODES = ["centralized", "local", "federated"]
FORMATS = ["csv", "meds"]
TOLERANCE = 0.01  # issue 26: MEDS within 0.01 AUROC of the same cohort as CSVs


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=2))
    ap.add_argument("--modes", default="", help=f"comma-separated subset of {MODES}")
    args = resolve_args(ap.parse_args(), "meds_vs_csv", preset_in_name=True)
    modes = choose(ap, args.modes, MODES, MODES, "mode")
    base = load_config(args)
    data_seeds, seeds = seeds_of(args)
    specs = [RunSpec(f"{f}/{m}", ds, s, m, ehr_format=f) for ds in data_seeds for s in seeds for m in modes
             for f in FORMATS]
    runs = by_key(execute(specs, args))
    kw = {"reps": args.bootstrap, "seed": args.bootstrap_seed}
    names = [f"{f}/{m}" for m in modes for f in FORMATS]
    table = {n: summary(runs[n]) for n in names}
    comparisons, targets = {}, {}
    for m in modes:
        c = compare(runs[f"meds/{m}"], runs[f"csv/{m}"], **kw)
        comparisons[f"{m}: MEDS − CSV"] = c
        targets[f"meds_vs_csv[{m}]"] = target(f"{m}: |MEDS − CSV| AUROC", abs(c["mean_diff"]), TOLERANCE, "<=")
    md = markdown_table(["mode", "CSV AUROC", "MEDS AUROC", "Δ MEDS − CSV [95 % CI]", "paired t p"],
                        [[m, fmt(table[f"csv/{m}"]), fmt(table[f"meds/{m}"]), fdiff(comparisons[f"{m}: MEDS − CSV"]),
                          fp(comparisons[f"{m}: MEDS − CSV"])] for m in modes])
    publish(args, {
        "benchmark": "B11b MEDS vs CSV", "preset": args.preset, "config": args.config, "data_seeds": data_seeds,
        "seeds": seeds, "modes": modes, "summary": table, "comparisons": comparisons,
        "metric": "test AUROC, sample-weighted mean over sites", "config_resolved": base.to_flat()},
        [r for k in runs for r in runs[k]],
        f"B11b MEDS vs CSV (preset {args.preset}, config {args.config}, ehr-encoder {base.ehr_encoder}, "
        f"ehr-event-encoder {base.ehr_event_encoder}, {len(data_seeds)} data seed(s) × {len(seeds)} model seed(s))",
        md, targets)


if __name__ == "__main__":
    main()
