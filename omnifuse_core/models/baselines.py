"""Baseline fusions on the shared encoders (DESIGN §4.6): concat, sum, late, ModDrop and SE-gate.

Every model here embeds each modality with ``FusionModel.encode(inputs, keep)``, which feeds a dropped or missing
modality's encoder the zero input (v_m^miss), so a missing modality's raw input never reaches the prediction.
All layers are per-sample (Linear/ReLU/LayerNorm) and supported by Opacus' per-sample gradients.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from . import FUSIONS
from ..interaction import JointHead
from .base import FusionModel

log = logging.getLogger(__name__)
_EPS = 1e-6


def mlp_head(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """Two-layer MLP head ``n_in -> hidden -> n_out`` (ReLU).

    Args:
        n_in: input width.
        hidden: hidden width (``cfg.head_hidden``).
        n_out: output width (``task.num_outputs``).
    """
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def present_weights(present: torch.Tensor) -> torch.Tensor:
    """Float ``[B, M]`` averaging weights: 1 where present; a row with nothing present weighs every modality 1.

    Args:
        present: bool ``[B, M]``.
    """
    w = present.float()
    empty = w.sum(dim=1, keepdim=True) == 0
    return torch.where(empty, torch.ones_like(w), w)


def prob_to_logits(prob: torch.Tensor, kind: str) -> torch.Tensor:
    """Invert ``Task.to_prob`` so a model that averages probabilities can still return logits ``[B, K]``.

    Multiclass: ``log p`` (softmax of it gives back p). Binary, multi-label and survival (per-bin hazards):
    ``logit(p)`` with p clamped to ``[1e-6, 1 - 1e-6]``. A binary ``[B]`` probability becomes ``[B, 1]``.

    Args:
        prob: probabilities as produced by ``Task.to_prob``.
        kind: task kind.
    """
    if prob.dim() == 1:
        prob = prob[:, None]
    if kind == "multiclass":
        return torch.log(prob.clamp_min(_EPS))
    return torch.logit(prob.clamp(_EPS, 1 - _EPS))


class _HeadFusion(FusionModel):
    """Shared skeleton: embeddings ``[B, M, d]`` (missing -> zero input) -> ``fuse`` -> MLP head -> logits."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.head = mlp_head(self.fused_width(), self.cfg.head_hidden, self.task_spec.num_outputs)

    def fused_width(self) -> int:
        """Width of the fused vector fed to the head."""
        return self.cfg.embed_dim

    def keep_mask(self, present: torch.Tensor) -> torch.Tensor:
        """Which modalities the encoders see this call (all present ones; ModDrop drops some when training)."""
        return present

    def fuse(self, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        keep = self.keep_mask(present.bool())
        return self.head(self.fuse(self.encode(inputs, keep), keep))


@FUSIONS.register("concat")
class ConcatFusion(_HeadFusion):
    """Concatenation of the M embeddings (a missing modality contributes e_m(0)) -> joint head: an MLP over the
    concatenation plus, with ``joint-head: bilinear``, low-rank products of every modality pair
    (:mod:`omnifuse_core.interaction`)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        cfg = self.cfg
        self.head = JointHead(base_dim=self.fused_width(), num_modalities=self.num_modalities, dim=cfg.embed_dim,
                              hidden=cfg.head_hidden, out=self.task_spec.num_outputs, kind=cfg.joint_head,
                              rank=cfg.interaction_rank)
        # auxiliary unimodal heads (unimodal-loss > 0): each encoder also learns from its own linear read-out, so a
        # weak modality's encoder is trained even where a strong modality already explains the label
        self.aux_heads = nn.ModuleDict({n: nn.Linear(cfg.embed_dim, self.task_spec.num_outputs) for n in self.names}) \
            if cfg.unimodal_loss > 0 else None

    def fused_width(self):
        return self.num_modalities * self.cfg.embed_dim

    def fuse(self, v, keep):
        return v.flatten(1)

    def forward(self, inputs, present):
        v = self.encode(inputs, present.bool())
        return self.head(v.flatten(1), v)

    def training_loss(self, batch):
        present = batch["present"].bool()
        v = self.encode(batch["inputs"], present)
        joint = self.task.loss(self.head(v.flatten(1), v), batch["labels"])
        parts = {"joint": joint}
        if self.aux_heads is not None:
            parts["unimodal"] = unimodal_loss(self.task, self.aux_heads.values(), v, present, batch["labels"])
        total = joint + self.cfg.unimodal_loss * parts.get("unimodal", torch.zeros_like(joint))
        loss = total.mean()
        logged = {f"loss_{k}": float(t.detach().mean()) for k, t in parts.items()}
        logged["loss"] = float(loss.detach())
        return loss, logged

    def param_group(self, param_name):
        parts = param_name.split(".")
        if len(parts) > 1 and parts[0] == "aux_heads":  # trained only by patients who have that modality
            return f"enc:{parts[1]}"
        return super().param_group(param_name)


def unimodal_loss(task, heads, v: torch.Tensor, present: torch.Tensor, labels) -> torch.Tensor:
    """Per-sample mean over the PRESENT modalities of each unimodal head's task loss (0 with nothing present).

    Args:
        task: the task (``elementwise_loss``-free: its per-sample ``loss``).
        heads: one head per modality, in modality order.
        v: embeddings ``[B, M, d]``.
        present: bool ``[B, M]``.
        labels: the batch's labels.
    """
    per_mod = torch.stack([task.loss(head(v[:, m]), labels) for m, head in enumerate(heads)], dim=1)  # [B, M]
    w = present.to(per_mod.dtype)
    return (per_mod * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


@FUSIONS.register("sum")
class SumFusion(_HeadFusion):
    """Sum of the M embeddings (a missing modality contributes e_m(0)) -> MLP head."""

    def fuse(self, v, keep):
        return v.sum(dim=1)


def moddrop_mask(present: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each present modality with probability ``prob``, keeping at least one present modality per sample.

    A sample whose draws drop all its present modalities keeps one of them chosen uniformly at random. Samples
    with nothing present stay all-False. Draws are per sample, so samples stay independent.

    Args:
        present: bool ``[B, M]``.
        prob: drop probability in ``[0, 1]`` (``cfg.moddrop_prob``).
        generator: optional torch generator (tests); the global RNG otherwise.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"config key 'moddrop-prob' must lie in [0, 1], got {prob}")
    u = torch.rand(present.shape, generator=generator, device=present.device)
    keep = present & (u >= prob)
    lost_all = present.any(dim=1) & ~keep.any(dim=1)
    if lost_all.any():
        # Random present modality: argmax of fresh noise restricted to present slots.
        r = torch.rand(present.shape, generator=generator, device=present.device).masked_fill(~present, -1.0)
        rescue = torch.zeros_like(present).scatter(1, r.argmax(dim=1, keepdim=True), True)
        keep = keep | (rescue & lost_all[:, None])
    return keep


@FUSIONS.register("moddrop")
class ModDropFusion(_HeadFusion):
    """ModDrop: in training, drop each present modality with ``cfg.moddrop_prob`` (at least one kept); the fused
    vector is the mean of the kept modalities' embeddings. A sample with nothing present averages all M
    zero-input embeddings. No dropping in eval mode."""

    def keep_mask(self, present):
        if self.training and self.cfg.moddrop_prob > 0:
            return moddrop_mask(present, self.cfg.moddrop_prob)
        return present

    def fuse(self, v, keep):
        w = present_weights(keep)
        return (v * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True)


@FUSIONS.register("se_gate")
class SEGateFusion(_HeadFusion):
    """Squeeze-and-excitation gate over modalities: s_m = mean_d(v_m), w = σ(W2·ReLU(W1·s)), h = concat(w_m·v_m).

    The gate's hidden width is ``max(4, 2·M)`` (M is tiny, so the usual SE reduction would leave < 1 unit).
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        m = self.num_modalities
        hidden = max(4, 2 * m)
        self.gate = nn.Sequential(nn.Linear(m, hidden), nn.ReLU(), nn.Linear(hidden, m), nn.Sigmoid())

    def fused_width(self):
        return self.num_modalities * self.cfg.embed_dim

    def gate_weights(self, v: torch.Tensor) -> torch.Tensor:
        """Gate ``w`` ``[B, M]`` in (0, 1) from embeddings ``[B, M, d]``."""
        return self.gate(v.mean(dim=2))

    def fuse(self, v, keep):
        return (self.gate_weights(v)[..., None] * v).flatten(1)


@FUSIONS.register("late")
class LateFusion(FusionModel):
    """Late fusion: one unimodal head per modality; the prediction averages the heads' probabilities over the
    sample's PRESENT modalities (over all M when none is present).

    ``forward`` returns ``prob_to_logits`` of that average (log-probabilities for multi-class, logit of the averaged
    per-bin hazards for survival, logit otherwise); ``predict_proba`` returns the average itself. The loss is, per
    sample, the mean over present modalities of each head's task loss (a sample with nothing present: over all
    heads, matching its prediction). Head ``m`` is trained by the samples that have modality m (and by any with
    nothing present), so its parameters are grouped with that modality's encoder (``enc:<m>``) for aggregation.
    """

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.heads = nn.ModuleDict({name: mlp_head(self.cfg.embed_dim, self.cfg.head_hidden,
                                                   self.task_spec.num_outputs) for name in self.names})

    def head_logits(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Per-modality logits, each ``[B, K]`` (missing modalities' heads see e_m(0))."""
        v = self.encode(inputs, present.bool())
        return [self.heads[name](v[:, m]) for m, name in enumerate(self.names)]

    def predict_proba(self, inputs, present):
        probs = torch.stack([self.task.to_prob(z) for z in self.head_logits(inputs, present)], dim=1)  # [B, M, ...]
        w = present_weights(present.bool())
        w = w.view(*w.shape, *([1] * (probs.dim() - 2)))
        return (probs * w).sum(dim=1) / w.sum(dim=1)

    def forward(self, inputs, present):
        return prob_to_logits(self.predict_proba(inputs, present), self.task.kind)

    def training_loss(self, batch):
        present = batch["present"].bool()
        logits = self.head_logits(batch["inputs"], present)
        per_mod = torch.stack([self.task.loss(z, batch["labels"]) for z in logits], dim=1)  # [B, M]
        w = present_weights(present)
        loss = ((per_mod * w).sum(dim=1) / w.sum(dim=1)).mean()
        return loss, {"loss": float(loss.detach())}

    def param_group(self, param_name):
        parts = param_name.split(".")
        if len(parts) > 1 and parts[0] == "heads":
            return f"enc:{parts[1]}"
        return super().param_group(param_name)
