"""How much of each modality subset's signal a trained model picks up: learned test AUROC beside the generator's
oracle for the same subset (``oracle.json``), centralized concat on one synthetic federation.

Usage:
  .venv/bin/python bench/learnability.py --preset reliability --subsets ehr image text genomics image,genomics \
      [--rounds 3] [--local-epochs 1] [--data-seed 0] [--seed 0] [--work bench/work] [--all-patients]

Each subset trains the ``demo`` config with ``fusion: concat`` and ``modalities`` = the subset on the sites
restricted to those modalities (``bench.training.restrict_sites``) *and to the patients who have all of them* (the
oracle's subset score assumes the subset is observed), and reports the pooled test AUROC; the oracle column is
``oracle.json``'s global test-split value for the subset. A large gap says the encoders, not the fusion, are what
limits a benchmark built on that preset (BENCHMARKS.md, B8).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench.learnability")


def oracle_value(data: Path, subset: list[str]) -> float | None:
    """The oracle's global AUROC for ``subset`` (None when ``oracle.json`` has no entry for it)."""
    path = data / "oracle.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get("global", {}).get("test", {}).get("+".join(subset), {})
    value = entry.get("binary", {}).get("auroc") if isinstance(entry, dict) else None
    return None if value is None else float(value)


def having_all(sites: list) -> list:
    """Copies of ``sites`` whose splits keep only the patients with every (restricted) modality present."""
    import dataclasses

    out = []
    for s in sites:
        parts = {k: v.subset([i for i, row in enumerate(v.present.all(dim=1).tolist()) if row])
                 for k, v in s.splits.items()}
        out.append(dataclasses.replace(s, **parts))
    return out


def main() -> None:
    import torch

    from bench.common import federation, load_all
    from bench.training import restrict_sites, train_centralized
    from omnifuse_core.config import Config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="reliability")
    ap.add_argument("--subsets", nargs="+", default=["ehr", "image", "text", "genomics", "image,genomics"])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench/work"))
    ap.add_argument("--all-patients", action="store_true",
                    help="train and test on every patient (those without the subset get the missing input)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--seeds", type=int, default=1, help="model seeds SEED..SEED+N-1 (the table shows their mean)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set image-encoder=pooled (repeatable)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = Config.load(args.config).with_overrides(args.overrides).replace(
        rounds=args.rounds, local_epochs=args.local_epochs, fusion="concat", seed=args.seed)
    data = federation(args.preset, None, args.data_seed, args.work)
    sites = load_all(data, cfg)
    rows = []
    for subset in args.subsets:
        names = subset.split(",")
        restricted = restrict_sites(sites, names)
        chosen = restricted if args.all_patients else having_all(restricted)
        per_seed = [train_centralized(chosen, cfg.replace(modalities=subset, seed=args.seed + k))["auroc"]
                    for k in range(args.seeds)]
        rows.append({"subset": "+".join(names), "learned_auroc": float(sum(per_seed) / len(per_seed)),
                     "per_seed": per_seed, "oracle_auroc": oracle_value(data, names)})
        log.warning("%s: learned %s", subset, ", ".join(f"{v:.3f}" for v in per_seed))
    print("| subset | learned test AUROC (concat) | oracle AUROC |\n|---|---|---|")
    for r in rows:
        oracle = "—" if r["oracle_auroc"] is None else f"{r['oracle_auroc']:.3f}"
        print(f"| {r['subset']} | {r['learned_auroc']:.3f} | {oracle} |")
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, "data_seed": args.data_seed, "seed": args.seed,
                                        "seeds": args.seeds, "overrides": args.overrides, "rounds": args.rounds,
                                        "local_epochs": args.local_epochs, "rows": rows},
                                       indent=2))


if __name__ == "__main__":
    main()
