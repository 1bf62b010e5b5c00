"""Modality-aware aggregation from secure sums only (issue 24). Numpy; no Flower.

Flower's SecAgg+ gives the server one number per vector entry: the (quantized) sum over the sites of what each
uploaded, divided by the sum of one scalar weight per site. The project's aggregation needs a *different* weight per
parameter group (each modality encoder averaged over the sites that hold that modality, by their counts), so a site
does the weighting itself and SecAgg+ is run with the same scalar weight at every site (``num_examples = max_weight
= 1``: the workflow then returns exactly ``sum / k`` over the ``k`` sites whose vectors it unmasked).

A site uploads one float vector (:func:`encode`)::

    [ a_key(p) * (w_p - g_p)  for every trainable tensor p, raveled in layout order ]   the weighted update
    [ a_k                     for every count key k (modalities..., "any", "n") ]      the weights themselves
    [ 1 ]                                                                                 "I contributed"

with ``a_k = count_k / scale`` (``scale``: a public bound on any site's count, so ``a_k`` lies in [0, 1]) and
``key(p)`` the count the tensor's group is weighted by (``enc:<m>`` -> ``m``, shared -> ``any``; FedAvg/FedProx:
``n`` for every tensor). A site that lacks a modality has ``a_m = 0``: zeros for that encoder. The server
(:func:`decode`) multiplies the mean by ``k`` and divides each tensor's sum by its key's summed weight:
``g_p + sum_i a_i (w_i - g_i) / sum_i a_i`` is exactly modality-aware FedAvg's group mean; a group no site trained
keeps ``g_p``. The scale cancels. What the server learns: the sums (of updates, of counts, of contributors), never
one site's.

Uploading updates (deltas) rather than weights keeps the values small, so SecAgg+'s clipping range rarely binds
and its quantization step (``2 * clipping_range / quantization_range``) is small next to them; a site checks its
own update before masking (:func:`check_update`: finite, norm bound, inside the clipping range) because the server
can no longer see it, and withholds (uploads zeros, says why in the clear) when a check fails.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .protocol import COUNT_ANY, COUNT_N, group_count_key

ROBUST_STRATEGIES = ("trimmed_mean", "median")  # need every site's value per coordinate: impossible on a sum
N_WEIGHTED = ("fedavg", "fedprox")  # every tensor weighted by the site's training-set size


class SecureSumError(RuntimeError):
    """A secure round could not be completed (too few sites left to unmask, an inconsistent sum)."""


@dataclass(frozen=True)
class SumLayout:
    """What the server and every site must agree on to encode and decode one round (sent in the train config).

    Args:
        names: trainable tensor names in upload order.
        shapes: their shapes.
        keys: ``name -> count key`` the tensor is weighted by.
        count_keys: the count entries uploaded after the tensors (modalities, ``any``, ``n``).
        scale: public bound on any site's count (``a_k = count_k / scale``).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    keys: tuple[str, ...]
    count_keys: tuple[str, ...]
    scale: float

    @classmethod
    def build(cls, shapes: Mapping[str, Sequence[int]], groups: Mapping[str, str], modalities: Sequence[str],
              strategy: str, scale: float) -> "SumLayout":
        """The layout of a model (``shapes``/``groups`` as ``server.setup.initial_model`` returns them)."""
        names = tuple(shapes)
        keys = tuple(COUNT_N if strategy in N_WEIGHTED else group_count_key(groups.get(n, "shared")) for n in names)
        return cls(names=names, shapes=tuple(tuple(int(d) for d in shapes[n]) for n in names), keys=keys,
                   count_keys=tuple(modalities) + (COUNT_ANY, COUNT_N), scale=float(max(scale, 1.0)))

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def size(self) -> int:
        """Entries of the uploaded vector."""
        return self.n_params + len(self.count_keys) + 1

    def to_json(self) -> str:
        return json.dumps({"names": self.names, "shapes": self.shapes, "keys": self.keys,
                           "count_keys": self.count_keys, "scale": self.scale})

    @classmethod
    def from_json(cls, text: str) -> "SumLayout":
        d = json.loads(text)
        return cls(names=tuple(d["names"]), shapes=tuple(tuple(s) for s in d["shapes"]), keys=tuple(d["keys"]),
                   count_keys=tuple(d["count_keys"]), scale=float(d["scale"]))


def _deltas(layout: SumLayout, local: Mapping[str, np.ndarray], global_w: Mapping[str, np.ndarray]) -> list:
    missing = [n for n in layout.names if n not in local or n not in global_w]
    if missing:
        raise ValueError(f"secure aggregation: weights lack {missing[:5]} of the federation's layout")
    out = []
    for name, shape in zip(layout.names, layout.shapes):
        d = np.asarray(local[name], dtype=np.float64) - np.asarray(global_w[name], dtype=np.float64)
        if d.shape != tuple(shape):
            raise ValueError(f"secure aggregation: '{name}' has shape {d.shape}, the layout {tuple(shape)}")
        out.append(d.reshape(-1))
    return out


def encode(layout: SumLayout, local: Mapping[str, np.ndarray], global_w: Mapping[str, np.ndarray],
           counts: Mapping[str, int]) -> np.ndarray:
    """The vector one site uploads (module docstring); float64, ``layout.size`` entries."""
    a = {k: float(counts.get(k, 0)) / layout.scale for k in layout.count_keys}
    parts = [a[key] * d for key, d in zip(layout.keys, _deltas(layout, local, global_w))]
    parts.append(np.array([a[k] for k in layout.count_keys] + [1.0]))
    return np.concatenate(parts)


