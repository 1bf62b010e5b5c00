"""Modality-specific encoders e_m (DESIGN §4.1). Each maps ``[B, *shape]`` to ``[B, embed_dim]``.

All encoders are per-sample independent (GroupNorm/LayerNorm, never BatchNorm), so one patient's input never
changes another patient's embedding, and all have an Opacus-compatible form (``dp=True`` swaps nn.GRU/nn.LSTM for
``opacus.layers.DPGRU/DPLSTM``; ``tcn`` needs no swap). The frozen text model is *not* here: it runs once per site in
``omnifuse_core.data.text`` and its cached embeddings are this module's text input.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .batch import KIND_EVENTS, KIND_GENOMICS, KIND_IMAGE, KIND_SEQUENCE, KIND_TABULAR, KIND_TEXT, ModalitySpec
from .config import Config
from .registry import Registry

log = logging.getLogger(__name__)
ENCODERS: Registry[nn.Module] = Registry("encoder")


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


@ENCODERS.register("gru")
@ENCODERS.register("lstm")
class SequenceEncoder(nn.Module):
    """2-layer GRU/LSTM over the per-step EHR features; the last hidden state is projected to ``embed_dim``."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, cell: str = "gru", dp: bool = False) -> None:
        super().__init__()
        _, n_features = spec.shape
        if dp:
            from opacus.layers import DPGRU, DPLSTM
            rnn_cls = DPGRU if cell == "gru" else DPLSTM
        else:
            rnn_cls = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(n_features, cfg.encoder_hidden, num_layers=2, batch_first=True)
        self.proj = nn.Linear(cfg.encoder_hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.proj(out[:, -1])


@ENCODERS.register("tcn")
class TemporalConvEncoder(nn.Module):
    """Causal dilated temporal convolutions over the per-step EHR features (dilations 1, 2, 4, 8; kernel 3; a
    31-step receptive field), GroupNorm + ReLU after each; the mean over time and the last step are projected to
    ``embed_dim``.

    The DP-SGD-friendly alternative to the GRU: Opacus computes Conv1d/GroupNorm per-sample gradients in one
    batched call per layer, where ``DPGRU`` runs a Python loop over time steps (B6 measures both). Convolutions are
    bias-free (GroupNorm follows), so e(0) is exactly a function of GroupNorm's bias, as in :class:`SmallCNN`.
    """

    DILATIONS = (1, 2, 4, 8)

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        if spec.kind != KIND_SEQUENCE:
            raise ValueError(f"modality '{spec.name}': encoder 'tcn' needs a sequence input, got kind {spec.kind}")
        _, n_features = spec.shape
        hidden = cfg.encoder_hidden
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c = n_features
        for d in self.DILATIONS:
            self.convs.append(nn.Conv1d(c, hidden, 3, dilation=d, bias=False))
            self.norms.append(_group_norm(hidden))
            c = hidden
        self.proj = nn.Linear(2 * hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)  # [B, F, T]
        for conv, norm, d in zip(self.convs, self.norms, self.DILATIONS):
            h = torch.relu(norm(conv(nn.functional.pad(h, (2 * d, 0)))))  # left padding: causal
        return self.proj(torch.cat([h.mean(dim=2), h[:, :, -1]], dim=1))


class _MLP(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.ReLU, dropout: float = 0.0):
        super().__init__()
        drop = nn.AlphaDropout(dropout) if act is nn.SELU else nn.Dropout(dropout)
        self.net = nn.Sequential(nn.Linear(n_in, hidden), act(), drop, nn.Linear(hidden, hidden), act(),
                                 nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


@ENCODERS.register("mlp")
class TabularEncoder(_MLP):
    """MLP for static tabular EHR (or a flattened time series)."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        n_in = 1
        for s in spec.shape:
            n_in *= s
        super().__init__(n_in, cfg.encoder_hidden, cfg.embed_dim)


@ENCODERS.register("snn")
class GenomicsEncoder(_MLP):
    """Self-normalizing MLP (SELU + AlphaDropout) over the expression vector, as in SNN genomics encoders."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__(spec.shape[0], cfg.encoder_hidden, cfg.embed_dim, act=nn.SELU, dropout=0.1)


@ENCODERS.register("projection")
class TextProjection(nn.Module):
    """Trainable projection of the frozen text model's embedding (LayerNorm + 2-layer MLP)."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(spec.shape[0]), nn.Linear(spec.shape[0], cfg.encoder_hidden), nn.ReLU(),
                                 nn.Linear(cfg.encoder_hidden, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@ENCODERS.register("small_cnn")
class SmallCNN(nn.Module):
    """Three strided conv blocks with GroupNorm; for tests, the demo and 64x64 images."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        c = spec.shape[0]
        layers: list[nn.Module] = []
        for out in (16, 32, 64):
            # bias=False: GroupNorm follows, and e(0) must be exactly GroupNorm's bias (a zero-variance map
            # plus a conv bias would make the missing-image embedding rounding noise scaled by 1/sqrt(eps)).
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False), _group_norm(out), nn.ReLU()]
            c = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))


