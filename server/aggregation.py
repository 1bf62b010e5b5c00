"""Server-side aggregation rules (pure numpy; DESIGN §7).

Every rule maps the current global weights and the validated site updates to new global weights:

* ``modality_aware`` (default): each parameter group is averaged over the sites that trained it, weighted by the
  site's count of training samples that had the group's modality (``enc:<m>`` -> count of ``m``; shared groups ->
  ``any``). A group no replying site trained keeps its previous global value.
* ``fedavg`` / ``fedprox``: every parameter weighted by the site's training-set size ``n`` (FedProx differs only on
  the client, which adds the proximal term).
* ``fedadam`` / ``fedyogi``: the modality-aware average gives a pseudo-gradient ``avg - global`` that a server-side
  Adam/Yogi step (learning rate ``server_lr``) applies (Reddi et al. 2021, as in Flower's FedOpt).
* ``trimmed_mean``: coordinate-wise mean after dropping ``floor(trim_fraction * k)`` lowest and highest values.
* ``median``: coordinate-wise median.

The two robust rules are unweighted (one site, one vote: a site cannot buy influence by claiming a large count) and,
like ``modality_aware``, take each parameter group only over the sites that trained it (count > 0), so a site
without images does not drag the image encoder back towards its old value.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from omnifuse_core.config import Config
from omnifuse_core.protocol import COUNT_N, group_count_key

log = logging.getLogger(__name__)
Weights = dict[str, np.ndarray]


@dataclass
class SiteUpdate:
    """One validated reply: the site's weights after local training and its training-sample counts."""

    site: str
    arrays: Weights
    counts: dict[str, int] = field(default_factory=dict)


class Aggregator:
    """Base class. Subclasses implement :meth:`aggregate`; stateful ones also (de)serialise their state."""

    name = ""

    def aggregate(self, global_w: Mapping[str, np.ndarray], updates: list[SiteUpdate],
                  groups: Mapping[str, str]) -> Weights:
        raise NotImplementedError

    def state_arrays(self) -> Weights:
        """Arrays to checkpoint (e.g. Adam moments); empty for stateless rules."""
        return {}

    def state_meta(self) -> dict:
        """JSON-serialisable scalars to checkpoint."""
        return {}

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
        """Restore what :meth:`state_arrays` / :meth:`state_meta` saved."""