def withheld(layout: SumLayout) -> np.ndarray:
    """What a site that does not contribute uploads: zeros (it still takes part in the masking protocol)."""
    return np.zeros(layout.size)


def check_update(layout: SumLayout, local: Mapping[str, np.ndarray], global_w: Mapping[str, np.ndarray],
                 counts: Mapping[str, int], *, max_update_norm: float, clipping_range: float) -> str | None:
    """The server's malformed-update checks, run at the site before masking. None = fine, else the reason."""
    try:
        deltas = _deltas(layout, local, global_w)
    except ValueError as exc:
        return str(exc)
    bad = [n for n, d in zip(layout.names, deltas) if not np.isfinite(d).all()]
    if bad:
        return f"non-finite values (NaN/inf) in {bad[:5]}"
    norm = math.sqrt(sum(float(np.dot(d, d)) for d in deltas))
    if not norm <= max_update_norm:
        return f"update norm {norm:.4g} exceeds max-update-norm {max_update_norm:.4g}"
    c = {k: int(counts.get(k, 0)) for k in layout.count_keys}
    if any(v < 0 for v in c.values()) or c[COUNT_ANY] > c[COUNT_N] or \
            any(c[m] > c[COUNT_ANY] for m in layout.count_keys[:-2]):
        return f"inconsistent counts {c}: need 0 <= count(m) <= any <= n"
    if c[COUNT_N] > layout.scale:
        return f"count n = {c[COUNT_N]} exceeds the federation's count scale {layout.scale:g}"
    peak = max((float(np.abs(d).max()) * c[k] / layout.scale for k, d in zip(layout.keys, deltas) if d.size),
               default=0.0)
    if peak > clipping_range:
        return (f"a weighted update entry of {peak:.4g} exceeds secagg-clipping-range {clipping_range:g} (it would "
                f"be clipped); raise secagg-clipping-range")
    return None


@dataclass
class SecureSum:
    """What the server recovers from one secure round: new weights, summed counts, number of contributors."""

    weights: dict[str, np.ndarray]
    counts: dict[str, int]
    contributors: int


def decode(layout: SumLayout, mean: np.ndarray, k: int, global_w: Mapping[str, np.ndarray]) -> SecureSum:
    """Group means from SecAgg+'s output ``mean`` (the sum over the ``k`` unmasked vectors divided by ``k``).

    Raises:
        SecureSumError: a vector of the wrong length or a non-finite sum.
    """
    total = np.asarray(mean, dtype=np.float64).reshape(-1) * k
    if total.size != layout.size or not np.isfinite(total).all():
        raise SecureSumError(f"secure sum has {total.size} entries (expected {layout.size}) or is not finite")
    p = layout.n_params
    counts = {key: int(round(v * layout.scale)) for key, v in zip(layout.count_keys, total[p:p + len(layout.count_keys)])}
    contributors = int(round(total[-1]))
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, shape, key in zip(layout.names, layout.shapes, layout.keys):
        size = math.prod(shape)
        old = np.asarray(global_w[name], dtype=np.float64)
        if counts[key] > 0:
            out[name] = (old + (total[start:start + size] / (counts[key] / layout.scale)).reshape(shape)
                         ).astype(np.float32)
        else:
            out[name] = old.astype(np.float32)
        start += size
    return SecureSum(weights=out, counts=counts, contributors=contributors)


def secure_config_problem(strategy: str, central_dp: bool, num_shares: float, threshold: float,
                          clipping_range: float, quantization_range: int) -> str | None:
    """Why a secure-aggregation configuration cannot work (None when it can); names the config keys."""
    if strategy in ROBUST_STRATEGIES:
        return (f"strategy '{strategy}' needs every site's value of every coordinate, but with secure-aggregation: "
                f"true the server sees only their sum; use strategy modality_aware, fedavg, fedprox, fedadam or "
                f"fedyogi, or set secure-aggregation: false")
    if central_dp:
        return ("central-dp clips each site's update on the server, which secure aggregation hides; set central-dp: "
                "false (per-site DP-SGD, dp: true, works with secure-aggregation)")
    if not (0 < num_shares <= 1 or num_shares >= 3):
        return f"secagg-num-shares must be a fraction in (0, 1] or a count >= 3, got {num_shares}"
    if not (0 < threshold <= 1 or threshold >= 2):
        return f"secagg-reconstruction-threshold must be a fraction in (0, 1] or a count >= 2, got {threshold}"
    if num_shares >= 3 and threshold >= 2 and threshold >= num_shares:
        return f"secagg-reconstruction-threshold ({threshold:g}) must be below secagg-num-shares ({num_shares:g})"
    if not clipping_range >= 1:
        return (f"secagg-clipping-range must be >= 1 (the uploaded counts are fractions up to 1), got "
                f"{clipping_range}")
    if not 2 <= quantization_range <= 2 ** 28:
        return (f"secagg-quantization-range must lie in [2, 2**28] (sites x range must stay below SecAgg+'s 2**32 "
                f"modulus), got {quantization_range}")
    return None
