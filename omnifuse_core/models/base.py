"""The interface every fusion model implements, and the shared encoder stage.

A fusion model owns its encoders (``self.encoders[name]``), its loss (``training_loss``) and its label-free
prediction (``predict_proba``). Parameter names start with ``encoders.<modality>.`` for modality encoders; everything
else is shared. The federation groups parameters with :meth:`FusionModel.param_group`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..batch import ModalitySpec, TaskSpec
from ..config import Config
from ..encoders import build_encoder
from ..tasks import build_task


class FusionModel(nn.Module):
    """Base class: encoders + task; subclasses add fusion, heads and loss.

    Args:
        specs: modality specs in configured order (index m).
        task: the task spec (kind, output width, survival bin edges).
        cfg: the run configuration.
    """

    def __init__(self, *, specs: Sequence[ModalitySpec], task: TaskSpec, cfg: Config) -> None:
        super().__init__()
        self.specs = list(specs)
        self.names = [s.name for s in self.specs]
        self.task_spec = task
        self.task = build_task(task, cfg.survival_loss)
        self.cfg = cfg
        self.encoders = nn.ModuleDict({s.name: build_encoder(s, cfg) for s in self.specs})

    @property
    def num_modalities(self) -> int:
        return len(self.specs)

    # --- encoders ------------------------------------------------------------------------------------------
    def encode(self, inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, M, d]``; where ``keep[b, m]`` is False the encoder sees the zero input (v_m^miss).

        The raw input of a dropped modality is multiplied away *before* the encoder, so it can never influence
        the output (property-tested).
        """
        out = []
        for m, name in enumerate(self.names):
            x = inputs[name]
            mask = keep[:, m].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            out.append(self.encoders[name](x * mask))
        return torch.stack(out, dim=1)

    # --- the interface -------------------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Joint logits ``[B, K]`` (label-free)."""
        raise NotImplementedError

    def predict_proba(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Label-free probabilities (see ``Task.to_prob``); the default is the joint output."""
        return self.task.to_prob(self(inputs, present))

    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss for one batch (a mean over samples of per-sample terms) and its named parts."""
        logits = self(batch["inputs"], batch["present"])
        loss = self.task.loss(logits, batch["labels"]).mean()
        return loss, {"loss": float(loss.detach())}

    def on_epoch_start(self, train_batch_iter, device: torch.device, epoch: int, trained: bool = True) -> dict:
        """Hook run before each local epoch (OmniFuse mines the lazy combination here). Returns trace entries."""
        return {}

    def param_group(self, param_name: str) -> str:
        """``enc:<modality>`` for a modality encoder's parameters, ``shared`` otherwise."""
        parts = param_name.split(".")
        if len(parts) > 1 and parts[0] == "encoders":
            return f"enc:{parts[1]}"
        return "shared"
