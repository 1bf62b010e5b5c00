"""Privacy/utility on one site of the `laziness` preset: test AUROC for epsilon in {1, 3, 8, inf} (DP-SGD with
sigma calibrated once for the whole schedule, TLA report-noisy-max counted), and the loss-threshold
membership-inference AUC (members = training patients, non-members = the same site's held-out patients) for
the DP models and the non-DP model. The MIA AUC is a lower-bound check of leakage, not a guarantee.

Usage:
    .venv/bin/python bench/dp_utility.py --mode smoke  # smoke preset, 1 epoch, eps 8 and inf (the smoke test)
    .venv/bin/python bench/dp_utility.py --quick     # 4 epochs, 1 seed: measured 17 min on 2 busy CPU cores
    .venv/bin/python bench/dp_utility.py             # full: 15 epochs x 3 seeds (hours on CPU; use a GPU)

Most of the time is DP-SGD's per-sample gradients (about 4x a non-DP step, mostly the CRA imputers' linear layers;
BENCHMARKS.md B6). The non-DP model uses the same DP-compatible architecture so the comparison is like for like.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.models import build_model
from omnifuse_core.privacy import calibrate_noise_multiplier, epsilon_from_history, make_noisy_select
from omnifuse_core.privacy.dpsgd import planned_steps_per_epoch
from omnifuse_core.privacy.membership import loss_threshold_auc
from omnifuse_core.privacy.noisy_max import noisy_max_epsilon
from omnifuse_core.tla import selections_in_call
from omnifuse_core.trainer import DPSettings, evaluate, predict, train_local

log = logging.getLogger("bench.dp_utility")
EPSILONS = (1.0, 3.0, 8.0, math.inf)
MODES = {
    "smoke": dict(epochs=1, seeds=1, preset="smoke", epsilons=(8.0, math.inf),
                  model=dict(embed_dim=8, encoder_hidden=8, head_hidden=8, cra_blocks=1, cra_hidden="16,8",
                             image_size=32)),
    "quick": dict(epochs=4, seeds=1, model=dict(embed_dim=16, encoder_hidden=16, head_hidden=16, cra_blocks=2,
                                                 cra_hidden="32,16,8", image_size=32)),
    "full": dict(epochs=15, seeds=3, model=dict(embed_dim=32, encoder_hidden=32, head_hidden=32, cra_blocks=5,
                                                cra_hidden="128,64,32", image_size=32)),
}


def per_sample_loss(model, ds, cfg: Config) -> np.ndarray:
    """-log p(true label) of the model's prediction for every patient of ``ds`` (binary task)."""
    prob = np.clip(predict(model, ds, cfg)["score"].astype(np.float64), 1e-7, 1 - 1e-7)
    y = ds.labels.numpy().astype(np.float64).reshape(-1)
    return -(y * np.log(prob) + (1 - y) * np.log(1 - prob))


