"""The local trainer every mode uses: centralized (pooled), local (one site) and federated (one site per round).

Seeded and deterministic on CPU; picks CUDA when available (``device: auto``). Optional DP-SGD through
``omnifuse_core.privacy.dpsgd.make_private`` (Opacus, Poisson sampling, explicit noise multiplier).
"""
from __future__ import annotations

import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from .batch import MultimodalDataset, batch_to, to_batch
from .config import Config
from .metrics import best_prediction_mode, compute_metrics, headline_metric
from .models.base import FusionModel
from .pooled import concordance_counts, score_histogram
from .protocol import CONC_DEN, CONC_NUM, HIST_NEG, HIST_POS

log = logging.getLogger(__name__)


@dataclass
class DPSettings:
    """What the site's privacy layer decided for this round (σ is calibrated once for the whole schedule)."""

    noise_multiplier: float
    max_grad_norm: float
    noisy_select: Optional[Callable[[torch.Tensor], tuple[int, dict]]] = None  # TLA report-noisy-max
    adaptive: Optional[Any] = None  # privacy.adaptive_clip.AdaptiveClip: C starts at its `initial`, then adapts

    @classmethod
    def for_config(cls, cfg: Config, noise_multiplier: float, expected_batch: float,
                   noisy_select: Optional[Callable] = None) -> "DPSettings":
        """``cfg``'s clipping at σ (``max-grad-norm: adaptive``: the clip-* settings, C from ``clip-initial``)."""
        from .privacy.adaptive_clip import settings_for

        ada = settings_for(cfg, expected_batch, noise_multiplier)
        return cls(noise_multiplier, ada.initial if ada else cfg.max_grad_norm, noisy_select, ada)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    counts: dict[str, int]
    trace: dict = field(default_factory=dict)
    steps: int = 0
    sample_rate: float = 0.0
    clip: dict = field(default_factory=dict)  # adaptive clipping: privacy.adaptive_clip.clip_summary (else empty)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(spec: "Config | str") -> torch.device:
    name = spec.device if isinstance(spec, Config) else str(spec)
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available; using the CPU", name)
        return torch.device("cpu")
    return torch.device(name)


def iterate_batches(ds: MultimodalDataset, batch_size: int, device: torch.device, *, shuffle: bool = False,
                    seed: int = 0) -> Iterator[dict]:
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None)
    for collated in loader:
        yield batch_to(to_batch(ds.specs, collated), device)


def make_adam(params: list, cfg: Config, device: torch.device) -> torch.optim.Adam:
    """Adam with torch's fused kernel on CPU and CUDA (one kernel for all parameters; torch's default on CPU is a
    Python loop over parameter tensors, which cost OmniFuse's 173 tensors ~9 ms a step, B6). Same update rule."""
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def train_local(model: FusionModel, train_ds: MultimodalDataset, cfg: Config, *, epochs: Optional[int] = None,
                device: Optional[torch.device] = None, prox_center: Optional[dict[str, torch.Tensor]] = None,
                dp: Optional[DPSettings] = None, progress: bool = False, seed_offset: int = 0,
                trained: bool = False) -> TrainResult:
    """Train ``model`` in place for ``epochs`` local epochs.

    Args:
        model: any registered fusion model.
        train_ds: the site's (or pooled) training split.
        cfg: run configuration (lr, batch size, loss switches, ...).
        epochs: defaults to ``cfg.local_epochs``.
        device: defaults to :func:`resolve_device`.
        prox_center: FedProx anchor (global weights by parameter name); adds μ/2·‖w − w_global‖².
        dp: DP-SGD settings; ``None`` trains without DP.
        progress: show a progress bar per epoch.
        seed_offset: added to ``cfg.seed`` (e.g. the round number) so rounds shuffle differently but reproducibly.
        trained: the incoming weights were already trained (a later round, a resumed run): TLA mines before the
            first epoch too; otherwise the first mining follows the first trained epoch
            (:func:`omnifuse_core.tla.selections_in_call` counts them).

    Returns:
        Mean training losses, per-modality training counts, the per-epoch trace (lazy combination, ω) and steps.
    """
    epochs = cfg.local_epochs if epochs is None else epochs
    device = device or resolve_device(cfg)
    seed = cfg.seed + seed_offset
    set_seed(seed)
    model.to(device).train()
    counts = train_ds.modality_counts()
    if len(train_ds) == 0:
        log.warning("empty training split: nothing to train")
        return TrainResult({}, counts)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adam(params, cfg, device)
    sample_rate, dp_model = 0.0, None
    if dp is not None:
        if prox_center is not None and cfg.proximal_mu > 0:
            raise ValueError("FedProx's proximal term is not a per-sample loss and cannot run under DP-SGD; "
                             "set proximal-mu: 0 or dp: false")
        from .privacy.dpsgd import dp_step, make_private
        dp_model, optimizer, loader = make_private(model, optimizer, train_ds, batch_size=cfg.batch_size,
                                            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                                            seed=seed, grad_sample_mode=cfg.dp_grad_sample_mode,
                                            adaptive=dp.adaptive)
        sample_rate = float(loader.sample_rate)
        # a parameter this batch did not reach (or an empty Poisson batch) has a zero per-sample gradient;
        # dp_step fills it in and still adds the noise, so every step counts
        step = lambda: dp_step(optimizer)  # noqa: E731
    else:
        step = optimizer.step
    sums: dict[str, float] = defaultdict(float)
    n_batches, steps, clip = 0, 0, {}
    trace: dict[str, list] = defaultdict(list)
    try:
        for epoch in range(epochs):
            mining = iterate_batches(train_ds, max(256, cfg.batch_size), device)
            extra = {"noisy_select": dp.noisy_select} if dp is not None and dp.noisy_select else {}
            info = model.on_epoch_start(mining, device, epoch, trained=trained, **extra)
            for key, value in info.items():
                trace[key].append(value)
            if dp is not None:
                batches = (batch_to(to_batch(train_ds.specs, c), device) for c in loader)
            else:
                batches = iterate_batches(train_ds, cfg.batch_size, device, shuffle=True, seed=seed * 1000 + epoch)
            if progress:
                from tqdm.auto import tqdm
                batches = tqdm(batches, total=math.ceil(len(train_ds) / cfg.batch_size), desc=f"epoch {epoch + 1}",
                               leave=False)
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                if batch["present"].shape[0] > 0:  # an empty Poisson batch still takes a (noise-only) step
                    loss, parts = model.training_loss(batch)
                    if prox_center is not None and cfg.proximal_mu > 0:
                        loss = loss + _proximal_term(model, prox_center, cfg.proximal_mu)
                    loss.backward()
                    for key, value in parts.items():
                        sums[key] += value
                    n_batches += 1
                step()
                steps += 1
    finally:
        if dp_model is not None:  # Opacus' hooks off the model again: a later round or train_local call re-wraps it
            dp_model._close()
    if dp is not None and dp.adaptive is not None:
        from .privacy.adaptive_clip import clip_summary
        clip = clip_summary(optimizer)
    metrics = {k: v / max(n_batches, 1) for k, v in sums.items()}
    return TrainResult(metrics, counts, dict(trace), steps, sample_rate, clip)


