"""B6b — DP step cost: one DP-SGD step against one non-DP step of the same model and batch, per Opacus per-sample
gradient mode, for a config (default the DP profile, ``configs/demo-dp.yaml``, and the demo config for reference).

Each variant trains one epoch over a fixed subset of the pooled training split (``--samples``) after a warm-up
epoch; step time = (epoch − TLA mining) / steps, median of ``--repeats`` epochs interleaved across variants (load
drift hits all alike). DP steps use Poisson batches of expected size B (σ = 1); the non-DP step shuffles fixed
batches of B. Both models are built DP-compatible, so the ratio is the cost of per-sample gradients, clipping and
noise only.

Usage:
  .venv/bin/python bench/dp_step.py --threads 1 [--configs demo-dp,demo] [--modes hooks,functorch]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench.dp_step")


def one_epoch(cfg, specs, task, train, dp_mode: str | None) -> dict:
    """Seconds of one epoch, of its TLA mining, and its steps; ``dp_mode`` None = no DP."""
    from omnifuse_core.models import build_model
    from omnifuse_core.trainer import DPSettings, set_seed, train_local

    run_cfg = cfg.replace(dp=bool(dp_mode), dp_grad_sample_mode=dp_mode or cfg.dp_grad_sample_mode)
    set_seed(0)
    model = build_model(specs, task, run_cfg)  # built as the run builds it (under DP: e_m(0) without gradient)
    mining = [0.0]
    hook = model.on_epoch_start

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return hook(*a, **kw)
        finally:
            mining[0] += time.perf_counter() - t

    model.on_epoch_start = timed
    dp = DPSettings.for_config(cfg, 1.0, min(cfg.batch_size, len(train))) if dp_mode else None
    start = time.perf_counter()
    result = train_local(model, train, run_cfg, epochs=1, dp=dp)
    epoch = time.perf_counter() - start
    return {"epoch_s": epoch, "steps": result.steps, "step_s": (epoch - mining[0]) / max(result.steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--configs", default="demo-dp,demo")
    ap.add_argument("--modes", default="hooks,functorch", help="Opacus grad_sample_mode values to time")
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench/work"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/dp_step.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("opacus", "omnifuse_core.privacy", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(args.threads)
    from bench.common import environment, federation, load_all
    from omnifuse_core.batch import MultimodalDataset
    from omnifuse_core.config import Config
    from omnifuse_core.models import build_model
    from omnifuse_core.weights import trainable_count

    data = federation(args.preset, None, 0, args.work)
    result = {"benchmark": "B6b DP step cost", "preset": args.preset, "samples": args.samples,
              "threads": args.threads, "repeats": args.repeats, "configs": {}, "environment": environment()}
    for name in [c for c in args.configs.split(",") if c]:
        cfg = Config.load(name).replace(dp=False, dp_compatible=True)
        sites = load_all(data, cfg)
        pooled = MultimodalDataset.concat([s.train for s in sites])
        idx = np.sort(np.random.default_rng(0).permutation(len(pooled))[:args.samples])
        sub = pooled.subset(idx)
        specs, task = sites[0].specs, sites[0].task
        variants = {"non_dp": None, **{f"dp_{m}": m for m in args.modes.split(",") if m}}
        for mode in variants.values():  # warm-up
            one_epoch(cfg, specs, task, sub.subset(range(min(cfg.batch_size * 2, len(sub)))), mode)
        runs: dict[str, list] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v, mode in variants.items():
                runs[v].append(one_epoch(cfg, specs, task, sub, mode))
                log.info("%s %s: %s", name, v, runs[v][-1])
        med = {v: float(np.median([r["step_s"] for r in rs])) for v, rs in runs.items()}
        result["configs"][name] = {
            "batch_size": cfg.batch_size, "trainable_params": trainable_count(build_model(specs, task, cfg)),
            "step_ms": {v: 1e3 * s for v, s in med.items()},
            "ratio_over_non_dp": {v: s / med["non_dp"] for v, s in med.items() if v != "non_dp"}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| config | P | B | non-DP step (ms) | " + " | ".join(f"{v} (ms, ratio)" for v in runs if v != "non_dp") + " |")
    for name, c in result["configs"].items():
        cells = [f"{c['step_ms'][v]:.1f}, {c['ratio_over_non_dp'][v]:.2f}×" for v in c["ratio_over_non_dp"]]
        print(f"| {name} | {c['trainable_params']:,} | {c['batch_size']} | {c['step_ms']['non_dp']:.1f} | "
              + " | ".join(cells) + " |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