def run_one(site, base: Config, epsilon: float, seed: int) -> dict:
    """Train on the site's training split at ``epsilon`` (inf = no DP); test AUROC, MIA AUC, spent epsilon."""
    dp_on = math.isfinite(epsilon)
    cfg = base.replace(seed=seed, dp=dp_on, dp_compatible=True,
                       target_epsilon=epsilon if dp_on else base.target_epsilon)
    torch.manual_seed(seed)
    model = build_model(site.specs, site.task, cfg)
    dp, spent = None, math.inf
    if dp_on:
        q, per_epoch = planned_steps_per_epoch(len(site.train), cfg.batch_size)
        steps = cfg.local_epochs * per_epoch
        pure = selections_in_call(cfg.local_epochs, False) * noisy_max_epsilon(cfg.tla_noise_scale, monotone=False) \
            if model.use_tla else 0.0
        sigma = calibrate_noise_multiplier(epsilon - pure, cfg.delta, q, steps)
        select = make_noisy_select(cfg.tla_noise_scale, torch.Generator().manual_seed(seed)) if model.use_tla else None
        dp = DPSettings(sigma, cfg.max_grad_norm, select)
    t0 = time.monotonic()
    result = train_local(model, site.train, cfg, dp=dp)
    if dp_on:
        events = result.trace.get("dp_event", [])
        spent = epsilon_from_history([(dp.noise_multiplier, result.sample_rate, result.steps)], cfg.delta, "prv",
                                     pure_events=[(e["epsilon0"], e["count"]) for e in events])
    mia = loss_threshold_auc(per_sample_loss(model, site.train, cfg),  # non-members: the site's held-out patients
                             np.concatenate([per_sample_loss(model, site.val, cfg),
                                             per_sample_loss(model, site.test, cfg)]))
    auroc = evaluate(model, site.test, cfg)["auroc"]
    out = {"epsilon_target": epsilon if dp_on else None, "epsilon_spent": spent if dp_on else None, "seed": seed,
           "noise_multiplier": dp.noise_multiplier if dp_on else 0.0, "steps": result.steps, "test_auroc": auroc,
           "mia_auc": mia["auc"], "mia_tpr_at_1pct_fpr": mia["tpr_at_1pct_fpr"],
           "seconds": round(time.monotonic() - t0, 1)}
    log.info("eps=%s: AUROC %.3f, MIA AUC %.3f (sigma %.3f, %d steps, %.0f s)", epsilon, auroc, mia["auc"],
             out["noise_multiplier"], result.steps, out["seconds"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=sorted(MODES), default="full", help="smoke (seconds), quick or full")
    ap.add_argument("--quick", action="store_true", help="same as --mode quick")
    ap.add_argument("--data", type=Path, default=None, help="an existing federation (default: generate the preset)")
    ap.add_argument("--site", type=int, default=0, help="index of the site in federation.yaml")
    ap.add_argument("--out", type=Path, default=Path("bench/results/dp_utility.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("opacus", "httpx", "omnifuse_core.privacy"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    mode = "quick" if args.quick else args.mode
    spec = MODES[mode]
    preset, epsilons = spec.get("preset", "laziness"), spec.get("epsilons", EPSILONS)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dp-utility-") as tmp:
        data = args.data
        if data is None:
            from sim.generator import generate_federation

            data = generate_federation(preset, args.site + 1, Path(tmp) / "fed", seed=0)
        import yaml

        entry = yaml.safe_load((data / "federation.yaml").read_text())["sites"][args.site]
        folder = data / str(entry.get("path") or entry.get("name") if isinstance(entry, dict) else entry)
        base = Config.load("demo").replace(**spec["model"], local_epochs=spec["epochs"], batch_size=32, lr=2e-3,
                                           delta=1e-5, tla_noise_scale=20.0)
        site = load_site(folder, base.replace(dp_compatible=True))
        log.info("site %s: %d train / %d val / %d test patients", site.name, len(site.train), len(site.val),
                 len(site.test))
        runs = [run_one(site, base, eps, seed) for seed in range(spec["seeds"]) for eps in epsilons]
    table = {}
    for eps in epsilons:
        rows = [r for r in runs if (r["epsilon_target"] or math.inf) == eps]
        table["inf" if math.isinf(eps) else f"{eps:g}"] = {
            k: float(np.mean([r[k] for r in rows])) for k in ("test_auroc", "mia_auc")}
    result = {"mode": mode, "preset": preset, "site": site.name, "n_train": len(site.train),
              "delta": base.delta, "epochs": spec["epochs"], "seeds": spec["seeds"], "model": spec["model"],
              "table": table, "runs": runs, "seconds": round(time.monotonic() - t0, 1),
              "note": "MIA AUC: loss-threshold attack, members = training patients vs the same site's held-out "
                      "patients; a lower-bound check of leakage, not a guarantee (0.5 = chance)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'epsilon':>8}  {'test AUROC':>10}  {'MIA AUC':>8}")
    for eps, row in table.items():
        print(f"{eps:>8}  {row['test_auroc']:10.3f}  {row['mia_auc']:8.3f}")
    print(f"written to {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
