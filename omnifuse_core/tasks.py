"""Prediction tasks: per-sample losses, true-class probabilities (for DWFuse), and label-free scores.

Every task maps logits ``[B, K]`` and labels to *elementwise* terms ``[B, K']`` (K' = L for multi-label, 1 otherwise),
so DWFuse weights ω can be per label for multi-label and per sample otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batch import TaskSpec
from .registry import Registry

TASKS: Registry["Task"] = Registry("task")
_EPS = 1e-7


class Task:
    """Base class; ``spec`` carries output width, label names and (survival) bin edges."""

    kind = ""
    headline = "auroc"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def elementwise_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # [B, K']
        raise NotImplementedError

    def p_true(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # [B, K'] in (0, 1)
        raise NotImplementedError

    def to_prob(self, logits: torch.Tensor) -> torch.Tensor:
        """Label-free probabilities that can be averaged across heads."""
        raise NotImplementedError

    def score(self, prob: torch.Tensor) -> torch.Tensor:
        """What metrics and users see: P(y=1) [B], class probs [B, C], label probs [B, L], or risk [B]."""
        return prob

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # per-sample [B]
        return self.elementwise_loss(logits, labels).mean(dim=1)


@TASKS.register("binary")
class BinaryTask(Task):
    kind = "binary"

    def elementwise_loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")[:, None]

    def p_true(self, logits, labels):
        p = torch.sigmoid(logits[:, 0])
        y = labels.float()
        return (y * p + (1 - y) * (1 - p))[:, None]

    def to_prob(self, logits):
        return torch.sigmoid(logits[:, 0])


@TASKS.register("multiclass")
class MulticlassTask(Task):
    kind = "multiclass"

    def elementwise_loss(self, logits, labels):
        return F.cross_entropy(logits, labels.long(), reduction="none")[:, None]

    def p_true(self, logits, labels):
        return torch.softmax(logits, dim=1).gather(1, labels.long()[:, None])

    def to_prob(self, logits):
        return torch.softmax(logits, dim=1)


@TASKS.register("multilabel")
class MultilabelTask(Task):
    kind = "multilabel"

    def elementwise_loss(self, logits, labels):
        return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")

    def p_true(self, logits, labels):
        p = torch.sigmoid(logits)
        y = labels.float()
        return y * p + (1 - y) * (1 - p)

    def to_prob(self, logits):
        return torch.sigmoid(logits)


@TASKS.register("survival")
class SurvivalTask(Task):
    """Discrete-time hazard model (HEALNet/Porpoise NLL with α = 0.4). Labels ``[B, 2]`` = (time, event)."""

    kind = "survival"
    headline = "c_index"
    alpha = 0.4

    def bins(self, labels: torch.Tensor) -> torch.Tensor:
        edges = torch.tensor(self.spec.bin_edges, dtype=labels.dtype, device=labels.device)
        return torch.bucketize(labels[:, 0].contiguous(), edges, right=True).clamp(max=self.spec.num_outputs - 1)

    def _terms(self, logits, labels):
        hazards = torch.sigmoid(logits).clamp(_EPS, 1 - _EPS)
        surv = torch.cumprod(1 - hazards, dim=1)
        s_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)
        y = self.bins(labels)[:, None]
        event = labels[:, 1:2].float()
        s_before = s_pad.gather(1, y).clamp_min(_EPS)  # S(y-1)
        s_at = s_pad.gather(1, y + 1).clamp_min(_EPS)  # S(y)
        h_at = hazards.gather(1, y)
        return event, s_before, s_at, h_at

    def elementwise_loss(self, logits, labels):
        event, s_before, s_at, h_at = self._terms(logits, labels)
        uncensored = -event * (torch.log(s_before) + torch.log(h_at))
        censored = -(1 - event) * torch.log(s_at)
        return (1 - self.alpha) * (censored + uncensored) + self.alpha * uncensored

    def p_true(self, logits, labels):
        event, s_before, s_at, h_at = self._terms(logits, labels)
        return event * s_before * h_at + (1 - event) * s_at

    def to_prob(self, logits):
        return torch.sigmoid(logits)  # hazards [B, bins]

    def score(self, prob):
        return -torch.cumprod(1 - prob, dim=1).sum(dim=1)  # risk: higher = earlier event


def cox_partial_nll(eta: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Per-patient ``log Σ_{j: t_j ≥ t_i} exp(η_j) − η_i`` (Breslow ties) over the given patients; multiply by the
    event indicator for the partial-likelihood terms (censored patients contribute only through risk sets)."""
    at_risk = time[None, :] >= time[:, None]  # [i, j]: j is at risk at t_i
    log_denom = torch.logsumexp(eta[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    return log_denom - eta


class CoxSurvivalTask(SurvivalTask):
    """Cox partial likelihood on the model's risk score, with risk sets within the batch (``survival-loss: cox``).

    The risk score η is the discrete-time model's own ``score`` (minus the expected number of survived bins), so
    predictions, the C-index and everything downstream are unchanged; only the training loss differs. For patient
    i with an event, the term is ``log Σ_{j in R_i} exp(η_j) − η_i`` with ``R_i = {j in the batch: t_j ≥ t_i}``
    (Breslow ties); censored patients add 0 but sit in the others' risk sets. The batch mean is the loss, as in
    DeepSurv-style mini-batch training; in a federation a risk set never leaves a site's batch. Terms couple the
    patients of a batch, so DP-SGD's per-sample clipping would not bound one patient's influence: ``dp: true`` with
    ``survival-loss: cox`` is refused (config validation).
    """

    def _cox(self, logits, labels):
        event = labels[:, 1].float()
        return event, cox_partial_nll(self.score(self.to_prob(logits)), labels[:, 0], event)

    def elementwise_loss(self, logits, labels):
        event, nll = self._cox(logits, labels)
        return (event * nll)[:, None]

    def p_true(self, logits, labels):
        """``exp(η_i) / Σ_{R_i} exp(η_j)``: the partial-likelihood share of i in its risk set, in (0, 1]."""
        _, nll = self._cox(logits, labels)
        return torch.exp(-nll).clamp(_EPS, 1.0)[:, None]


SURVIVAL_LOSSES = {"nll": SurvivalTask, "cox": CoxSurvivalTask}


def build_task(spec: TaskSpec, survival_loss: str = "nll") -> Task:
    """The task of ``spec``; for survival, ``survival_loss`` picks the discrete-time NLL or the Cox loss."""
    if spec.kind == "survival":
        if survival_loss not in SURVIVAL_LOSSES:
            raise ValueError(f"survival-loss {survival_loss!r} unknown; use one of {', '.join(SURVIVAL_LOSSES)}")
        return SURVIVAL_LOSSES[survival_loss](spec)
    return TASKS.get(spec.kind)(spec)
