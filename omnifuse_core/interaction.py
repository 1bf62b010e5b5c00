"""Cross-modal interaction features for joint heads: low-rank bilinear products of modality pairs.

An additive fusion (a weighted sum of per-modality heads) cannot represent a risk that depends on the *product* of
two modalities' factors, and a small ReLU MLP over concatenated embeddings learns one only slowly. A low-rank
bilinear term does it directly (as LMF, Liu et al., ACL 2018, restricted to modality pairs): for every pair
``(m, n)`` with ``m < n``::

    x_mn = (U_mn · v_m) ⊙ (V_mn · v_n)        ∈ R^rank

and the joint head reads ``concat(v, x_12, x_13, …)``. With ``M`` modalities of width ``d`` this adds
``M(M−1)/2 · 2 · d · rank`` weights (768 at M = 4, d = 32, rank = 2): small enough for DP-SGD and federation. Every
operation is per sample (Linear and a product), so Opacus computes its per-sample gradients.

Config: ``joint-head: bilinear`` (the default) with ``interaction-rank``; ``joint-head: mlp`` is the plain MLP on the
concatenation (the pre-issue-23 head).
"""
from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

JOINT_HEADS = ("mlp", "bilinear")


class PairwiseBilinear(nn.Module):
    """Low-rank products of every modality pair's embeddings.

    Args:
        num_modalities: M.
        dim: embedding width d of every modality.
        rank: width of each pair's product.
    """

    def __init__(self, num_modalities: int, dim: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"config key 'interaction-rank' must be >= 1, got {rank}")
        self.pairs = list(combinations(range(num_modalities), 2))
        self.rank = rank
        # bias-free, so a pair's product is 0 wherever either factor's projection is 0
        self.left = nn.ModuleList(nn.Linear(dim, rank, bias=False) for _ in self.pairs)
        self.right = nn.ModuleList(nn.Linear(dim, rank, bias=False) for _ in self.pairs)

    @property
    def out_dim(self) -> int:
        return len(self.pairs) * self.rank

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """``[..., M, d]`` -> ``[..., n_pairs · rank]`` (empty when M < 2)."""
        if not self.pairs:
            return v.new_zeros((*v.shape[:-2], 0))
        return torch.cat([lft(v[..., m, :]) * rgt(v[..., n, :])
                          for (m, n), lft, rgt in zip(self.pairs, self.left, self.right)], dim=-1)


class JointHead(nn.Module):
    """MLP head over ``concat(base, pairwise products of the modality embeddings)``.

    ``base`` is what the fusion already hands its head (the concatenated embeddings for concat, the CRA latents for
    OmniFuse); ``v`` are the per-modality (completed) embeddings the products are formed from. With
    ``kind="mlp"`` the products are left out and this is the plain two-layer MLP on ``base``.

    Args:
        base_dim: width of ``base``.
        num_modalities: M.
        dim: per-modality embedding width.
        hidden: hidden width of the MLP.
        out: output width.
        kind: ``mlp`` or ``bilinear``.
        rank: rank of each pair's product (``bilinear``).
    """

    def __init__(self, *, base_dim: int, num_modalities: int, dim: int, hidden: int, out: int, kind: str = "bilinear",
                 rank: int = 2) -> None:
        super().__init__()
        if kind not in JOINT_HEADS:
            raise ValueError(f"config key 'joint-head' must be one of {JOINT_HEADS}, got {kind!r}")
        self.interaction = PairwiseBilinear(num_modalities, dim, rank) if kind == "bilinear" else None
        extra = self.interaction.out_dim if self.interaction is not None else 0
        self.mlp = nn.Sequential(nn.Linear(base_dim + extra, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, base: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``base [..., base_dim]`` and ``v [..., M, d]`` -> logits ``[..., out]``."""
        if self.interaction is not None:
            base = torch.cat([base, self.interaction(v)], dim=-1)
        return self.mlp(base)
