"""Cascade residual autoencoder (CRA) imputer with forward and backward (cycle) imputation (DESIGN §4.2, Eqs. 2–8).

Forward CRA of K residual autoencoders φ_k::

    Δz_1 = φ_1(v),   Δz_k = φ_k(v + Σ_{j<k} Δz_j),   v' = v + Σ_k Δz_k

The backward CRA ψ has the same shape and maps v' back to v'' (Eq. 6). The joint embedding is the concatenation of
the K forward autoencoders' bottleneck latents (K × 64 by default).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class ResidualAutoencoder(nn.Module):
    """One RA: D -> h1 -> h2 -> latent -> h2 -> h1 -> D (ReLU between layers, linear output)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        prev = dim
        for h in hidden:
            enc += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        dec: list[nn.Module] = []
        for h in list(hidden[:-1])[::-1]:
            dec += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        dec.append(nn.Linear(prev, dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        self.latent_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z


class CascadeResidualAutoencoder(nn.Module):
    """K residual autoencoders in cascade; each sees the input plus the running sum of the previous residuals.

    Args:
        dim: D, the width of the concatenated modality embeddings.
        blocks: K.
        hidden: widths of one RA's encoder half; the last one is the latent width.
    """

    def __init__(self, dim: int, blocks: int = 5, hidden: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualAutoencoder(dim, hidden) for _ in range(blocks))
        self.latent_dim = blocks * hidden[-1]

    def forward(self, v: torch.Tensor, need_output: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Returns (v + Σ_k Δz_k, concatenated latents ``[..., K * latent]``); works on ``[B, D]`` or ``[B, P, D]``.

        With ``need_output=False`` the last block's decoder is not run (its Δz only feeds v') and the first value
        is None. Under DP-SGD every module that runs must reach the loss, so callers that only need the joint
        embedding pass False.
        """
        total = torch.zeros_like(v)
        latents = []
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            if k == last and not need_output:
                latents.append(block.encoder(v + total))
                return None, torch.cat(latents, dim=-1)
            dz, z = block(v + total)
            total = total + dz
            latents.append(z)
        return v + total, torch.cat(latents, dim=-1)


def masked_slot_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Per-sample squared error over the slots where ``mask`` is True.

    Args:
        pred, target: ``[B, M, d]``.
        mask: bool ``[B, M]``; slots without ground truth contribute nothing.
        reduction: ``"mean"`` averages over the masked slots' elements; ``"sum"`` sums over them (the paper's
            ‖v′ − v̂‖² restricted to the slots with ground truth).

    Returns:
        ``[B]`` (0 for a sample with no masked slot).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"imputation-reduction must be 'mean' or 'sum', got {reduction!r}")
    m = mask.to(pred.dtype)
    if reduction == "sum":
        return (((pred - target) ** 2).sum(dim=2) * m).sum(dim=1)
    err = ((pred - target) ** 2).mean(dim=2)  # [B, M]
    return (err * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