def _proximal_term(model: FusionModel, center: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, p in model.named_parameters():
        if p.requires_grad and name in center:
            total = total + ((p - center[name].to(p.device)) ** 2).sum()
    return 0.5 * mu * total


@torch.no_grad()
def predict(model: FusionModel, ds: MultimodalDataset, cfg: Config, *,
            device: Optional[torch.device] = None) -> dict[str, np.ndarray]:
    """Label-free outputs: ``prob`` (the configured prediction), ``score`` (what metrics use) and, for models
    that expose them, every prediction mode and per-modality head probabilities."""
    device = device or resolve_device(cfg)
    model.to(device).eval()
    chunks: dict[str, list] = defaultdict(list)
    for batch in iterate_batches(ds, max(256, cfg.batch_size), device):
        inputs, present = batch["inputs"], batch["present"]
        prob = model.predict_proba(inputs, present)
        chunks["prob"].append(prob)
        chunks["score"].append(model.task.score(prob))
        if hasattr(model, "predict_all"):
            for key, value in model.predict_all(inputs, present).items():
                chunks[key].append(value)
    return {k: torch.cat(v).cpu().numpy() for k, v in chunks.items()}


def evaluate(model: FusionModel, ds: MultimodalDataset, cfg: Config, *,
             device: Optional[torch.device] = None, score_hist: bool = False, pair_counts: bool = False,
             threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of the configured prediction on ``ds`` (binary decisions at ``threshold``), plus the headline metric
    of every prediction mode; and the counts a pooled metric adds across sites (omnifuse_core.pooled): with
    ``score_hist`` (binary) patients per score bin (``hist.pos``/``hist.neg``), with ``pair_counts`` (survival)
    concordant and comparable pairs (``conc.num``/``conc.den``)."""
    task = model.task_spec.kind
    out = predict(model, ds, cfg, device=device)
    labels = ds.labels.numpy()
    metrics: dict[str, Any] = (compute_metrics(task, labels, out["score"], threshold=threshold) if len(ds)
                               else {"n": 0})
    if score_hist and task == "binary" and len(ds):
        metrics[HIST_POS], metrics[HIST_NEG] = score_histogram(labels, out["score"], cfg.score_bins)
    elif pair_counts and task == "survival" and len(ds):
        metrics[CONC_NUM], metrics[CONC_DEN] = concordance_counts(labels[:, 0], labels[:, 1], out["score"],
                                                                  reps=cfg.bootstrap_reps, seed=cfg.seed)
    head = headline_metric(task)
    for mode in ("joint", "heads", "both"):
        if mode in out and len(ds):
            score = model.task.score(torch.from_numpy(out[mode])).numpy()
            metrics[f"{head}_{mode}"] = compute_metrics(task, labels, score).get(head, float("nan"))
    return metrics


def choose_prediction_mode(model: FusionModel, val_metrics: dict[str, float]) -> Optional[str]:
    """For ``prediction: auto``: the mode with the best validation headline metric (recorded in metrics.json)."""
    if not hasattr(model, "prediction_mode") or model.cfg.prediction != "auto":
        return None
    best = best_prediction_mode(val_metrics, headline_metric(model.task_spec.kind))
    if best:
        model.prediction_mode = best
    return model.prediction_mode
