"""B10 — site cache (issue 16): how long a ClientApp message spends loading its site, without and with the on-disk
site cache, each load in a fresh process (as Flower runs every message).

* ``plain``: ``load_site`` (read, validate, discretise EHR, decode and resize images; text embeddings come from the
  site's text-embedding cache, warmed once first) — what every message paid before the site cache;
* ``first``: the first load through the site cache (plain load + writing the cache);
* ``cached``: later loads (the cache mapped in).

Times are measured inside each process around the load only (the torch import is the same in both and is reported
apart). Usage:
  .venv/bin/python -m bench.site_cache --preset reliability --repeats 3 --out bench/results/issue16/site_cache.json
  .venv/bin/python -m bench.site_cache --preset reliability --patients 10000 --out bench/results/issue16/site_cache_10k.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.data.site_cache import load_site_disk_cached
t1 = time.perf_counter()
site, mode, root, config = sys.argv[1:5]
cfg = Config.load(config)
t2 = time.perf_counter()
s = load_site(site, cfg) if mode == "plain" else load_site_disk_cached(site, cfg, None, root)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_s": t3 - t2, "patients": len(s.train) + len(s.val) + len(s.test)}))
"""


def _run(site: Path, mode: str, root: Path, config: str, threads: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    import os
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(site), mode, str(root), config], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=3600)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _resized(preset: str, patients: int, work: Path) -> Path:
    """A one-site federation: the preset's largest site with ``patients`` patients (generated once, seed 0)."""
    import dataclasses

    from sim.generator import generate_federation
    from sim.presets import get_preset

    p = get_preset(preset)
    big = max(p.sites, key=lambda s: s.patients)
    p = dataclasses.replace(p, name=f"{p.name}-{patients}", sites=(dataclasses.replace(big, patients=patients),))
    out = work / f"{p.name}-1-0"
    if not (out / "federation.yaml").is_file():
        generate_federation(p, 1, out, seed=0, overwrite=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="reliability")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench/work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/site_cache.json"))
    ap.add_argument("--patients", type=int, default=0,
                    help="measure one site of this many patients (the preset's largest site, resized) instead")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import federation

    import yaml
    fed = _resized(args.preset, args.patients, args.work) if args.patients else federation(args.preset, None, 0,
                                                                                           args.work)
    sites = yaml.safe_load((fed / "federation.yaml").read_text())["sites"]
    site = max((fed / s for s in sites), key=lambda p: sum(1 for _ in (p / "cohort.csv").open()))
    root = Path(tempfile.mkdtemp(prefix="site-cache-"))
    _run(site, "plain", root, args.config, args.threads)  # warms the text-embedding cache
    plain = [_run(site, "plain", root, args.config, args.threads) for _ in range(args.repeats)]
    firsts, cached = [], []
    for _ in range(args.repeats):
        shutil.rmtree(root, ignore_errors=True)
        firsts.append(_run(site, "first", root, args.config, args.threads))
        cached.append(_run(site, "cached", root, args.config, args.threads))
    cached += [_run(site, "cached", root, args.config, args.threads) for _ in range(args.repeats - 1)]
    med = {k: statistics.median(r["load_s"] for r in v) for k, v in
           {"plain": plain, "first": firsts, "cached": cached}.items()}
    cache_mb = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2 ** 20
    result = {"preset": args.preset, "config": args.config, "site": site.name, "patients": plain[0]["patients"],
              "median_load_s": med, "plain_over_cached": med["plain"] / med["cached"],
              "imports_s": statistics.median(r["imports_s"] for r in plain + cached), "cache_mb": cache_mb,
              "runs": {"plain": plain, "first": firsts, "cached": cached}}
    shutil.rmtree(root, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
