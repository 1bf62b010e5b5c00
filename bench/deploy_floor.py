"""B7 floor (issue 16): OmniFuse's seconds per round in a real deployment against a no-op ClientApp's, on the same
SuperLink and SuperNodes.

Usage:
  .venv/bin/python bench/deploy_floor.py [--sites 4] [--rounds 4] [--repeats 1] [--config smoke] [--preset smoke]
      [--out bench/results/issue16/deploy_floor.json]
  .venv/bin/python bench/deploy_floor.py --quick      # 2 sites, 2 rounds

How: one ``flower-superlink`` and one ``flower-supernode`` per site of the ``--preset`` federation on 127.0.0.1
(``sim.deploy``, the settings of the project's own tests and of ``omnifuse supernode``). On those processes, per
repeat: ``flwr run`` of OmniFuse (``--config``, ``rounds`` rounds, ``min-sites`` = sites), then ``flwr run`` of
``bench/noop_app`` — a ServerApp that sends every node one train message per round carrying as many float32 values as
OmniFuse's trainable weights, and a ClientApp that only imports torch and echoes them (pushed and pulled every 0.1 s,
by ``server/exchange.py``). A round of either is one exchange (OmniFuse: fused evaluation, the default), so the
no-op round is what Flower's process-per-message design costs before any work: SuperNode and SuperExec polls, a
fresh ``flwr-clientapp`` process, the flwr and torch imports, the transfer. Seconds per round = the mean of rounds
≥ 2 (round 1 of OmniFuse builds the site caches); the issue's target is OmniFuse ≤ 2× the no-op round. The
per-message timing OmniFuse records (``rounds[R].timing``) shows where its extra time goes.
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import base_parser, environment, federation, load_config, resolve_args, write_result  # noqa: E402
from bench.stats import markdown_table  # noqa: E402

log = logging.getLogger("bench.deploy_floor")
NOOP_APP = Path(__file__).resolve().parent / "noop_app"


def _later(rounds: list[float]) -> float:
    later = rounds[1:] or rounds
    return statistics.fmean(later) if later else float("nan")


def trainable_floats(run_dir: Path) -> int:
    from safetensors.numpy import load_file

    arrays = load_file(str(sorted((run_dir / "checkpoints").glob("round-*.safetensors"))[0]))
    return int(sum(a.size for a in arrays.values()))


def message_timing(metrics: dict) -> dict[str, float]:
    """Mean seconds per train message (rounds ≥ 2, all sites) for each stage the ClientApp timed."""
    stages: dict[str, list[float]] = {}
    for entry in metrics.get("rounds", [])[1:]:
        for site in (entry.get("timing") or {}).values():
            for stage, value in (site.get("train") or {}).items():
                stages.setdefault(stage, []).append(float(value))
    return {k: round(statistics.fmean(v), 3) for k, v in stages.items()}


def _run(procs, run_config: dict, *, timeout: float, app_dir: Path, ending=None) -> dict:
    """``flwr run`` and wait; returns the run's ``flwr ls`` entry (status, network-traffic bytes, ...)."""
    from sim.deploy import flwr_submit, flwr_wait, run_info

    run_id = flwr_submit(procs, run_config, app_dir=app_dir)
    flwr_wait(procs, run_id, timeout=timeout, ending=ending)
    return run_info(procs, run_id)


