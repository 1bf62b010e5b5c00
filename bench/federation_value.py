"""B4 (+ part of B1): federated vs centralized vs each site's local-only, OmniFuse vs concat, next to the oracle.

Usage:
  .venv/bin/python bench/federation_value.py --preset laziness --sites 4 --seed 0 --config demo \
      --out bench/results/federation_value.json
Runs: centralized {omnifuse, concat, ehr-only}, local {omnifuse}, federated {omnifuse, concat}; one seed per call.
"""
import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from omnifuse_core.config import Config
from sim.federated import run_federated
from sim.generator import generate_federation
from sim.modes import run_centralized, run_local

log = logging.getLogger("bench.federation_value")

RUNS = {  # name -> (mode, config overrides)
    "centralized/ehr_only": ("centralized", {"fusion": "concat", "modalities": "ehr"}),
    "centralized/concat": ("centralized", {"fusion": "concat"}),
    "centralized/omnifuse": ("centralized", {"fusion": "omnifuse"}),
    "local/omnifuse": ("local", {"fusion": "omnifuse"}),
    "federated/omnifuse": ("federated", {"fusion": "omnifuse"}),
    "federated/concat": ("federated", {"fusion": "concat"}),
}
RUNNERS = {"centralized": run_centralized, "local": run_local, "federated": run_federated}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="laziness")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--only", default="", help="comma-separated run names (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/omnifuse-bench"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/federation_value.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = args.work / f"{args.preset}-{args.sites}-{args.seed}"
    if not (data / "federation.yaml").is_file():
        shutil.rmtree(data, ignore_errors=True)
        generate_federation(args.preset, args.sites, data, seed=args.seed)
    oracle = json.loads((data / "oracle.json").read_text())
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    names = [n for n in RUNS if not args.only or n in args.only.split(",")]
    for name in names:
        mode, overrides = RUNS[name]
        cfg = Config.load(args.config).replace(seed=args.seed, **overrides)
        start = time.perf_counter()
        run_dir = RUNNERS[mode](cfg, data, args.work / "runs" / f"{args.seed}" / name.replace("/", "-"))
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        results[name] = {"global": metrics["final"]["global"].get("auroc"),
                         "sites": {s: v.get("auroc") for s, v in metrics["final"]["sites"].items()},
                         "seconds": time.perf_counter() - start}
        log.info("%s: %s", name, results[name])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"preset": args.preset, "sites": args.sites, "seed": args.seed,
                                        "config": args.config, "runs": results, "oracle": oracle}, indent=1))


if __name__ == "__main__":
    main()
