"""Validate every site reply before it can touch the global model (DESIGN §7).

A reply is accepted only when its arrays have exactly the expected names, shapes and dtype (float32), are finite,
move the model by at most ``max_update_norm`` (L2 over all parameters), and its counts are non-negative integers
that are mutually consistent. A bad reply raises :class:`ReplyRejected` naming the site and the reason; the caller
logs it and aggregates without it.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import numpy as np

from omnifuse_core.protocol import COUNT_ANY, COUNT_N

log = logging.getLogger(__name__)

MAX_PLAUSIBLE_COUNT = 100_000_000  # no single hospital has more training samples than this


class ReplyRejected(ValueError):
    """A site's reply failed validation; ``site`` and ``reason`` say which and why."""

    def __init__(self, site: str, reason: str) -> None:
        super().__init__(f"reply from site '{site}' rejected: {reason}")
        self.site = site
        self.reason = reason


def validate_arrays(site: str, arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]],
                    global_w: Mapping[str, np.ndarray], max_update_norm: float) -> None:
    """Check names, shapes, dtype, finiteness and update norm of a reply's arrays.

    Args:
        site: site name (for the error message).
        arrays: the reply's ``name -> ndarray``.
        expected: ``name -> shape`` of the global model's trainable parameters.
        global_w: the global weights that were sent (the update is ``arrays - global_w``).
        max_update_norm: upper bound on the L2 norm of the whole update.

    Raises:
        ReplyRejected: on the first class of problem found (all offending names listed).
    """
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ReplyRejected(site, f"array keys differ from the model's trainable parameters "
                                  f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                  f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''})")
    bad_dtype = [n for n, a in arrays.items() if np.asarray(a).dtype != np.float32]
    if bad_dtype:
        raise ReplyRejected(site, f"arrays must be float32; got {np.asarray(arrays[bad_dtype[0]]).dtype} "
                                  f"for {bad_dtype[:5]}")
    bad_shape = [f"{n}: {tuple(np.shape(arrays[n]))} != {tuple(s)}" for n, s in expected.items()
                 if tuple(np.shape(arrays[n])) != tuple(s)]
    if bad_shape:
        raise ReplyRejected(site, f"shape mismatch: {bad_shape[:5]}")
    non_finite = [n for n, a in arrays.items() if not np.isfinite(a).all()]
    if non_finite:
        raise ReplyRejected(site, f"non-finite values (NaN/inf) in {non_finite[:5]}")
    sq = 0.0
    for n, a in arrays.items():
        d = a.astype(np.float64) - np.asarray(global_w[n], dtype=np.float64)
        sq += float(np.dot(d.ravel(), d.ravel()))
    norm = math.sqrt(sq)
    if not norm <= max_update_norm:
        raise ReplyRejected(site, f"update norm {norm:.4g} exceeds max-update-norm {max_update_norm:.4g}")


def validate_counts(site: str, counts: Mapping[str, float | int], modalities: Sequence[str]) -> dict[str, int]:
    """Check the per-modality training-sample counts and return them as ints.

    Args:
        site: site name (for the error message).
        counts: ``modality -> count`` plus ``any`` and ``n`` (as received).
        modalities: the configured modality names.

    Returns:
        The counts as ``dict[str, int]``.

    Raises:
        ReplyRejected: missing/unexpected keys, negative, non-integer or implausible values, or inconsistency
            (a modality count above ``any``, ``any`` above ``n``).
    """
    expected = set(modalities) | {COUNT_ANY, COUNT_N}
    if set(counts) != expected:
        raise ReplyRejected(site, f"count keys {sorted(counts)} differ from the expected {sorted(expected)}")
    out: dict[str, int] = {}
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ReplyRejected(site, f"count '{k}' is not a number: {v!r}")
        if not (math.isfinite(float(v)) and float(v) == int(v)):
            raise ReplyRejected(site, f"count '{k}' = {v!r} is not an integer")
        if not 0 <= int(v) <= MAX_PLAUSIBLE_COUNT:
            raise ReplyRejected(site, f"count '{k}' = {v!r} is outside [0, {MAX_PLAUSIBLE_COUNT}]")
        out[k] = int(v)
    over = [m for m in modalities if out[m] > out[COUNT_ANY]]
    if over or out[COUNT_ANY] > out[COUNT_N]:
        raise ReplyRejected(site, f"inconsistent counts {out}: need count(m) <= any <= n")
    return out
