"""OmniFuse (Wu et al. 2025): encoders -> CRA imputer (forward + backward) -> DWFuse heads + joint head, with TLA.

Registered as ``omnifuse`` (the full method) and ``dwfuse`` (DWFuse only: no imputation losses, no TLA).
The objective (DESIGN §4.5) is a mean over samples of the per-sample sum::

    L = L_forward + λ1·L_backward + λ2·(L_enc + α·L_rp) + λ3·L_TLA

Every term is switchable (``use-forward``, ``use-backward``, ``use-dwfuse``, ``use-tla``) for the paper's ablations.
Choices where the paper is silent (all in docs/method.md): imputation targets are stop-gradient; simulated
missingness hides a random non-empty proper subset of a sample's present modalities (size uniform, then subset
uniform) with probability ``hide-prob``, and that hidden view feeds the imputation losses only; ``L_TLA`` is averaged over the whole batch (0 for samples without δ_lazy)
so that every term is a per-sample sum, as DP-SGD requires.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import nn

from ..fusion import ModalityHeads, dwfuse_weights
from ..interaction import JointHead
from ..imputer import CascadeResidualAutoencoder, masked_slot_mse
from ..tla import activation_loss, all_combinations, combo_mask, combo_name, mean_distances, select_lazy
from . import FUSIONS
from .base import FusionModel

log = logging.getLogger(__name__)
PREDICTION_MODES = ("joint", "heads", "both")


@FUSIONS.register("omnifuse")
class OmniFuse(FusionModel):
    """The full OmniFuse model. See the module docstring for the objective."""

    variant = "omnifuse"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        cfg = self.cfg
        full = self.variant == "omnifuse"
        self.impute = full and cfg.use_forward
        self.use_backward = full and cfg.use_backward
        self.use_tla = full and cfg.use_tla
        dim = self.num_modalities * cfg.embed_dim
        # Without imputation losses there is no imputer: the joint head reads the concatenated embeddings (the
        # paper's Table 4 rows a-c are concat + DWFuse / TLA, not an untrained CRA's latents).
        self.forward_cra = CascadeResidualAutoencoder(dim, cfg.cra_blocks, cfg.cra_hidden_list) \
            if self.impute or self.use_backward else None
        self.backward_cra = CascadeResidualAutoencoder(dim, cfg.cra_blocks, cfg.cra_hidden_list) \
            if self.use_backward else None
        out = self.task_spec.num_outputs
        self.heads = ModalityHeads(self.num_modalities, cfg.embed_dim, cfg.head_hidden, out)
        joint_dim = self.forward_cra.latent_dim if self.forward_cra is not None else dim
        # joint-input: latents+embeddings also hands g_rp the completed embeddings beside the CRA latents
        self.joint_with_embeddings = self.forward_cra is not None and cfg.joint_input == "latents+embeddings"
        joint_dim += dim if self.joint_with_embeddings else 0
        # g_rp on the joint embedding, plus low-rank products of the completed embeddings' pairs
        # (joint-head: bilinear, omnifuse_core.interaction): the term an additive fusion cannot form
        self.joint_head = JointHead(base_dim=joint_dim, num_modalities=self.num_modalities, dim=cfg.embed_dim,
                                    hidden=cfg.head_hidden, out=out, kind=cfg.joint_head, rank=cfg.interaction_rank)
        self.lazy_combo: Optional[tuple[int, ...]] = None
        self.prediction_mode = cfg.prediction if cfg.prediction in PREDICTION_MODES else "joint"

    # --- building blocks -----------------------------------------------------------------------------------
    def zero_embeddings(self, inputs: dict[str, torch.Tensor], batch_size: int) -> torch.Tensor:
        """v^miss = e_m(0) for every slot, ``[B, M, d]`` (one zero sample encoded, then broadcast).

        Without DP the gradient flows into e_m(0) through every use. Under DP-SGD it is a constant of the step
        (computed without gradient): a per-sample gradient cannot attribute a shared constant's gradient to one
        patient, and running the encoders a second time per step would break Opacus' per-sample hooks.
        """
        one = {k: v[:1] for k, v in inputs.items()}
        keep = torch.zeros(1, self.num_modalities, dtype=torch.bool, device=_device(inputs))
        if self.cfg.dp:
            with torch.no_grad():
                return self.encode(one, keep).expand(batch_size, -1, -1)
        return self.encode(one, keep).expand(batch_size, -1, -1)

    def encode_with_zero(self, inputs: dict[str, torch.Tensor], present: torch.Tensor):
        """``(v_true, v_miss)``, both ``[B, M, d]``: the batch's embeddings and e_m(0) broadcast over the batch.

        Without DP the zero sample rides along as one extra row of the batch's encoder call (every encoder is
        per-sample: GroupNorm, no BatchNorm), which is the same e_m(0), with its gradient, for one encoder call
        per modality instead of two. Under DP it is :meth:`zero_embeddings` (a separate, gradient-free call).
        """
        b = present.shape[0]
        if self.cfg.dp:
            return self.encode(inputs, present), self.zero_embeddings(inputs, b)
        padded = {k: torch.cat([v, v.new_zeros((1, *v.shape[1:]))]) for k, v in inputs.items()}
        keep = torch.cat([present, present.new_zeros((1, present.shape[1]))])
        v = self.encode(padded, keep)
        return v[:b], v[b:].expand(b, -1, -1)

    def complete(self, v_true: torch.Tensor, v_miss: torch.Tensor, avail: torch.Tensor, need_output: bool = True):
        """Imputer input, forward output, completed embeddings ṽ and joint embedding for availability masks.

        ``avail`` is ``[B, M]`` or ``[B, P, M]`` (P masks evaluated in *one* imputer call, as DP-SGD requires);
        ``v_true`` / ``v_miss`` are ``[B, M, d]``.
        """
        stacked = avail.dim() == 3
        a = avail[..., None]
        vt, vm = (v_true[:, None], v_miss[:, None]) if stacked else (v_true, v_miss)
        v_in = torch.where(a, vt, vm)
        if self.forward_cra is None:
            return v_in, None, v_in, v_in.flatten(-2)
        v_fwd, joint = self.forward_cra(v_in.flatten(-2), need_output=need_output or self.impute)
        if v_fwd is None:
            return v_in, None, v_in, joint
        v_fwd = v_fwd.view_as(v_in)
        completed = torch.where(a, vt, v_fwd) if self.impute else v_in
        return v_in, v_fwd, completed, joint

    def sample_hidden(self, present: torch.Tensor) -> torch.Tensor:
        """Simulated missingness: a random non-empty proper subset of each eligible sample's present modalities."""
        n_present = present.sum(dim=1)
        eligible = (n_present >= 2) & (torch.rand(present.shape[0], device=present.device) < self.cfg.hide_prob)
        u = torch.rand(present.shape, device=present.device).masked_fill(~present, float("inf"))
        ranks = u.argsort(dim=1).argsort(dim=1)
        n_hide = (torch.rand(present.shape[0], device=present.device) * (n_present - 1).clamp_min(0)).floor() + 1
        return present & eligible[:, None] & (ranks < n_hide[:, None])

    def _joint_logits(self, joint: torch.Tensor, completed: torch.Tensor) -> torch.Tensor:
        """g_rp on the joint embedding (``[..., K·64]``; with ``joint-input: latents+embeddings`` also the completed
        embeddings ``[..., M, d]`` flattened) plus the pairwise products of ``completed``."""
        if self.joint_with_embeddings:
            joint = torch.cat([joint, completed.flatten(-2)], dim=-1)
        return self.joint_head(joint, completed)

    # --- label-free prediction -----------------------------------------------------------------------------
    def _eval_parts(self, inputs, present):
        v = self.encode(inputs, present)  # missing slots already hold e_m(0)
        _, _, completed, joint = self.complete(v, v, present, need_output=False)
        return completed, joint

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        completed, joint = self._eval_parts(inputs, present)
        return self._joint_logits(joint, completed)

    def predict_all(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities under each prediction mode, plus each modality head's own probability (``head:<m>``)."""
        completed, joint = self._eval_parts(inputs, present)
        p_joint = self.task.to_prob(self._joint_logits(joint, completed))
        head_logits = self.heads(completed)
        per_head = [self.task.to_prob(head_logits[:, m]) for m in range(self.num_modalities)]
        p_heads = torch.stack(per_head, dim=0).mean(dim=0)
        out = {"joint": p_joint, "heads": p_heads, "both": (p_joint + p_heads) / 2}
        out.update({f"head:{name}": p for name, p in zip(self.names, per_head)})
        return out

    def predict_proba(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        if self.prediction_mode == "joint":
            return self.task.to_prob(self(inputs, present))
        return self.predict_all(inputs, present)[self.prediction_mode]

    # --- training ------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Two views (DESIGN §4.2): the simulated-missingness view ``present & ~hidden`` feeds L_forward and
        L_backward; L_enc, ω, L_rp and L_TLA see each patient's real availability (``hide-for-prediction: true``
        feeds them the hidden view too). All views go through one imputer call per module, as DP-SGD requires."""
        inputs, present, y = batch["inputs"], batch["present"], batch["labels"]
        cfg, b = self.cfg, present.shape[0]
        v_true, v_miss = self.encode_with_zero(inputs, present)
        hidden = self.sample_hidden(present) if self.impute and cfg.hide_prob > 0 else torch.zeros_like(present)
        avail = present & ~hidden
        masks = [avail]
        pred_view = 0
        if self.impute and cfg.hide_prob > 0 and not cfg.hide_for_prediction:
            masks.append(present)
            pred_view = 1
        use_tla = self.use_tla and self.lazy_combo is not None
        if use_tla:  # the δ_lazy-only view of each patient's real data
            masks.append(present & combo_mask(self.lazy_combo, self.num_modalities, present.device))
        v_in, v_fwd, completed, joint = self.complete(v_true, v_miss, torch.stack(masks, 1),
                                                      need_output=self.backward_cra is not None)
        joint_logits = self._joint_logits(joint, completed)  # [B, P, K]
        zero = v_true.new_zeros(b)
        parts: dict[str, torch.Tensor] = {}
        if self.impute:
            # Eq. 3: the complement pattern. Ground truth exists for every present slot (v^miss where available,
            # the true embedding where hidden); truly missing slots contribute nothing.
            target = torch.where(avail[:, :, None], v_miss, v_true).detach()
            parts["forward"] = masked_slot_mse(v_fwd[:, 0], target, present, reduction=cfg.imputation_reduction)
        if self.backward_cra is not None:
            v_bwd, _ = self.backward_cra(v_fwd[:, 0].flatten(1))  # all K decoders feed v''
            every_slot = torch.ones_like(present)  # ‖v − v''‖² over all of v, with the same reduction
            parts["backward"] = masked_slot_mse(v_bwd.view_as(v_in[:, 0]), v_in[:, 0].detach(), every_slot,
                                                reduction=cfg.imputation_reduction)
        head_logits = self.heads(completed[:, pred_view])
        ce = torch.stack([self.task.elementwise_loss(head_logits[:, m], y) for m in range(self.num_modalities)], 1)
        if cfg.use_dwfuse:
            p = torch.stack([self.task.p_true(head_logits[:, m], y) for m in range(self.num_modalities)], 1)
            omega = dwfuse_weights(p, cfg.beta, floor=cfg.dwfuse_floor)
        else:
            omega = torch.ones_like(ce)
        parts["enc"] = (omega * ce).sum(dim=1).mean(dim=-1)
        parts["rp"] = self.task.loss(joint_logits[:, pred_view], y)
        if use_tla:
            parts["tla"] = activation_loss(self.task.loss(joint_logits[:, -1], y), present, self.lazy_combo)
        total = (parts.get("forward", zero) + cfg.lambda_backward * parts.get("backward", zero)
                 + cfg.lambda_dwfuse * (parts["enc"] + cfg.alpha * parts["rp"]) + cfg.lambda_tla * parts.get("tla", zero))
        loss = total.mean()
        logged = {f"loss_{k}": float(v.detach().mean()) for k, v in parts.items()}
        logged["loss"] = float(loss.detach())
        logged["omega_mean"] = float(omega.mean())
        return loss, logged

    # --- TLA mining ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def mine_lazy(self, batches, device: torch.device,
                  noisy_select: Optional[Callable[[torch.Tensor], tuple[int, dict]]] = None) -> dict:
        """Score all 2^M − 1 combinations on the training split and set ``lazy_combo`` (DESIGN §4.4).

        The network is in eval mode throughout (no dropout in the embeddings nor in e_m(0)); embeddings are
        computed once and each combination re-runs only the imputer and joint head. A combination's score is
        its mean distance ``Σ d / max(n_δ, F)`` (:func:`~omnifuse_core.tla.mean_distances`). Under DP,
        ``noisy_select`` (report-noisy-max) picks from ``F ·`` those means over distances ``1 − p_y`` clipped to
        [0, 1], whose sensitivity is 1 (docs/privacy.md).
        """
        was_training = self.training
        self.eval()
        try:
            v_all, present_all, y_all, first = [], [], [], None
            for batch in batches:
                v_all.append(self.encode(batch["inputs"], batch["present"]))
                present_all.append(batch["present"])
                y_all.append(batch["labels"])
                first = first or batch
            if not v_all:
                return {}
            v_true, present, y = torch.cat(v_all), torch.cat(present_all), torch.cat(y_all)
            v_miss = self.zero_embeddings({n: first["inputs"][n][:1] for n in self.names}, 1).expand_as(v_true)
            combos = all_combinations(self.num_modalities)

            def distance(combo: tuple[int, ...]) -> torch.Tensor:
                avail = present & combo_mask(combo, self.num_modalities, present.device)
                _, _, completed, joint = self.complete(v_true, v_miss, avail, need_output=False)
                logits = self._joint_logits(joint, completed)
                if noisy_select is not None:
                    return (1.0 - self.task.p_true(logits, y).mean(dim=1)).clamp(0.0, 1.0)
                return self.task.loss(logits, y)

            floor = self.cfg.tla_min_samples
            scores, counts = mean_distances(distance, present, combos, floor)
        finally:
            self.train(was_training)
        event: dict = {}
        if noisy_select is not None:
            idx, event = noisy_select(scores * floor)
        else:
            idx = select_lazy(scores)
        self.lazy_combo = combos[idx]
        names = [combo_name(c, self.names) for c in combos]
        trace = {"lazy": names[idx], "scores": dict(zip(names, scores.tolist())),
                 "counts": dict(zip(names, counts.tolist()))}
        if event:
            trace["dp_event"] = event
        return trace

    def on_epoch_start(self, train_batch_iter, device: torch.device, epoch: int, noisy_select=None,
                       trained: bool = True) -> dict:
        """Mine δ_lazy before every epoch whose model has been trained (``trained`` or ``epoch > 0``); before
        that there is no TLA loss (an untrained network's scores mean nothing)."""
        if not self.use_tla:
            return {}
        if not trained and epoch == 0:
            self.lazy_combo = None
            return {"lazy": None}
        return self.mine_lazy(train_batch_iter, device, noisy_select)


@FUSIONS.register("dwfuse")
class DWFuseOnly(OmniFuse):
    """DWFuse without imputation losses or TLA (ablation / baseline)."""

    variant = "dwfuse"


def _device(inputs: dict[str, torch.Tensor]) -> torch.device:
    return next(iter(inputs.values())).device
