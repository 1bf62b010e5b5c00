"""B3 missing-rate sweep (paper Fig. 6 shape): AUROC as 0–90 % of the non-dominant modalities' entries are hidden,
with and without imputation.

Usage:
  .venv/bin/python bench/missing_sweep.py --preset laziness --config demo --seeds 5 \
      [--rates 0,0.1,0.3,0.5,0.7,0.9] [--variants imputation,no_imputation,concat] [--out bench/results/missing_sweep.json]
  .venv/bin/python bench/missing_sweep.py --quick      # smoke preset, 1 seed, 1 epoch, rates 0 and 0.9

How the cohorts are made (no files are regenerated): the federation is loaded once; for each seed every entry
(site, split, patient, modality) of a non-dominant modality gets one uniform draw u, and at rate r the entries with
u < r are hidden: ``present`` is set False and the input zeroed, in the train, validation and test splits of every
site. The masks are nested (what is hidden at 50 % is hidden at 90 %). The rate is the share of *present* entries
hidden; the JSON also records the resulting overall missing fraction per modality (the cohort's own missingness
included). Variants: ``imputation`` = full OmniFuse; ``no_imputation`` = OmniFuse with use-forward and use-backward
off (missing slots keep e_m(0)); ``concat`` = concat fusion. Centralized, in memory (``bench.common``).
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, environment, federation, load_all, load_config, resolve_args,  # noqa: E402
                          train_centralized, write_result)
from bench.stats import fmt, fnum, markdown_table, mean_std, paired_test, target, targets_lines  # noqa: E402

log = logging.getLogger("bench.missing_sweep")

VARIANTS = {"imputation": {"fusion": "omnifuse"},
            "no_imputation": {"fusion": "omnifuse", "use_forward": False, "use_backward": False},
            "concat": {"fusion": "concat"}}
RATES = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]
QUICK_RATES, QUICK_VARIANTS = [0.0, 0.9], ["imputation", "no_imputation"]


def draws(sites: list, seed: int) -> list[dict]:
    """One uniform draw per (site, split, patient, modality), fixed by ``seed`` and the site's position."""
    out = []
    for i, s in enumerate(sites):
        out.append({k: np.random.default_rng([seed, i, j]).random(tuple(ds.present.shape))
                    for j, (k, ds) in enumerate(s.splits.items())})
    return out


def mask_sites(sites: list, u: list[dict], rate: float, hide: list[str]) -> list:
    """Copies of ``sites`` with the present entries of modalities ``hide`` whose draw is below ``rate`` hidden."""
    from omnifuse_core.batch import MultimodalDataset

    out = []
    for s, us in zip(sites, u):
        parts = {}
        for k, ds in s.splits.items():
            cols = torch.tensor([n in hide for n in ds.modality_names])
            drop = torch.from_numpy(us[k] < rate) & cols[None, :]
            inputs = {n: v.clone() for n, v in ds.inputs.items()}  # the dataset zeroes hidden rows in place
            parts[k] = MultimodalDataset(ds.specs, inputs, ds.present & ~drop, ds.labels, list(ds.patient_ids))
        out.append(dataclasses.replace(s, **parts))
    return out


def missing_fraction(sites: list) -> dict[str, float]:
    """Overall fraction of patients missing each modality, over every site and split."""
    present = torch.cat([ds.present for s in sites for ds in s.splits.values()])
    names = sites[0].train.modality_names
    return {n: float(1.0 - present[:, i].float().mean()) for i, n in enumerate(names)}


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0])
    ap.add_argument("--rates", default="", help="comma-separated hidden fractions in [0, 1)")
    ap.add_argument("--variants", default="", help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--dominant", default="ehr", help="the modality never hidden")
    args = resolve_args(ap.parse_args(), "missing_sweep")
    rates = [float(r) for r in args.rates.split(",") if r] or (QUICK_RATES if args.quick else RATES)
    variants = [v for v in args.variants.split(",") if v] or (QUICK_VARIANTS if args.quick else list(VARIANTS))
    for bad in [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variant {bad!r}; choose from {list(VARIANTS)}")
    if any(not 0.0 <= r < 1.0 for r in rates):
        ap.error(f"--rates must lie in [0, 1), got {rates}")
    base = load_config(args)
    hide = [m for m in base.modality_list if m != args.dominant]
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    sites = load_all(data, base)
    seeds = list(range(args.seeds))
    runs = {v: {r: [] for r in rates} for v in variants}
    achieved = {}
    for seed in seeds:
        u = draws(sites, seed)
        for rate in rates:
            masked = mask_sites(sites, u, rate, hide)
            achieved.setdefault(rate, missing_fraction(masked))
            for v in variants:
                res = train_centralized(masked, base.replace(seed=seed, **VARIANTS[v]))
                runs[v][rate].append(res["auroc"])
                log.info("seed %d rate %.2f %s: AUROC %s (%.1f s)", seed, rate, v, fnum(res["auroc"]), res["seconds"])
    table = {v: {f"{r:g}": mean_std(runs[v][r]) for r in rates} for v in variants}
    lo, hi = rates[0], rates[-1]
    drops, targets = {}, {}
    for v in variants:
        drops[v] = paired_test(runs[v][lo], runs[v][hi])  # mean_diff = AUROC(lowest rate) − AUROC(highest)
        if v == "imputation":
            targets["imputation_drop"] = target(f"AUROC lost from {lo:.0%} to {hi:.0%} hidden (imputation)",
                                                drops[v]["mean_diff"], 0.02, "<=")
    md = markdown_table(["hidden", *variants, *(f"missing {m}" for m in hide)], [
        [f"{r:.0%}", *(fmt(table[v][f"{r:g}"]) for v in variants), *(f"{achieved[r][m]:.0%}" for m in hide)]
        for r in rates])
    md += "\n\n" + markdown_table(["variant", f"AUROC({lo:.0%}) − AUROC({hi:.0%})", "paired t p"],
                                [[v, fnum(d["mean_diff"]), fnum(d["t_p"])] for v, d in drops.items()])
    write_result(args.out, {
        "benchmark": "B3 missing-rate sweep", "mode": "centralized", "preset": args.preset, "config": args.config,
        "data_seed": args.data_seed, "seeds": seeds, "quick": args.quick, "rates": rates, "variants": variants,
        "variant_overrides": {v: VARIANTS[v] for v in variants}, "hidden_modalities": hide,
        "metric": "test AUROC, sample-weighted mean over sites", "table": table,
        "missing_fraction": {f"{r:g}": achieved[r] for r in rates}, "drop": drops, "targets": targets,
        "config_resolved": base.to_flat(), "environment": environment(), "markdown": md})
    print(f"B3 missing-rate sweep (centralized, preset {args.preset}, config {args.config}, {len(seeds)} seed(s)); "
          f"hidden: share of present {'/'.join(hide)} entries masked")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


if __name__ == "__main__":
    main()
