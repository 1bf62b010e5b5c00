"""Diagnose before tuning (issue 23, item 2): how much of each latent factor a modality's raw summary features carry,
how much of it the *trained* encoder's frozen embedding keeps, and how much label signal a linear probe finds there.

Usage:
  .venv/bin/python bench/probe.py --preset reliability [--config demo] [--set fusion=concat] [--seeds 1]

For one synthetic federation it trains the model centrally (``bench.training.train_centralized``, the config's
rounds, epochs and ``final-model``), freezes it, and for every modality and every latent factor that modality
observes (``sim.presets``) reports, on the test patients who have the modality:

* ``R2 raw``: a ridge regression (alpha chosen by cross-validation on the train split) of the generator's latent
  factor on the modality's raw summary features (EHR per-variable mean / min / max / last, 8x8 pooled image,
  the cached text embedding, the genes) — what a linear read-out of the input could know;
* ``R2 learned``: the same ridge on the frozen encoder embedding ``e_m(x_m)`` — what the encoder kept;
* ``AUROC probe``: an L2-logistic regression of the label on the frozen embedding (train split) — the label
  signal the embedding holds for this modality alone; beside it the generator's oracle for the modality.

A low ``R2 learned`` next to a high ``R2 raw`` says the encoder (capacity or optimisation) loses the factor;
both high with a low fusion AUROC says the fusion does. The latent factors come from re-simulating the federation
(``sim.cohort.simulate_federation``, same preset and seed): benchmark-only knowledge, never given to a model.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench.probe")


def raw_features(name: str, kind: str, x) -> np.ndarray:
    """Label-free summary features of one modality's input tensor ``[N, ...]`` (a linear read-out's view)."""
    import torch

    if kind == "sequence":
        return torch.cat([x.mean(1), x.amin(1), x.amax(1), x[:, -1]], dim=1).numpy()
    if kind == "image":
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1).numpy()
    return x.flatten(1).numpy()


def ridge_r2(x_train: np.ndarray, t_train: np.ndarray, x_test: np.ndarray, t_test: np.ndarray) -> float:
    """Test R² of a cross-validated ridge regression of ``t`` on ``x`` (features standardized on train)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15))).fit(x_train, t_train)
    return float(r2_score(t_test, model.predict(x_test)))


def probe_auroc(x_train, y_train, x_test, y_test) -> float:
    """Test AUROC of an L2-logistic regression (C by 5-fold CV on train) of a binary label on ``x``."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(np.bincount(y_train.astype(int), minlength=2)) < 5 or len(set(y_test.tolist())) < 2:
        return float("nan")  # too few patients of a class for 5-fold CV or for an AUROC
    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=3000)).fit(x_train, y_train)
    return float(roc_auc_score(y_test, model.predict_proba(x_test)[:, 1]))


def latent_table(preset: str, n_sites, seed: int) -> dict[str, np.ndarray]:
    """patient id -> latent state ``z`` [4] of the re-simulated federation."""
    from sim.cohort import simulate_federation

    return {pid: c.z[i] for c in simulate_federation(preset, n_sites, seed) for i, pid in enumerate(c.patient_ids)}


def probe_modalities(model, train, test, latents: dict, factors: dict[str, list[int]], oracle: dict,
                     min_patients: int = 20) -> list[dict]:
    """One row per (modality, observed factor): R² raw, R² learned, probe AUROC, oracle AUROC."""
    import torch

    rows = []
    model.eval()
    with torch.no_grad():
        emb = {split: model.encode(ds.inputs, ds.present).numpy() for split, ds in (("train", train), ("test", test))}
    for m, spec in enumerate(train.specs):
        sel = {s: ds.present[:, m].numpy() for s, ds in (("train", train), ("test", test))}
        data = {s: ds for s, ds in (("train", train), ("test", test))}
        if sel["train"].sum() < min_patients or sel["test"].sum() < min_patients:
            log.warning("modality %s: fewer than %d train or test patients have it; skipped", spec.name, min_patients)
            continue
        raw = {s: raw_features(spec.name, spec.kind, data[s].inputs[spec.name][torch.from_numpy(sel[s])])
               for s in sel}
        learned = {s: emb[s][sel[s], m] for s in sel}
        z = {s: np.stack([latents[p] for p, k in zip(data[s].patient_ids, sel[s]) if k]) for s in sel}
        y = {s: data[s].labels.numpy()[sel[s]].reshape(-1) for s in sel}
        auc = probe_auroc(learned["train"], y["train"], learned["test"], y["test"])
        for f in factors.get(spec.name, []):
            rows.append({"modality": spec.name, "factor": f,
                         "r2_raw": ridge_r2(raw["train"], z["train"][:, f], raw["test"], z["test"][:, f]),
                         "r2_learned": ridge_r2(learned["train"], z["train"][:, f], learned["test"], z["test"][:, f]),
                         "auroc_probe": auc, "oracle": oracle.get(spec.name)})
    return rows


def main() -> None:
    import torch

    from bench.common import federation, load_all
    from bench.learnability import oracle_value
    from bench.training import train_centralized
    from omnifuse_core.batch import MultimodalDataset
    from omnifuse_core.config import Config
    from sim.presets import get_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="reliability")
    ap.add_argument("--sites", type=int, default=None)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("bench/work"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--min-patients", type=int, default=20,
                    help="probe a modality only where this many train and test patients have it")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    cfg = Config.load(args.config).with_overrides(args.overrides).replace(seed=args.seed)
    data = federation(args.preset, args.sites, args.data_seed, args.work)
    sites = load_all(data, cfg)
    result = train_centralized(sites, cfg, keep_model=True)
    pool = lambda split: MultimodalDataset.concat([getattr(s, split) for s in sites])  # noqa: E731
    factors = {m: sorted(f) for m, f in get_preset(args.preset).signals.items()}
    oracle = {m: oracle_value(data, [m]) for m in cfg.modality_list}
    rows = probe_modalities(result["model"], pool("train"), pool("test"), latent_table(args.preset, args.sites,
                            args.data_seed), factors, oracle, args.min_patients)
    out = args.out or Path(__file__).resolve().parent / "results" / f"probe-{args.preset}-{cfg.fusion}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": cfg.to_flat(), "data_seed": args.data_seed, "pooled_auroc":
                               result["pooled_auroc"], "rows": rows}, indent=2, default=float))
    print(f"model pooled test AUROC {result['pooled_auroc']:.3f} ({cfg.fusion}; {out})")
    print("| modality | latent factor | R² raw features | R² learned embedding | AUROC linear probe on embedding "
          "| oracle AUROC |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['modality']} | z{r['factor']} | {r['r2_raw']:.2f} | {r['r2_learned']:.2f} | "
              f"{r['auroc_probe']:.3f} | {r['oracle'] if r['oracle'] is None else round(r['oracle'], 3)} |")


if __name__ == "__main__":
    main()
