"""B7 scale: simulated federations of 2, 10 and 50 sites with a small model: wall time per site-round, peak memory.

Usage:
  .venv/bin/python bench/scale.py [--site-counts 2,10,50] [--rounds 2] [--config smoke] [--threads 1] \
      [--out bench/results/scale.json]
  .venv/bin/python bench/scale.py --quick      # 2 and 3 sites, 1 round

How (in-process, documented simplification of the Flower simulation): the ``smoke``-preset federation (3 sites of
40 patients; ``--preset`` picks another) is generated once and loaded once per site count; a federation of N sites holds N smoke-sized sites,
copies of those 3 in turn with their tensors cloned (each site owns its memory). Each round trains the global model
at every site in turn from the global weights (``train_local``, local-epochs of the config), keeps every site's
reply in memory as the server would, and aggregates them with a sample-weighted mean (FedAvg), then evaluates on
each site's validation split. Each site count runs in a child process so that its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own (``--in-process``/``--quick``: one process, cumulative
peak). One warm-up epoch and evaluation on the first site precede the timed rounds. Flower's own per-message overhead is not included
(B6 measures federated vs centralized wall time through Flower). Target: time per site-round at 50 sites ≤ 1.2× at
10 sites.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (base_parser, environment, federation, load_all, load_config, resolve_args,  # noqa: E402
                          warm_up, write_result)
from bench.stats import fnum, markdown_table, target, targets_lines  # noqa: E402

log = logging.getLogger("bench.scale")
CHILD_TAG = "SCALE_RESULT "
_LOADED: dict = {}


def replicate(sites: list, n: int) -> list:
    """``n`` sites: copies of ``sites`` in turn, tensors cloned, named ``site_001`` ..."""
    import torch

    from omnifuse_core.batch import MultimodalDataset

    def clone(ds):
        return MultimodalDataset(ds.specs, {k: v.clone() for k, v in ds.inputs.items()}, ds.present.clone(),
                                 ds.labels.clone(), list(ds.patient_ids))

    with torch.no_grad():
        return [dataclasses.replace(s, name=f"site_{i + 1:03d}", **{k: clone(v) for k, v in s.splits.items()})
                for i, s in enumerate(sites[j % len(sites)] for j in range(n))]


def fedavg(replies: list[tuple[dict, int]]) -> dict:
    """Sample-weighted mean of the replies' arrays."""
    total = sum(n for _, n in replies)
    return {k: sum(a[k] * (n / total) for a, n in replies) for k in replies[0][0]}


def simulate(sites: list, cfg) -> dict:
    """Rounds of sequential local training + FedAvg over ``sites``; seconds per round and per site-round."""
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import evaluate, set_seed, train_local
    from omnifuse_core.weights import get_trainable, set_trainable

    set_seed(cfg.seed)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    weights = get_trainable(model)
    train_local(model, sites[0].train, cfg)  # warm-up (first calls allocate and import), not timed
    evaluate(model, sites[0].val, cfg)
    rounds = []
    for rnd in range(1, cfg.rounds + 1):
        start = time.perf_counter()
        replies = []
        for s in sites:
            set_trainable(model, weights)
            train_local(model, s.train, cfg, seed_offset=rnd)
            replies.append((get_trainable(model), len(s.train)))
        weights = fedavg(replies)
        set_trainable(model, weights)
        aurocs = [evaluate(model, s.val, cfg).get("auroc") for s in sites if len(s.val)]
        rounds.append(time.perf_counter() - start)
        log.info("%d sites, round %d: %.2f s", len(sites), rnd, rounds[-1])
    per_round = sum(rounds) / len(rounds)
    return {"round_s": rounds, "mean_round_s": per_round, "site_round_s": per_round / len(sites),
            "val_auroc_sites": len(aurocs)}


def measure(args, n: int) -> dict:
    """Load, replicate and simulate ``n`` sites; with the process's peak RSS so far."""
    cfg = load_config(args, fusion="omnifuse")
    data = federation(args.preset, None, args.data_seed, args.work)
    warm_up()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if data not in _LOADED:  # in-process runs load the folder once
        _LOADED[data] = load_all(data, cfg)
    sites = replicate(_LOADED[data], n)
    load_s = time.perf_counter() - start
    result = simulate(sites, cfg)
    result.update({"sites": n, "load_s": load_s, "patients": sum(sum(len(d) for d in s.splits.values()) for s in sites),
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rss_before_data_mb": rss_before})
    return result


def in_child(args, n: int) -> dict:
    """``measure(n)`` in a fresh process, so that the peak RSS is this site count's own."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--config", args.config, "--preset",
           args.preset, "--work", str(args.work), "--data-seed", str(args.data_seed), "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--rounds", str(args.rounds)] if args.rounds is not None else []
    cmd += ["--local-epochs", str(args.local_epochs)] if args.local_epochs is not None else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale child for {n} sites failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_TAG):])


def main() -> None:
    ap = base_parser(__doc__.splitlines()[0], seeds=1)
    ap.add_argument("--site-counts", default="", help="comma-separated site counts (default 2,10,50; quick 2,3)")
    ap.add_argument("--in-process", action="store_true",
                    help="all site counts in this process (faster; peak RSS is then cumulative); --quick implies it")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.config = args.config or "smoke"  # a small model by default
    args.preset = args.preset or "smoke"  # smoke-sized sites by default
    args = resolve_args(args, "scale")
    if args.child:
        print(CHILD_TAG + json.dumps(measure(args, args.child)), flush=True)
        return
    in_process = args.in_process or args.quick
    counts = [int(c) for c in args.site_counts.split(",") if c] or ([2, 3] if args.quick else [2, 10, 50])
    cfg = load_config(args, fusion="omnifuse")
    data = federation(args.preset, None, args.data_seed, args.work)  # generate once, before the children
    if not in_process:
        load_all(data, cfg)  # fills the text-embedding cache, so that no child loads the text model
    results = {}
    for n in counts:
        results[str(n)] = measure(args, n) if in_process else in_child(args, n)
        log.info("%d sites: %s", n, results[str(n)])
    targets = {}
    if "10" in results and "50" in results:
        ratio = results["50"]["site_round_s"] / results["10"]["site_round_s"]
        targets["site_round_50_over_10"] = target("time per site-round, 50 sites / 10 sites", ratio, 1.2, "<=")
    md = markdown_table(["sites", "patients", "s per round", "s per site-round", "peak RSS (MB)",
                         "RSS before data (MB)", "load (s)"], [
        [n, r["patients"], fnum(r["mean_round_s"], 2), fnum(r["site_round_s"], 3), fnum(r["peak_rss_mb"], 0),
         fnum(r["rss_before_data_mb"], 0), fnum(r["load_s"], 1)] for n, r in results.items()])
    write_result(args.out, {
        "benchmark": "B7 scale", "mode": "in-process sequential site training + FedAvg (see docstring)",
        "site_preset": args.preset, "config": args.config, "quick": args.quick, "site_counts": counts,
        "rss_scope": "whole process so far (in-process)" if in_process else "one child process per site count",
        "results": results, "targets": targets, "config_resolved": cfg.to_flat(), "environment": environment(),
        "markdown": md})
    print(f"B7 scale ({args.preset}-preset sites, config {args.config}, {cfg.rounds} round(s) × {cfg.local_epochs} epoch(s), "
          f"{'one process' if in_process else 'one child process per site count'})")
    print(md)
    print("\n".join(["Targets:"] + targets_lines(targets)))


if __name__ == "__main__":
    main()
