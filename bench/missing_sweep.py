"""B3 missing-rate sweep (paper Fig. 6 shape): AUROC as 0–90 % of the non-dominant modalities' entries are hidden,
with and without imputation, with paired differences and 95 % bootstrap intervals.

Usage:
  .venv/bin/python bench/missing_sweep.py --data-seeds 3 --seeds 3 [--jobs 8] \
      [--rates 0,0.1,0.3,0.5,0.7,0.9] [--variants imputation,no_imputation,concat] \
      [--out bench/results/missing_sweep.json]
  .venv/bin/python bench/missing_sweep.py --quick      # smoke preset, 1 seed, 1 epoch, rates 0 and 0.9

How the cohorts are made (no files are regenerated): each federation is loaded once; for each model seed every
entry (site, split, patient, modality) of a non-dominant modality gets one uniform draw u, and at rate r the entries
with u < r are hidden: ``present`` is set False and the input zeroed, in the train, validation and test splits of
every site. The masks are nested (what is hidden at 50 % is hidden at 90 %). The rate is the share of *present*
entries hidden; the JSON also records the resulting overall missing fraction per modality (the cohort's own
missingness included). Variants: ``imputation`` = full OmniFuse; ``no_imputation`` = OmniFuse with use-forward and
use-backward off (missing slots keep e_m(0)); ``concat`` = concat fusion. Centralized, in memory
(``bench.training``), in parallel with ``--jobs``. Comparisons (paired over data seeds, model seeds and the same
test patients): each variant's AUROC(lowest rate) − AUROC(highest rate), and at every rate imputation −
no_imputation and imputation − concat.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_run_args, base_parser, choose, load_config, resolve_args, seeds_of  # noqa: E402
from bench.runner import RunSpec, by_key, execute, load_federation, publish  # noqa: E402
from bench.stats import compare, fdiff, fmt, fp, markdown_table, summary, target  # noqa: E402

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


def masked(sites: list, seed: int, rate: float, hide: list[str]) -> list:
    """The sites with ``rate`` of the present entries of ``hide`` hidden, masks drawn with ``seed`` (a run transform
    for ``bench.runner``)."""
    return mask_sites(sites, draws(sites, seed), rate, hide)


def _key(variant: str, rate: float) -> str:
    return f"{variant}@{rate:g}"


def main() -> None:
    ap = add_run_args(base_parser(__doc__.splitlines()[0], seeds=3))
    ap.add_argument("--rates", default="", help="comma-separated hidden fractions in [0, 1)")
    ap.add_argument("--variants", default="", help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--dominant", default="ehr", help="the modality never hidden")
    args = resolve_args(ap.parse_args(), "missing_sweep", preset_in_name=True)
    rates = [float(r) for r in args.rates.split(",") if r] or (QUICK_RATES if args.quick else RATES)
    variants = choose(ap, args.variants, list(VARIANTS), QUICK_VARIANTS if args.quick else list(VARIANTS), "variant")
    if any(not 0.0 <= r < 1.0 for r in rates):
        ap.error(f"--rates must lie in [0, 1), got {rates}")
    base = load_config(args)
    hide = [m for m in base.modality_list if m != args.dominant]
    data_seeds, seeds = seeds_of(args)
    specs = [RunSpec(_key(v, rate), ds, s, "centralized", VARIANTS[v],
                     ("bench.missing_sweep:masked", {"seed": s, "rate": rate, "hide": hide}))
             for ds in data_seeds for s in seeds for rate in rates for v in variants]
    runs = by_key(execute(specs, args))
    achieved = {f"{r:g}": _mean_fractions([missing_fraction(masked(load_federation(args, ds), s, r, hide))
                                           for ds in data_seeds for s in seeds]) for r in rates}
    kw = {"reps": args.bootstrap, "seed": args.bootstrap_seed}
    table = {v: {f"{r:g}": summary(runs[_key(v, r)]) for r in rates} for v in variants}
    lo, hi = rates[0], rates[-1]
    drops = {v: compare(runs[_key(v, lo)], runs[_key(v, hi)], **kw) for v in variants}  # AUROC(lo) − AUROC(hi)
    gains = {f"imputation − {other}": {f"{r:g}": compare(runs[_key("imputation", r)], runs[_key(other, r)], **kw)
                                      for r in rates}
             for other in ("no_imputation", "concat") if "imputation" in variants and other in variants}
    targets = {}
    if "imputation" in drops:
        targets["imputation_drop"] = target(f"AUROC lost from {lo:.0%} to {hi:.0%} hidden (imputation)",
                                            drops["imputation"]["mean_diff"], 0.02, "<=")
    md = markdown_table(["hidden", *variants, *(f"missing {m}" for m in hide)], [
        [f"{r:.0%}", *(fmt(table[v][f"{r:g}"]) for v in variants), *(f"{achieved[f'{r:g}'][m]:.0%}" for m in hide)]
        for r in rates])
    md += "\n\n" + markdown_table(["variant", f"AUROC({lo:.0%}) − AUROC({hi:.0%}) [95 % CI]", "paired t p"],
                                  [[v, fdiff(d), fp(d)] for v, d in drops.items()])
    if gains:
        md += "\n\n" + markdown_table(["hidden", *(f"{g} [95 % CI], p" for g in gains)], [
            [f"{r:.0%}", *(f"{fdiff(g[f'{r:g}'])}, p={fp(g[f'{r:g}'])}" for g in gains.values())] for r in rates])
    publish(args, {
        "benchmark": "B3 missing-rate sweep", "mode": "centralized", "preset": args.preset, "config": args.config,
        "data_seeds": data_seeds, "seeds": seeds, "rates": rates, "variants": variants,
        "variant_overrides": {v: VARIANTS[v] for v in variants}, "hidden_modalities": hide,
        "metric": "test AUROC, sample-weighted mean over sites", "table": table, "missing_fraction": achieved,
        "drop": drops, "imputation_gain": gains, "config_resolved": base.to_flat()},
        [r for k in runs for r in runs[k]],
        f"B3 missing-rate sweep (centralized, preset {args.preset}, config {args.config}, {len(data_seeds)} data "
        f"seed(s) × {len(seeds)} model seed(s)); hidden: share of present {'/'.join(hide)} entries masked; "
        "Δ = paired mean difference [95 % two-level bootstrap CI]", md, targets)


def _mean_fractions(fracs: list[dict]) -> dict:
    return {m: float(np.mean([f[m] for f in fracs])) for m in fracs[0]}


if __name__ == "__main__":
    main()