@ENCODERS.register("linear")
class LinearEncoder(nn.Module):
    """One linear map of the flattened input to ``embed_dim``: the lowest-capacity encoder for any modality.

    For DP-SGD (few trainable parameters keep the noise σ·C·√P / B small, docs/privacy.md) and for small cohorts
    (a linear Cox-like model of tabular or genomics features).
    """

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        n_in = 1
        for s in spec.shape:
            n_in *= s
        self.proj = nn.Linear(n_in, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))


@ENCODERS.register("summary")
class SequenceSummaryEncoder(nn.Module):
    """Per-feature mean, standard deviation and last value over time, then one linear map to ``embed_dim``.

    A compact, parameter-free summary of an EHR time series (3·F inputs); the DP profile's EHR encoder. A missing
    stay (all zeros) summarises to zeros, so e(0) is the linear map's bias, as for every encoder here.
    """

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        if spec.kind != KIND_SEQUENCE:
            raise ValueError(f"modality '{spec.name}': encoder 'summary' needs a sequence input, got kind {spec.kind}")
        _, n_features = spec.shape
        self.proj = nn.Linear(3 * n_features, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, F]
        std = x.var(dim=1, unbiased=False).add(1e-6).sqrt() - 1e-3  # e(0) = 0 summary up to 1e-6
        return self.proj(torch.cat([x.mean(dim=1), std, x[:, -1]], dim=1))


@ENCODERS.register("pooled")
class PooledImageEncoder(nn.Module):
    """Average-pool the image to an ``8 x 8`` grid per channel, then one linear map to ``embed_dim``.

    No convolution weights: ``C·64·embed_dim`` parameters. The DP profile's image encoder (a regional intensity
    read-out; the small CNN's ≈ 25 k parameters cost more noise than they add signal under DP-SGD, BENCHMARKS B5).
    """

    GRID = 8

    def __init__(self, *, spec: ModalitySpec, cfg: Config, **_: object) -> None:
        super().__init__()
        if spec.kind != KIND_IMAGE:
            raise ValueError(f"modality '{spec.name}': encoder 'pooled' needs an image input, got kind {spec.kind}")
        self.pool = nn.AdaptiveAvgPool2d(self.GRID)
        self.proj = nn.Linear(spec.shape[0] * self.GRID * self.GRID, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x).flatten(1))


class ResNetEncoder(nn.Module):
    """torchvision ResNet18/34 (``weights=None``) with GroupNorm; optional weights-only user checkpoint."""

    def __init__(self, *, spec: ModalitySpec, cfg: Config, depth: int = 18, **_: object) -> None:
        super().__init__()
        from torchvision.models import resnet18, resnet34
        ctor = resnet18 if depth == 18 else resnet34
        net = ctor(weights=None, num_classes=cfg.embed_dim, norm_layer=_group_norm)
        if spec.shape[0] != 3:
            net.conv1 = nn.Conv2d(spec.shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        if cfg.image_checkpoint:
            _load_backbone(net, Path(cfg.image_checkpoint))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _load_backbone(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"image-checkpoint '{path}' does not exist; give a weights-only torch or safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and k in net.state_dict()
             and net.state_dict()[k].shape == v.shape}
    missing, _ = net.load_state_dict(state, strict=False)
    log.info("image backbone: loaded %d tensors from %s (%d left at init)", len(state), path, len(missing))


ENCODERS.register("resnet18")(lambda **kw: ResNetEncoder(depth=18, **kw))
ENCODERS.register("resnet34")(lambda **kw: ResNetEncoder(depth=34, **kw))

_NAME_BY_KIND = {KIND_SEQUENCE: "ehr_encoder", KIND_IMAGE: "image_encoder", KIND_TEXT: "text_encoder",
                 KIND_GENOMICS: "genomics_encoder", KIND_EVENTS: "ehr_event_encoder"}


def encoder_name(spec: ModalitySpec, cfg: Config) -> str:
    if spec.kind == KIND_TABULAR:  # a static table: the MLP, or the linear map when ehr-encoder asks for it
        return "linear" if cfg.ehr_encoder == "linear" else "mlp"
    return getattr(cfg, _NAME_BY_KIND[spec.kind])


def build_encoder(spec: ModalitySpec, cfg: Config) -> nn.Module:
    """The encoder for one modality, named by config; DP-compatible when ``cfg.dp`` or ``cfg.dp_compatible``."""
    name = encoder_name(spec, cfg)
    dp = cfg.dp or cfg.dp_compatible
    if name in ("gru", "lstm"):
        if spec.kind != KIND_SEQUENCE:
            raise ValueError(f"modality '{spec.name}': encoder '{name}' needs a sequence input, got kind {spec.kind}")
        return SequenceEncoder(spec=spec, cfg=cfg, cell=name, dp=dp)
    if name == "event_gru":
        return ENCODERS.get(name)(spec=spec, cfg=cfg, dp=dp)
    encoder = ENCODERS.get(name)(spec=spec, cfg=cfg)
    if spec.kind == KIND_GENOMICS and cfg.genomics_input_dropout > 0:
        # p >> n: drop whole genes at the input (per sample; e(0) unchanged: dropout of zeros is zero)
        return nn.Sequential(nn.Dropout(cfg.genomics_input_dropout), encoder)
    return encoder


from . import encoders_events  # noqa: E402,F401  (registers code_stats / bag_of_codes / event_gru)