def run_pair(procs, cfg, sites: int, work: Path, rep: int, timeout: float) -> dict:
    from sim.deploy import APP_DIR, final_written

    run_dir = work / f"omnifuse-{rep}"
    cfg = cfg.replace(run_dir=str(run_dir), min_sites=sites)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    t0 = time.perf_counter()
    omni_ls = _run(procs, {"config": str(run_dir / "config.yaml"), "run-dir": str(run_dir)}, timeout=timeout,
                   app_dir=APP_DIR, ending=final_written(run_dir))
    omni_wall = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    omni = [float(r.get("seconds") or 0.0) for r in metrics["rounds"]]
    floats = trainable_floats(run_dir)
    noop_dir = work / f"noop-{rep}"
    t0 = time.perf_counter()
    noop_ls = _run(procs, {"rounds": cfg.rounds, "min-nodes": sites, "payload-floats": floats,
                           "out": str(noop_dir)}, timeout=timeout, app_dir=NOOP_APP)
    noop_wall = time.perf_counter() - t0
    noop = json.loads((noop_dir / "rounds.json").read_text())
    if noop["replies_last"] != sites:
        raise RuntimeError(f"no-op run: {noop['replies_last']} of {sites} replies in its last round")
    res = {"repeat": rep, "omnifuse_round_seconds": omni, "noop_round_seconds": noop["round_seconds"],
           "omnifuse_s_per_round": _later(omni), "noop_s_per_round": _later(noop["round_seconds"]),
           "omnifuse_wall_s": omni_wall, "noop_wall_s": noop_wall, "payload_floats": floats,
           "omnifuse_train_message_stages_s": message_timing(metrics),
           "noop_startup_s": _later([s for s in noop.get("startup_seconds", []) if s is not None]),
           "auroc": metrics.get("final", {}).get("global", {}).get("auroc"),
           # whole runs as the SuperLink counts them (OmniFuse: 2 setup queries, R train rounds, 1 validation and 1
           # test exchange; no-op: R rounds)
           "omnifuse_network_bytes": (omni_ls.get("network-traffic") or {}).get("total-bytes"),
           "noop_network_bytes": (noop_ls.get("network-traffic") or {}).get("total-bytes")}
    res["ratio"] = res["omnifuse_s_per_round"] / res["noop_s_per_round"]
    log.info("repeat %d: OmniFuse %.2f s/round, no-op %.2f s/round, ratio %.2f", rep, res["omnifuse_s_per_round"],
             res["noop_s_per_round"], res["ratio"])
    return res


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0], seeds=1)
    ap.add_argument("--repeats", type=int, default=1, help="OmniFuse/no-op pairs on the same processes")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per flwr run")
    args = ap.parse_args()
    args.preset = args.preset or "smoke"
    args.config = args.config or "smoke"
    sites = args.sites or (2 if args.quick else 4)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 4
    args = resolve_args(args, "deploy_floor")
    cfg = load_config(args)
    data = federation(args.preset, sites, args.data_seed, args.work)
    site_dirs = sorted(p for p in data.iterdir() if p.is_dir())
    work = args.work / "runs" / "deploy_floor"
    import shutil

    from sim.deploy import flower_processes, start_superlink, start_supernode, wait_supernodes_online, \
        write_connection

    shutil.rmtree(work, ignore_errors=True)
    results = []
    with flower_processes(work / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        for site in site_dirs:
            start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(work / "state" /
                                                                                               site.name)})
        write_connection(procs.env, port)
        wait_supernodes_online(procs, len(site_dirs))
        for rep in range(args.repeats):
            results.append(run_pair(procs, cfg, len(site_dirs), work, rep, args.timeout))
    rows = [[str(r["repeat"]), " / ".join(f"{s:.1f}" for s in r["omnifuse_round_seconds"]),
             " / ".join(f"{s:.1f}" for s in r["noop_round_seconds"]), f"{r['omnifuse_s_per_round']:.2f}",
             f"{r['noop_s_per_round']:.2f}", f"{r['ratio']:.2f}"] for r in results]
    md = markdown_table(["repeat", "OmniFuse round seconds", "no-op round seconds", "OmniFuse s/round (≥ 2)",
                         "no-op s/round (≥ 2)", "ratio"], rows)
    ratio = statistics.fmean(r["ratio"] for r in results)
    write_result(args.out, {"benchmark": "B7 floor: OmniFuse vs a no-op ClientApp in one deployment",
                            "preset": args.preset, "config": args.config, "sites": len(site_dirs),
                            "rounds": cfg.rounds, "repeats": args.repeats, "results": results, "mean_ratio": ratio,
                            "config_resolved": cfg.to_flat(), "environment": environment(), "markdown": md})
    print(f"B7 floor ({len(site_dirs)} SuperNodes, preset {args.preset}, config {args.config}, {cfg.rounds} rounds)")
    print(md)
    print(f"mean ratio OmniFuse / no-op per round: {ratio:.2f} (target <= 2)")
    for r in results:
        print(f"repeat {r['repeat']}: OmniFuse train message stages (s): {r['omnifuse_train_message_stages_s']}; "
              f"no-op start-up {r['noop_startup_s']:.2f} s")


if __name__ == "__main__":
    main()
