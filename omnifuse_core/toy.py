"""In-memory toy cohorts for unit tests and quick experiments (no files, no text model).

A latent patient state z drives the label; each modality sees a random projection of part of z plus noise, so
one can make a *dominant* modality (low noise, most of the signal) and a *noisy* one. Missing modalities are MCAR
with the given rates and their inputs are zeros, as the batch contract requires. The site format and the realistic
generator live in ``omnifuse_core.data`` and ``sim``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .batch import (KIND_GENOMICS, KIND_IMAGE, KIND_SEQUENCE, KIND_TEXT, ModalitySpec, MultimodalDataset, TaskSpec)

TOY_SPECS = (ModalitySpec("ehr", KIND_SEQUENCE, (6, 10)), ModalitySpec("image", KIND_IMAGE, (1, 16, 16)),
             ModalitySpec("text", KIND_TEXT, (12,)), ModalitySpec("genomics", KIND_GENOMICS, (20,)))


def toy_task(kind: str = "binary") -> TaskSpec:
    return {"binary": TaskSpec("binary", 1), "multiclass": TaskSpec("multiclass", 3),
            "multilabel": TaskSpec("multilabel", 3), "survival": TaskSpec("survival", 4, bin_edges=(0.5, 1.0, 2.0))}[kind]


def make_toy_dataset(n: int, *, specs: Sequence[ModalitySpec] = TOY_SPECS, task: str = "binary", seed: int = 0,
                     signal: Sequence[float] | None = None, noise: Sequence[float] | None = None,
                     missing: Sequence[float] | None = None, latent_dim: int = 4) -> MultimodalDataset:
    """A toy cohort.

    Args:
        n: patients.
        specs: modality specs (shapes are respected).
        task: binary | multiclass | multilabel | survival.
        seed: RNG seed.
        signal: per-modality fraction of the latent dimensions the modality sees (1.0 = all).
        noise: per-modality noise standard deviation.
        missing: per-modality MCAR missing rate (each patient keeps at least one modality).
        latent_dim: size of z.
    """
    rng = np.random.default_rng(seed)
    m = len(specs)
    signal = list(signal or [1.0] * m)
    noise = list(noise or [0.5] * m)
    missing = list(missing or [0.0] * m)
    z = rng.normal(size=(n, latent_dim))
    inputs = {}
    for i, spec in enumerate(specs):
        k = max(1, int(round(signal[i] * latent_dim)))
        dims = rng.choice(latent_dim, size=k, replace=False)
        flat = int(np.prod(spec.shape))
        proj = rng.normal(size=(k, flat)) / np.sqrt(k)
        x = z[:, dims] @ proj + noise[i] * rng.normal(size=(n, flat))
        inputs[spec.name] = torch.tensor(x.reshape(n, *spec.shape), dtype=torch.float32)
    present = rng.random((n, m)) >= np.asarray(missing)[None, :]
    empty = ~present.any(axis=1)
    present[empty, rng.integers(0, m, size=int(empty.sum()))] = True
    w = rng.normal(size=latent_dim)
    risk = z @ w / np.sqrt(latent_dim)
    if task == "binary":
        labels = torch.tensor(rng.random(n) < 1 / (1 + np.exp(-2.5 * risk)), dtype=torch.float32)
    elif task == "multiclass":
        labels = torch.tensor(np.digitize(risk, np.quantile(risk, [1 / 3, 2 / 3])), dtype=torch.long)
    elif task == "multilabel":
        w2 = rng.normal(size=(latent_dim, 3))
        labels = torch.tensor(rng.random((n, 3)) < 1 / (1 + np.exp(-2 * z @ w2 / np.sqrt(latent_dim))),
                              dtype=torch.float32)
    elif task == "survival":
        time = rng.exponential(np.exp(-risk))
        censor = rng.exponential(2.0, size=n)
        labels = torch.tensor(np.stack([np.minimum(time, censor) + 1e-3, (time <= censor)], 1), dtype=torch.float32)
    else:
        raise ValueError(f"unknown task {task!r}")
    return MultimodalDataset(list(specs), inputs, torch.tensor(present), labels, [f"p{i}" for i in range(n)])