def _weighted_mean(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    stacked = np.stack([a.astype(np.float64) for a in arrays])
    return (np.tensordot(w / w.sum(), stacked, axes=1)).astype(np.float32)


def modality_aware_mean(global_w: Mapping[str, np.ndarray], updates: list[SiteUpdate],
                        groups: Mapping[str, str]) -> Weights:
    """Group-wise count-weighted mean (see module docstring).

    Args:
        global_w: current global weights.
        updates: validated site updates (all with the same keys as ``global_w``).
        groups: ``param name -> group`` (``enc:<modality>`` or ``shared``).

    Returns:
        New global weights; groups with no contributing site are copied from ``global_w``.
    """
    out: Weights = {}
    for name, old in global_w.items():
        key = group_count_key(groups.get(name, "shared"))
        contrib = [(u.arrays[name], u.counts.get(key, 0)) for u in updates if u.counts.get(key, 0) > 0]
        if contrib:
            out[name] = _weighted_mean([a for a, _ in contrib], [c for _, c in contrib])
        else:
            out[name] = np.array(old, dtype=np.float32, copy=True)
    return out


class ModalityAware(Aggregator):
    name = "modality_aware"

    def aggregate(self, global_w, updates, groups):
        return modality_aware_mean(global_w, updates, groups)


class FedAvg(Aggregator):
    """Every parameter weighted by the site's number of training samples ``n``."""

    name = "fedavg"

    def aggregate(self, global_w, updates, groups):
        out: Weights = {}
        contributing = [u for u in updates if u.counts.get(COUNT_N, 0) > 0]
        for name, old in global_w.items():
            out[name] = (_weighted_mean([u.arrays[name] for u in contributing],
                                        [u.counts[COUNT_N] for u in contributing])
                         if contributing else np.array(old, dtype=np.float32, copy=True))
        return out


def _per_group(global_w: Mapping[str, np.ndarray], updates: list[SiteUpdate], groups: Mapping[str, str],
               combine: Callable[[np.ndarray], np.ndarray]) -> Weights:
    """``combine`` (over axis 0 of the stacked site values) per parameter, over the sites that trained its group.

    A site with no count for the group's key (``enc:<m>`` -> ``m``, shared -> ``any``) does not take part; when no
    update carries counts at all (e.g. unit tests), every update takes part. No contributor -> previous global value.
    """
    out: Weights = {}
    for name, old in global_w.items():
        key = group_count_key(groups.get(name, "shared"))
        contrib = [u.arrays[name] for u in updates if not u.counts or u.counts.get(key, 0) > 0]
        out[name] = (combine(np.stack([a.astype(np.float64) for a in contrib])).astype(np.float32) if contrib
                     else np.array(old, dtype=np.float32, copy=True))
    return out


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (unweighted, robust to a minority of outlying sites)."""

    name = "trimmed_mean"

    def __init__(self, trim_fraction: float) -> None:
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError(f"config key 'trim-fraction' must lie in [0, 0.5), got {trim_fraction}")
        self.trim_fraction = trim_fraction

    def _trimmed(self, stacked: np.ndarray) -> np.ndarray:
        k = stacked.shape[0]
        cut = int(math.floor(self.trim_fraction * k))
        return np.sort(stacked, axis=0)[cut:k - cut].mean(axis=0)

    def aggregate(self, global_w, updates, groups):
        return _per_group(global_w, updates, groups, self._trimmed)


class Median(Aggregator):
    """Coordinate-wise median (unweighted)."""

    name = "median"

    def aggregate(self, global_w, updates, groups):
        return _per_group(global_w, updates, groups, lambda stacked: np.median(stacked, axis=0))


class FedOpt(Aggregator):
    """Server-side Adam or Yogi on the pseudo-gradient ``modality_aware_mean - global``.

    Args:
        variant: ``"adam"`` or ``"yogi"``.
        lr: server learning rate (``server_lr``).
        beta1, beta2, tau: moment decay rates and the adaptivity constant (Flower's FedOpt defaults).
    """

    def __init__(self, variant: str, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        if variant not in ("adam", "yogi"):
            raise ValueError(f"unknown FedOpt variant {variant!r}")
        self.variant, self.lr, self.beta1, self.beta2, self.tau = variant, lr, beta1, beta2, tau
        self.name = f"fed{variant}"
        self.m: Weights = {}
        self.v: Weights = {}
        self.t = 0

    def aggregate(self, global_w, updates, groups):
        if not updates:
            return {n: np.array(v, dtype=np.float32, copy=True) for n, v in global_w.items()}
        avg = modality_aware_mean(global_w, updates, groups)
        self.t += 1
        out: Weights = {}
        for name, old in global_w.items():
            old64 = np.asarray(old, dtype=np.float64)
            delta = avg[name].astype(np.float64) - old64
            m = self.beta1 * self.m.get(name, np.zeros_like(old64)) + (1 - self.beta1) * delta
            v_prev = self.v.get(name, np.full_like(old64, self.tau ** 2))
            d2 = delta * delta
            if self.variant == "adam":
                v = self.beta2 * v_prev + (1 - self.beta2) * d2
            else:
                v = v_prev - (1 - self.beta2) * d2 * np.sign(v_prev - d2)
            self.m[name], self.v[name] = m, v
            out[name] = (old64 + self.lr * m / (np.sqrt(v) + self.tau)).astype(np.float32)
        return out

    def state_arrays(self) -> Weights:
        arrays = {f"m.{n}": a.astype(np.float32) for n, a in self.m.items()}
        arrays.update({f"v.{n}": a.astype(np.float32) for n, a in self.v.items()})
        return arrays

    def state_meta(self) -> dict:
        return {"t": self.t, "variant": self.variant}

    def load_state(self, arrays, meta):
        self.m = {k[2:]: np.asarray(a, dtype=np.float64) for k, a in arrays.items() if k.startswith("m.")}
        self.v = {k[2:]: np.asarray(a, dtype=np.float64) for k, a in arrays.items() if k.startswith("v.")}
        self.t = int(meta.get("t", 0))


AGGREGATORS: dict[str, Callable[[Config], Aggregator]] = {
    "modality_aware": lambda cfg: ModalityAware(),
    "fedavg": lambda cfg: FedAvg(),
    "fedprox": lambda cfg: FedAvg(),
    "fedadam": lambda cfg: FedOpt("adam", cfg.server_lr),
    "fedyogi": lambda cfg: FedOpt("yogi", cfg.server_lr),
    "trimmed_mean": lambda cfg: TrimmedMean(cfg.trim_fraction),
    "median": lambda cfg: Median(),
}


def build_aggregator(cfg: Config) -> Aggregator:
    """The aggregation rule named by ``cfg.strategy``.

    Raises:
        ValueError: for an unknown strategy name (lists the valid ones).
    """
    try:
        factory = AGGREGATORS[cfg.strategy]
    except KeyError:
        raise ValueError(f"config key 'strategy' = {cfg.strategy!r}; choose one of {sorted(AGGREGATORS)}") from None
    agg = factory(cfg)
    log.info("aggregation rule: %s", cfg.strategy)
    return agg
