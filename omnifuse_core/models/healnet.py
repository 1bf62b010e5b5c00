"""HEALNet-style hybrid early fusion on the shared encoders (DESIGN §4.6; Hemker et al., HEALNet).

A learned latent array ``[L, d]`` (``cfg.healnet_latents`` x ``cfg.embed_dim``) is refined by ``cfg.healnet_layers``
layers. In each layer, every modality m updates the latents with its own cross-attention (query = latents,
key/value = modality m's tokens), then one latent self-attention block (attention + feed-forward) mixes them.
A missing modality is skipped **per sample**: ``x <- where(present_m, x + CrossAttn_m(x, ctx_m), x)``, which equals
``x + present_m * CrossAttn_m(x, ctx_m)`` for finite contexts and stays exact even if a context were non-finite.
Head: mean-pool over latents -> LayerNorm -> Linear.

Modality tokens (kept cheap, and built from the shared encoders' own layers so their parameters stay in the
``encoders.<m>`` groups):

- sequence encoder (GRU/LSTM): the per-step hidden states passed through the encoder's output projection,
  ``[B, T, d]`` (the last token is exactly the encoder's embedding);
- ``small_cnn`` image encoder: the final feature map's spatial positions through the encoder's projection,
  ``[B, h*w, d]`` (their mean is exactly the encoder's embedding); no positional encoding;
- every other encoder (tabular/genomics MLP, text projection, ResNet): the embedding as a single token
  ``[B, 1, d]``; with one key the attention reduces to a learned projection of that embedding.

A missing modality's raw input is multiplied by zero before its encoder (as ``FusionModel.encode`` does), and its
cross-attention output is discarded per sample. Attention is ``opacus.layers.DPMultiheadAttention`` when
``cfg.dp`` or ``cfg.dp_compatible`` (per-sample gradients), ``torch.nn.MultiheadAttention`` otherwise.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from ..config import ConfigError
from ..encoders import SequenceEncoder, SmallCNN
from . import FUSIONS
from .base import FusionModel

log = logging.getLogger(__name__)


def make_attention(dim: int, heads: int, dp: bool) -> nn.Module:
    """Batch-first multi-head attention; the Opacus-compatible layer when ``dp``.

    Args:
        dim: model width (query, key and value width).
        heads: number of heads; must divide ``dim``.
        dp: use ``opacus.layers.DPMultiheadAttention``.
    """
    if dp:
        from opacus.layers import DPMultiheadAttention
        return DPMultiheadAttention(dim, heads, batch_first=True)
    return nn.MultiheadAttention(dim, heads, batch_first=True)


def modality_tokens(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens ``[B, T, d]`` of one modality from its shared encoder (see the module docstring).

    Args:
        encoder: the modality's encoder (``FusionModel.encoders[name]``).
        x: the (already masked) raw input ``[B, *shape]``.
    """
    if isinstance(encoder, SequenceEncoder):
        out, _ = encoder.rnn(x)
        return encoder.proj(out)
    if isinstance(encoder, SmallCNN) and isinstance(encoder.features[-2], nn.AdaptiveAvgPool2d) \
            and isinstance(encoder.features[-1], nn.Flatten):
        fmap = encoder.features[:-2](x)  # [B, C, h, w], before global pooling
        return encoder.proj(fmap.flatten(2).transpose(1, 2))
    return encoder(x)[:, None, :]


class CrossAttention(nn.Module):
    """Pre-norm cross-attention from the latents to one modality's tokens; returns the update (no residual).

    Args:
        dim: width d.
        heads: attention heads.
        dp: Opacus-compatible attention.
    """

    def __init__(self, dim: int, heads: int, dp: bool) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = make_attention(dim, heads, dp)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(ctx)
        return self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]


class LatentSelfBlock(nn.Module):
    """Pre-norm latent self-attention followed by a feed-forward layer, both residual.

    Args:
        dim: width d.
        heads: attention heads.
        dp: Opacus-compatible attention.
    """

    def __init__(self, dim: int, heads: int, dp: bool) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = make_attention(dim, heads, dp)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.norm_ff(x))


class HybridLayer(nn.Module):
    """One HEALNet layer: a cross-attention per modality (skipped per sample when missing), then self-attention.

    Args:
        names: modality names in configured order.
        dim: width d.
        heads: attention heads.
        dp: Opacus-compatible attention.
    """

    def __init__(self, names: Sequence[str], dim: int, heads: int, dp: bool) -> None:
        super().__init__()
        self.names = list(names)
        self.cross = nn.ModuleDict({n: CrossAttention(dim, heads, dp) for n in self.names})
        self.latent_block = LatentSelfBlock(dim, heads, dp)

    def forward(self, x: torch.Tensor, contexts: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        for m, name in enumerate(self.names):
            updated = x + self.cross[name](x, contexts[m])
            x = torch.where(present[:, m, None, None], updated, x)
        return self.latent_block(x)


@FUSIONS.register("healnet")
class HEALNetFusion(FusionModel):
    """HEALNet-style hybrid early fusion (see the module docstring).

    Cross-attention ``layers.<i>.cross.<m>`` is trained only by samples that have modality m, so it is grouped
    with that modality's encoder (``enc:<m>``) for aggregation; the latents, self-attention and head are shared.
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        cfg = self.cfg
        dim, heads = cfg.embed_dim, cfg.healnet_heads
        if heads < 1 or dim % heads:
            raise ConfigError(f"config key 'healnet-heads' = {heads} must be >= 1 and divide 'embed-dim' = {dim}; "
                              "change one of them")
        if cfg.healnet_latents < 1 or cfg.healnet_layers < 1:
            raise ConfigError(f"config keys 'healnet-latents' = {cfg.healnet_latents} and 'healnet-layers' = "
                              f"{cfg.healnet_layers} must both be >= 1")
        dp = cfg.dp or cfg.dp_compatible
        self.num_latents = cfg.healnet_latents
        # The latent array is the weight of a bias-free Linear applied to a constant 1: an ordinary Linear layer
        # for Opacus' per-sample gradients (a bare nn.Parameter on this module would need functorch).
        self.latents = nn.Linear(1, self.num_latents * dim, bias=False)
        nn.init.normal_(self.latents.weight, std=0.02)
        self.layers = nn.ModuleList([HybridLayer(self.names, dim, heads, dp) for _ in range(cfg.healnet_layers)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.task_spec.num_outputs))

    def contexts(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Per-modality tokens ``[B, T_m, d]``; a missing modality's encoder sees the zero input."""
        out = []
        for m, name in enumerate(self.names):
            x = inputs[name]
            mask = present[:, m].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            out.append(modality_tokens(self.encoders[name], x * mask))
        return out

    def fuse(self, contexts: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` from per-modality tokens; modality m's tokens are ignored where ``present[:, m]``
        is False.

        Args:
            contexts: M tensors ``[B, T_m, d]``.
            present: bool ``[B, M]``.
        """
        present = present.bool()
        b = present.shape[0]
        ones = torch.ones(b, 1, dtype=contexts[0].dtype, device=contexts[0].device)
        x = self.latents(ones).view(b, self.num_latents, -1)
        for layer in self.layers:
            x = layer(x, contexts, present)
        return self.head(x.mean(dim=1))

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        present = present.bool()
        return self.fuse(self.contexts(inputs, present), present)

    def param_group(self, param_name: str) -> str:
        parts = param_name.split(".")
        if len(parts) > 3 and parts[0] == "layers" and parts[2] == "cross":
            return f"enc:{parts[3]}"
        return super().param_group(param_name)
