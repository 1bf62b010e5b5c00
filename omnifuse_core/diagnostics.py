"""Aggregate diagnostics for reports: ω distributions, imputation quality, embedding maps.

Everything returned by :func:`site_diagnostics` is an aggregate (histogram counts, means) and may leave a site;
:func:`embedding_map` returns per-patient coordinates and is for centralized/local runs only.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from .batch import MultimodalDataset
from .config import Config
from .fusion import dwfuse_weights
from .trainer import iterate_batches, resolve_device

log = logging.getLogger(__name__)
OMEGA_BINS = np.linspace(0.0, 1.0, 11)


def _is_omnifuse(model) -> bool:
    return hasattr(model, "complete") and hasattr(model, "heads")


@torch.no_grad()
def _passes(model, ds: MultimodalDataset, cfg: Config, seed: int):
    """Yields (present, hidden, v_true, v_fwd, p_true [B,M,K]) per batch, with simulated missingness."""
    device = resolve_device(cfg)
    model.to(device).eval()
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for batch in iterate_batches(ds, 256, device):
            present, y = batch["present"], batch["labels"]
            v_true = model.encode(batch["inputs"], present)
            v_miss = model.zero_embeddings(batch["inputs"], present.shape[0])
            hidden = model.sample_hidden(present) if present.shape[1] > 1 else torch.zeros_like(present)
            _, v_fwd, completed, _ = model.complete(v_true, v_miss, present & ~hidden)
            logits = model.heads(completed)
            p = torch.stack([model.task.p_true(logits[:, m], y) for m in range(model.num_modalities)], 1)
            yield present, hidden, v_true, v_fwd, p
    finally:
        torch.set_rng_state(gen_state)


def site_diagnostics(model, ds: MultimodalDataset, cfg: Config, *, seed: int = 1234) -> dict[str, float]:
    """Flat aggregate diagnostics of an OmniFuse model on one split (empty for other fusions).

    Keys: ``omega_hist/<modality>/<bin>`` (counts of ω in 10 equal bins over [0, 1], computed with labels — a
    training-time quantity, never used for prediction), ``impute_cos/<modality>`` (mean cosine similarity of the
    imputed vs the true embedding over samples where that modality was present and hidden) and
    ``impute_n/<modality>`` (how many such samples).
    """
    if not _is_omnifuse(model) or len(ds) == 0:
        return {}
    names = model.names
    hist = np.zeros((len(names), len(OMEGA_BINS) - 1), dtype=np.int64)
    cos_sum = np.zeros(len(names))
    cos_n = np.zeros(len(names), dtype=np.int64)
    for present, hidden, v_true, v_fwd, p in _passes(model, ds, cfg, seed):
        omega = dwfuse_weights(p, cfg.beta).mean(dim=2).cpu().numpy()  # [B, M]
        for m in range(len(names)):
            hist[m] += np.histogram(omega[:, m], bins=OMEGA_BINS)[0]
            sel = hidden[:, m]
            if sel.any():
                cos = torch.nn.functional.cosine_similarity(v_fwd[sel, m], v_true[sel, m], dim=1)
                cos_sum[m] += float(cos.sum())
                cos_n[m] += int(sel.sum())
    out: dict[str, float] = {}
    for m, name in enumerate(names):
        out.update({f"omega_hist/{name}/{b}": int(c) for b, c in enumerate(hist[m])})
        out[f"impute_n/{name}"] = int(cos_n[m])
        out[f"impute_cos/{name}"] = float(cos_sum[m] / cos_n[m]) if cos_n[m] else float("nan")
    return out


def embedding_map(model, ds: MultimodalDataset, cfg: Config, *, max_points: int = 300,
                  seed: int = 1234) -> Optional[dict[str, np.ndarray]]:
    """2-D PCA map of real vs imputed embeddings of hidden slots (per-patient: centralized/local runs only)."""
    if not _is_omnifuse(model) or len(ds) == 0:
        return None
    from sklearn.decomposition import PCA
    real, imputed, modality = [], [], []
    for _, hidden, v_true, v_fwd, _ in _passes(model, ds, cfg, seed):
        idx = hidden.nonzero(as_tuple=False)
        real.append(v_true[idx[:, 0], idx[:, 1]].cpu().numpy())
        imputed.append(v_fwd[idx[:, 0], idx[:, 1]].cpu().numpy())
        modality.append(idx[:, 1].cpu().numpy())
    real_a, imp_a, mod_a = np.concatenate(real), np.concatenate(imputed), np.concatenate(modality)
    if len(real_a) < 3:
        return None
    keep = np.random.default_rng(seed).permutation(len(real_a))[:max_points]
    pca = PCA(n_components=2, random_state=seed).fit(np.concatenate([real_a[keep], imp_a[keep]]))
    return {"real": pca.transform(real_a[keep]), "imputed": pca.transform(imp_a[keep]), "modality": mod_a[keep],
            "names": np.array(model.names)}
