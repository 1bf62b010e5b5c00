"""B7 scale through real Flower: federations of N sites run by Flower's simulation runtime and/or by a loopback
deployment (``flower-superlink`` + one ``flower-supernode`` process per site), small model; wall time per
site-round and the peak memory of all the run's processes.

Usage:
  .venv/bin/python bench/scale_flower.py [--site-counts 2,10] [--runtimes simulation,deployment] [--rounds 2] \
      [--config smoke] [--preset smoke] [--out bench/results/scale_flower.json]
  .venv/bin/python bench/scale_flower.py --quick      # 2 sites, simulation only, 1 round

How: the ``--preset`` federation with N sites is generated once per N (``<work>/<preset>-<N>-<data-seed>``). The
simulation runtime is ``sim.federated.run_federated`` (Ray actors, 2 ClientApps at a time on this machine); the
deployment is ``sim.deploy`` (one SuperNode process per site, ``min-sites`` = N, Flower 1.41 starting one
ClientApp process per message). "Seconds per site-round" is each round's wall time from ``metrics.json`` (train +
validation of every site, aggregation, checkpoint) divided by N, averaged over the rounds after the first (the first
includes the sites loading their data). Peak memory is the largest sum of VmRSS over this process's descendants,
sampled every 0.5 s (shared library pages count once per process, so it overstates physical memory). ``bench/scale.py``
is the in-process version that reaches 50 sites.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, choose, environment, federation, load_config, resolve_args,  # noqa: E402
                          write_result)
from bench.stats import fnum, markdown_table  # noqa: E402

log = logging.getLogger("bench.scale_flower")
RUNTIMES = ("simulation", "deployment")


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeMemory:
    """Samples the summed RSS of this process's descendants in a thread; ``peak_mb`` after ``stop()``."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_kb = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from sim.processes import descendants

        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in descendants(os.getpid())))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def run_simulation(cfg, data: Path, out: Path) -> Path:
    from sim.federated import run_federated

    return run_federated(cfg, data, out)


def run_deployment(cfg, data: Path, out: Path) -> Path:
    """SuperLink + one SuperNode per site of ``data`` + ``flwr run`` with ``cfg`` saved as the run's config."""
    from sim.deploy import run_deployment as deploy
    from sim.modes import site_folders

    sites = site_folders(data)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(run_dir=str(out), min_sites=len(sites))
    cfg.save(out / "config.yaml")
    deploy(sites, {"config": str(out / "config.yaml"), "run-dir": str(out)}, out / "flower-work",
           timeout=3600)
    return out


def measure(runtime: str, cfg, data: Path, out: Path, n: int) -> dict:
    from sim.modes import read_metrics

    shutil.rmtree(out, ignore_errors=True)
    runner = run_simulation if runtime == "simulation" else run_deployment
    start = time.perf_counter()
    with TreeMemory() as mem:
        run_dir = runner(cfg, data, out)
    wall = time.perf_counter() - start
    metrics = read_metrics(run_dir)
    rounds = [float(r.get("seconds") or 0.0) for r in metrics.get("rounds", [])]
    later = rounds[1:] or rounds
    per_site_round = (sum(later) / len(later)) / n if later else float("nan")
    res = {"runtime": runtime, "sites": n, "wall_s": wall, "round_seconds": rounds,
           "s_per_site_round": per_site_round, "peak_tree_rss_mb": mem.peak_mb,
           "auroc": metrics.get("final", {}).get("global", {}).get("auroc")}
    log.info("%s, %d sites: %.1f s wall, %.3f s per site-round, peak %.0f MB", runtime, n, wall, per_site_round,
             mem.peak_mb)
    return res


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0], seeds=1)
    ap.add_argument("--site-counts", default="2,10", help="comma-separated numbers of sites")
    ap.add_argument("--runtimes", default="", help=f"comma-separated subset of {list(RUNTIMES)}")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.preset is None:
        args.preset = "smoke"
    if args.config is None:
        args.config = "smoke"
    args = resolve_args(args, "scale_flower")
    runtimes = choose(ap, args.runtimes, RUNTIMES, ["simulation"] if args.quick else RUNTIMES, "runtime")
    counts = [int(c) for c in args.site_counts.split(",") if c] if not args.quick else [2]
    cfg = load_config(args)
    rows, results = [], []
    for n in counts:
        data = federation(args.preset, n, args.data_seed, args.work)
        for runtime in runtimes:
            res = measure(runtime, cfg, data, args.work / "runs" / "scale_flower" / f"{runtime}-{n}", n)
            results.append(res)
            rows.append([runtime, str(n), f"{res['wall_s']:.1f}", " / ".join(f"{s:.1f}" for s in res["round_seconds"]),
                         fnum(res["s_per_site_round"], 3), f"{res['peak_tree_rss_mb']:,.0f}"])
    ratios = {}
    for runtime in runtimes:
        by_n = {r["sites"]: r["s_per_site_round"] for r in results if r["runtime"] == runtime}
        if len(by_n) > 1:
            lo, hi = min(by_n), max(by_n)
            ratios[f"{runtime}: per site-round {hi} sites / {lo} sites"] = by_n[hi] / by_n[lo]
    md = markdown_table(["runtime", "sites", "wall (s)", "round seconds", "s per site-round (rounds ≥ 2)",
                         "peak RSS, all processes (MB)"], rows)
    write_result(args.out, {
        "benchmark": "B7 scale through Flower", "preset": args.preset, "config": args.config,
        "rounds": cfg.rounds, "site_counts": counts, "runtimes": runtimes, "quick": args.quick,
        "results": results, "ratios": ratios, "config_resolved": cfg.to_flat(), "environment": environment(),
        "markdown": md})
    print(f"B7 scale through Flower (preset {args.preset}, config {args.config}, {cfg.rounds} round(s))")
    print(md)
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")


if __name__ == "__main__":
    main()
