"""DWFuse: dynamic weighting of per-modality heads (DESIGN §4.3, Eqs. 9–14)."""
from __future__ import annotations

import torch
from torch import nn

_CLAMP = 1e-6


def dwfuse_weights(p_true: torch.Tensor, beta: float, floor: float = 0.0) -> torch.Tensor:
    """ω_m = [Π_{n≠m} (1 − p_n)]^{β/(M−1)}, computed in log space, without gradient.

    A modality whose *other* modalities already predict the true class confidently gets a small weight; one whose
    partners fail gets a weight near 1. ω ∈ (0, 1].

    Args:
        p_true: ``[B, M]`` (or ``[B, M, L]`` for multi-label) probabilities that each head gives the true class.
        beta: the exponent β (default 0.5).
        floor: κ ∈ [0, 1): the weight returned is κ + (1 − κ)·ω (``dwfuse-floor``; 0 = the paper's ω). Where one
            modality already predicts well, the paper's ω drives the others' weights to 0 and their encoders stop
            learning; the floor keeps a plain unimodal loss beside ω·loss (as ReconBoost keeps).

    Returns:
        ω with the shape of ``p_true``. With a single modality ω ≡ 1.
    """
    p = p_true.detach()
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"config key 'dwfuse-floor' must lie in [0, 1), got {floor}")
    m = p.shape[1]
    if m == 1:
        return torch.ones_like(p)
    log_miss = torch.log((1.0 - p).clamp_min(_CLAMP))  # log(1 - p_n)
    others = log_miss.sum(dim=1, keepdim=True) - log_miss  # Σ_{n≠m} log(1 - p_n)
    omega = torch.exp(others * (beta / (m - 1)))
    return omega if floor == 0.0 else floor + (1.0 - floor) * omega


class ModalityHeads(nn.Module):
    """One small MLP head g_m per modality over the completed embedding ṽ_m."""

    def __init__(self, num_modalities: int, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out)) for _ in range(num_modalities))

    def forward(self, completed: torch.Tensor) -> torch.Tensor:
        """``[B, M, d]`` -> logits ``[B, M, K]``."""
        return torch.stack([head(completed[:, m]) for m, head in enumerate(self.heads)], dim=1)
