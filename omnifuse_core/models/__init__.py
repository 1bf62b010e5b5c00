"""Fusion models, named by the ``fusion`` config key."""
from __future__ import annotations

from typing import Sequence

from ..batch import ModalitySpec, TaskSpec
from ..config import Config
from ..registry import Registry
from .base import FusionModel

FUSIONS: Registry[FusionModel] = Registry("fusion")


def build_model(specs: Sequence[ModalitySpec], task: TaskSpec, cfg: Config) -> FusionModel:
    """Instantiate the fusion model named by ``cfg.fusion``."""
    _import_all()
    return FUSIONS.get(cfg.fusion)(specs=specs, task=task, cfg=cfg)


def _import_all() -> None:
    # Registration happens on import; keep this list in sync with the modules in this package.
    from . import baselines, healnet, omnifuse  # noqa: F401
