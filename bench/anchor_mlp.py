"""A neural network on the classical anchor's own features: the diagnosis "trees vs a neural net on identical inputs".

``bench/anchor.py --models mlp`` fits this beside HistGradientBoosting and the L2-logistic: the same label-free
per-modality summary features (NaN where a modality is missing), standardised on the train split, NaN replaced by 0
plus one missing indicator per feature column group (a column that is NaN for a patient), then a two-layer MLP with
input dropout, AdamW and the epoch chosen on the validation split (its AUROC; its log-loss where the AUROC is
undefined). If this network lands where the deep framework does while boosting is above both, the gap is the neural
fit on tabular inputs (Grinsztajn et al., NeurIPS 2022), not the framework's encoders.
"""
from __future__ import annotations

import math

import numpy as np

MLP = {"hidden": 64, "dropout": 0.2, "lr": 2e-3, "weight_decay": 1e-4, "epochs": 30, "batch_size": 64}


def _design(X: dict) -> dict:
    """Standardise on train, NaN -> 0, append a missing indicator for every column that is ever NaN in train."""
    train = X["train"]
    mu = np.nan_to_num(np.nanmean(train, axis=0)) if len(train) else np.zeros(train.shape[1])
    sd = np.nan_to_num(np.nanstd(train, axis=0), nan=1.0) if len(train) else np.ones(train.shape[1])
    sd = np.where(sd > 1e-6, sd, 1.0)
    gaps = np.isnan(train).any(axis=0)
    out = {}
    for part, x in X.items():
        z = np.nan_to_num((x - mu) / sd)
        out[part] = np.concatenate([z, np.isnan(x[:, gaps]).astype(np.float64)], axis=1).astype(np.float32)
    return out


def fit_mlp(X: dict, y: dict, task: str, k: int, criterion, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Fit the MLP on ``X["train"]``, pick the epoch by ``criterion(val scores)``, return the test scores.

    Args:
        X: ``{"train", "val", "test"}`` feature matrices (NaN = missing).
        y: ``{"train", "val"}`` integer labels (the test labels are never passed in).
        task: ``binary`` or ``multiclass``.
        k: number of classes.
        criterion: validation score to maximise, called with the val scores in the anchor's output shape.
        seed: torch seed (initialisation and batch order).

    Returns:
        ``(test scores: P(y = 1) for binary, [N, k] probabilities otherwise, {"epochs", "val_criterion"})``.
    """
    import torch
    from torch import nn

    D = _design(X)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    width = D["train"].shape[1]
    net = nn.Sequential(nn.Dropout(MLP["dropout"]), nn.Linear(width, MLP["hidden"]), nn.ReLU(),
                        nn.Linear(MLP["hidden"], k))
    opt = torch.optim.AdamW(net.parameters(), lr=MLP["lr"], weight_decay=MLP["weight_decay"])
    xt, yt = torch.from_numpy(D["train"]), torch.as_tensor(y["train"], dtype=torch.long)

    def scores(part: str) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            p = torch.softmax(net(torch.from_numpy(D[part])), dim=1).numpy().astype(np.float64)
        return p[:, 1] if task == "binary" else p

    best, best_val, best_test = 0, -math.inf, None
    for epoch in range(MLP["epochs"]):
        net.train()
        order = torch.randperm(len(xt), generator=gen)
        for at in range(0, len(xt), MLP["batch_size"]):
            j = order[at:at + MLP["batch_size"]]
            loss = nn.functional.cross_entropy(net(xt[j]), yt[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = criterion(scores("val"))
        if math.isfinite(val) and val > best_val:  # ties: the earliest epoch
            best, best_val, best_test = epoch, val, scores("test")
    if best_test is None:  # no finite validation score: the last epoch
        best, best_test = MLP["epochs"] - 1, scores("test")
    return best_test, {"epochs": best + 1, "val_criterion": best_val}
