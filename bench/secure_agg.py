"""Secure aggregation cost (issue 24): seconds per round and bytes per site per round, SecAgg+ vs plaintext.

Usage:
  .venv/bin/python bench/secure_agg.py [--sites 4] [--rounds 3] [--preset smoke] [--config smoke]
      [--modes deploy,sim] [--out bench/results/issue24/secure_agg.json]

How: ``deploy``: one ``flower-superlink`` and one ``flower-supernode`` per site on 127.0.0.1 (``sim.deploy``); on
those processes ``flwr run`` plaintext, then ``flwr run`` with ``secure-aggregation: true`` (same seeds). ``sim``:
``sim.federated.run_federated`` (Flower's simulation runtime) for each. Seconds per round = mean of
``metrics.json`` ``rounds[].seconds`` over rounds >= 2 (round 1 builds the site caches). Network bytes = the
SuperLink's count for the whole run (``flwr ls``: setup, train rounds, validation, test), so the per-round
difference is ``(secure - plain) / rounds / sites``; a site's masked upload is the vector's int64 entries (8 bytes
each, the float32 weights are 4) plus SecAgg+'s keys and shares.
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import base_parser, environment, federation, load_config, resolve_args, write_result  # noqa: E402

log = logging.getLogger("bench.secure_agg")


def _per_round(metrics: dict) -> float:
    s = [float(r.get("seconds") or 0.0) for r in metrics["rounds"]]
    return statistics.fmean(s[1:] or s)


def _summary(run_dir: Path, wall: float, ls: dict | None, rounds: int, sites: int) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    total = ((ls or {}).get("network-traffic") or {}).get("total-bytes")
    return {"round_seconds": [r.get("seconds") for r in m["rounds"]], "s_per_round": _per_round(m),
            "wall_s": round(wall, 1), "auroc": m["final"]["global"].get("auroc"), "network_bytes": total,
            "bytes_per_site_per_round": total / rounds / sites if total else None}


def deploy(cfg, site_dirs: list[Path], work: Path, timeout: float) -> dict:
    from bench.deploy_floor import _run
    from sim.deploy import APP_DIR, final_written, flower_processes, start_superlink, start_supernode, \
        wait_supernodes_online, write_connection

    out = {}
    with flower_processes(work / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        for site in site_dirs:
            start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(work / "state" /
                                                                                               site.name)})
        write_connection(procs.env, port)
        wait_supernodes_online(procs, len(site_dirs))
        for mode in ("plain", "secure"):
            run_dir = work / f"deploy-{mode}"
            c = cfg.replace(run_dir=str(run_dir), min_sites=len(site_dirs), secure_aggregation=mode == "secure")
            run_dir.mkdir(parents=True, exist_ok=True)
            c.save(run_dir / "config.yaml")
            t0 = time.perf_counter()
            ls = _run(procs, {"config": str(run_dir / "config.yaml"), "run-dir": str(run_dir)}, timeout=timeout,
                      app_dir=APP_DIR, ending=final_written(run_dir))
            out[mode] = _summary(run_dir, time.perf_counter() - t0, ls, cfg.rounds, len(site_dirs))
    return out


def simulation(cfg, data: Path, work: Path) -> dict:
    from sim.federated import run_federated

    out = {}
    for mode in ("plain", "secure"):
        t0 = time.perf_counter()
        run_dir = run_federated(cfg.replace(secure_aggregation=mode == "secure"), data, work / f"sim-{mode}")
        out[mode] = _summary(run_dir, time.perf_counter() - t0, None, cfg.rounds, 0)
    return out


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0], seeds=1)
    ap.add_argument("--modes", default="deploy,sim", help="deploy, sim or both (comma-separated)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per flwr run")
    args = ap.parse_args()
    args.preset, args.config = args.preset or "smoke", args.config or "smoke"
    sites = args.sites or 4
    args.rounds = args.rounds or 3
    args = resolve_args(args, "secure_agg")
    cfg = load_config(args)
    data = federation(args.preset, sites, args.data_seed, args.work)
    site_dirs = sorted(p for p in data.iterdir() if p.is_dir())
    work = args.work / "runs" / "secure_agg"
    shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "secure_agg", "preset": args.preset, "config": args.config, "sites": len(site_dirs),
              "rounds": cfg.rounds, "environment": environment()}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "deploy" in modes:
        result["deploy"] = deploy(cfg, site_dirs, work, args.timeout)
    if "sim" in modes:
        result["sim"] = simulation(cfg, data, work)
    for mode in modes:
        r = result["deploy" if mode == "deploy" else "sim"]
        r["ratio"] = r["secure"]["s_per_round"] / r["plain"]["s_per_round"]
        log.info("%s: plaintext %.2f s/round, secure %.2f s/round (%.2fx); AUROC %s vs %s", mode,
                 r["plain"]["s_per_round"], r["secure"]["s_per_round"], r["ratio"], r["plain"]["auroc"],
                 r["secure"]["auroc"])
    write_result(args.out, result)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
