"""Encoders for MEDS event sequences (``KIND_EVENTS`` input ``[B, L, 4]``, see ``omnifuse_core.data.events``).

Every event is embedded as ``E_code[c] + value · E_value[c] + E_time[bucket]`` (a per-code value direction, so a
high heart rate and a high pH move the embedding differently). Padding (code 0, bucket 0) embeds to exactly zero,
so a patient without EHR (all padding, the modality's zero input) gets a constant embedding e(0), as for every
encoder. ``nn.Embedding`` has Opacus per-sample gradients; ``event_gru`` swaps in ``DPGRU`` under DP.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .batch import KIND_EVENTS, ModalitySpec
from .config import Config
from .data.events import N_TIME_BUCKETS, FIRST_CODE
from .encoders import ENCODERS


class _EventEmbedding(nn.Module):
    def __init__(self, cfg: Config, dim: int) -> None:
        super().__init__()
        vocab = int(cfg.ehr_vocab_size) + FIRST_CODE
        self.code = nn.Embedding(vocab, dim, padding_idx=0)
        self.value = nn.Embedding(vocab, dim, padding_idx=0)
        self.time = nn.Embedding(N_TIME_BUCKETS, dim, padding_idx=0)
        nn.init.normal_(self.value.weight, std=0.1)
        with torch.no_grad():
            self.value.weight[0].zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, 4]`` -> event embeddings ``[B, L, dim]`` and the real-event mask ``[B, L]``."""
        code = x[..., 0].round().long().clamp(0, self.code.num_embeddings - 1)
        bucket = x[..., 3].round().long().clamp(0, N_TIME_BUCKETS - 1)
        e = self.code(code) + x[..., 1:2] * self.value(code) + self.time(bucket)
        return e, code > 0


def _check(spec: ModalitySpec, name: str) -> None:
    if spec.kind != KIND_EVENTS:
        raise ValueError(f"modality '{spec.name}': encoder '{name}' needs MEDS events (site.yaml type ehr-meds), got "
                         f"kind {spec.kind}")


@ENCODERS.register("bag_of_codes")
class BagOfCodesEncoder(nn.Module):
    """Mean of the event embeddings plus log(1 + number of events), then a 2-layer MLP to ``embed_dim``."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        _check(spec, "bag_of_codes")
        hidden = cfg.encoder_hidden
        self.embed = _EventEmbedding(cfg, hidden)
        self.norm_len = math.log1p(spec.shape[0])
        self.mlp = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.ReLU(), nn.Linear(hidden, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, mask = self.embed(x)
        n = mask.sum(dim=1, keepdim=True).to(e.dtype)
        mean = (e * mask[..., None]).sum(dim=1) / n.clamp(min=1.0)
        return self.mlp(torch.cat([mean, torch.log1p(n) / self.norm_len], dim=1))


@ENCODERS.register("event_gru")
class EventGRUEncoder(nn.Module):
    """A 1-layer GRU over the event embeddings in time order (right-aligned: the last step is the latest event);
    its last output and the bag-of-codes mean are projected to ``embed_dim``."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, dp: bool = False, **_: object) -> None:
        super().__init__()
        _check(spec, "event_gru")
        hidden = cfg.encoder_hidden
        self.embed = _EventEmbedding(cfg, hidden)
        if dp:
            from opacus.layers import DPGRU
            self.rnn = DPGRU(hidden, hidden, num_layers=1, batch_first=True)
        else:
            self.rnn = nn.GRU(hidden, hidden, num_layers=1, batch_first=True)
        self.proj = nn.Linear(2 * hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, mask = self.embed(x)
        out, _ = self.rnn(e)
        mean = (e * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(e.dtype)
        return self.proj(torch.cat([out[:, -1], mean], dim=1))


RECENT_BUCKET = 5  # time buckets 2..5: events in the last 15 hours before the prediction time
_STATS = 5


@ENCODERS.register("code_stats")
class CodeStatsEncoder(nn.Module):
    """Per-code summaries of the events (the tabularization MEDS-Tab uses), read by a 2-layer MLP.

    For every vocabulary code: ``log(1 + count)``, its share of the patient's events, the mean standardized value,
    the mean over the last 15 hours (time buckets 2..5) and the mean before them (0 where no such value); plus
    ``log(1 + number of events)``. Order-free within a window, so a code's value level and its recent change are
    read directly rather than learned from embeddings. Only ``nn.Linear`` holds weights (Opacus-ready); a patient
    without EHR (all padding) has all-zero summaries, one constant embedding.
    """

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        _check(spec, "code_stats")
        self.vocab = int(cfg.ehr_vocab_size) + FIRST_CODE
        self.norm_len = math.log1p(spec.shape[0])
        self.mlp = nn.Sequential(nn.Linear(self.vocab * _STATS + 1, cfg.encoder_hidden), nn.ReLU(),
                                 nn.Linear(cfg.encoder_hidden, cfg.embed_dim))

    def summaries(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, 4]`` -> per-code summaries ``[B, vocab, 5]`` (row 0, padding, is zero) and the event count."""
        code = x[..., 0].round().long().clamp(0, self.vocab - 1)
        z, has, bucket = x[..., 1], x[..., 2], x[..., 3]
        real = (code > 0).to(x.dtype)
        recent = real * ((bucket >= 2) & (bucket <= RECENT_BUCKET)).to(x.dtype)
        feats = torch.stack([real, has * real, z * has * real, has * recent, z * has * recent], dim=-1)
        acc = x.new_zeros(x.shape[0], self.vocab, _STATS).scatter_add(1, code[..., None].expand(-1, -1, _STATS),
                                                                       feats)
        n, nv, sv, nr, sr = acc.unbind(-1)
        total = n.sum(dim=1, keepdim=True)
        stats = torch.stack([torch.log1p(n), n / total.clamp(min=1.0), sv / nv.clamp(min=1.0),
                             sr / nr.clamp(min=1.0), (sv - sr) / (nv - nr).clamp(min=1.0)], dim=-1)
        return stats, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats, total = self.summaries(x)
        return self.mlp(torch.cat([stats.flatten(1), torch.log1p(total) / self.norm_len], dim=1))
