"""What a site exchanges: the model's *trainable* parameters as named float32 numpy arrays.

Only parameters with ``requires_grad`` leave a site; frozen parts (e.g. the pretrained text model) and buffers stay
local. Names are the model's own ``named_parameters`` names (an Opacus ``GradSampleModule`` wrapper's ``_module.``
prefix is removed so wrapped and plain models exchange the same keys).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

_WRAPPER_PREFIX = "_module."


class WeightsError(ValueError):
    """Received weights do not match the model (names or shapes); the message lists the differences."""


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_module", None)
    return inner if isinstance(inner, nn.Module) else model


def _clean(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIX):
        name = name[len(_WRAPPER_PREFIX):]
    return name


def trainable_named(model: nn.Module) -> "OrderedDict[str, nn.Parameter]":
    """Trainable parameters in registration order, keyed by their clean names."""
    return OrderedDict((_clean(n), p) for n, p in _unwrap(model).named_parameters() if p.requires_grad)


def get_trainable(model: nn.Module) -> "OrderedDict[str, np.ndarray]":
    """Copy the trainable parameters out as float32 numpy arrays (ordered by registration).

    Args:
        model: any ``nn.Module`` (possibly wrapped by Opacus).

    Returns:
        ``name -> float32 ndarray`` for every parameter with ``requires_grad``.
    """
    return OrderedDict((n, p.detach().to("cpu", torch.float32).numpy().copy()) for n, p in trainable_named(model).items())


def trainable_count(model: nn.Module) -> int:
    """Number of trainable scalars P (what DP-SGD adds noise to and what a site uploads)."""
    return int(sum(p.numel() for p in trainable_named(model).values()))


def trainable_shapes(model: nn.Module) -> "OrderedDict[str, tuple[int, ...]]":
    """``name -> shape`` of every trainable parameter (what a valid reply must contain)."""
    return OrderedDict((n, tuple(p.shape)) for n, p in trainable_named(model).items())


def set_trainable(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load trainable parameters in place; names and shapes must match exactly.

    Args:
        model: the model to update.
        arrays: ``name -> ndarray`` as produced by :func:`get_trainable`.

    Raises:
        WeightsError: when a name is missing or unexpected or a shape differs (all problems are listed).
    """
    params = trainable_named(model)
    problems = [f"missing '{n}'" for n in params if n not in arrays]
    problems += [f"unexpected '{n}'" for n in arrays if n not in params]
    problems += [f"'{n}' has shape {tuple(np.shape(arrays[n]))}, model expects {tuple(p.shape)}"
                 for n, p in params.items() if n in arrays and tuple(np.shape(arrays[n])) != tuple(p.shape)]
    if problems:
        raise WeightsError("received weights do not match the model (was it built from the same config and site "
                           "specs?): " + "; ".join(problems))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(torch.as_tensor(np.asarray(arrays[n]), dtype=p.dtype, device=p.device))


def param_groups(model: nn.Module) -> "OrderedDict[str, str]":
    """``name -> group`` for every trainable parameter, from ``model.param_group`` (``enc:<m>`` or ``shared``).

    Models without ``param_group`` put everything in ``shared``.
    """
    inner = _unwrap(model)
    fn = getattr(inner, "param_group", None)
    return OrderedDict((n, fn(n) if callable(fn) else "shared") for n in trainable_named(model))
