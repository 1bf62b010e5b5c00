"""DWFuse: dynamic weighting of per-modality heads (DESIGN §4.3, Eqs. 9–14)."""
from __future__ import annotations

import torch
from torch import nn

_CLAMP = 1e-6


def dwfuse_weights(p_true: torch.Tensor, beta: float) -> torch.Tensor:
    """ω_m = [Π_{n≠m} (1 − p_n)]^{β/(M−1)}, computed in log space, without gradient.

    A modality whose *other* modalities already predict the true class confidently gets a small weight; one whose
    partners fail gets a weight near 1. ω ∈ (0, 1].

    Args:
        p_true: ``[B, M]`` (or ``[B, M, L]`` for multi-label) probabilities that each head gives the true class.
        beta: the exponent β (default 0.5).

    Returns:
        ω with the shape of ``p_true``. With a single modality ω ≡ 1.
    """
    p = p_true.detach()
    m = p.shape[1]
    if m == 1:
        return torch.ones_like(p)
    log_miss = torch.log((1.0 - p).clamp_min(_CLAMP))  # log(1 - p_n)
    others = log_miss.sum(dim=1, keepdim=True) - log_miss  # Σ_{n≠m} log(1 - p_n)
    return torch.exp(others * (beta / (m - 1)))


class ModalityHeads(nn.Module):
    """One small MLP head g_m per modality over the completed embedding ṽ_m."""

    def __init__(self, num_modalities: int, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out)) for _ in range(num_modalities))

    def forward(self, completed: torch.Tensor) -> torch.Tensor:
        """``[B, M, d]`` -> logits ``[B, M, K]``."""
        return torch.stack([head(completed[:, m]) for m, head in enumerate(self.heads)], dim=1)
