"""Event sequences (``ehr-meds``): the federated code vocabulary and the per-event model input.

**Vocabulary with small-cell suppression.** A site sends, per code held by at least ``k`` of its *training*
patients (``ehr-vocab-min-patients``, default 10), the code string, that patient count, and the sums ``sum``,
``sumsq``, ``count`` of its ``numeric_value`` over training events. A code held by fewer than ``k`` patients at a
site never leaves it (not even its name); the site also sends how many codes it suppressed (one number). The
server adds the counts by code and keeps the top ``ehr-vocab-size`` codes by patients (ties by code), in that order.

**Per event** the model sees 4 numbers: the vocabulary index (0 = padding, 1 = unknown code, 2.. = the
vocabulary), the value standardized per code with the federated mean and standard deviation (clipped to ±10;
0 without a value), a has-value flag, and a time bucket (0 = padding, 1 = static, 2.. = ``floor(log2(1 + hours
before the prediction time))``, capped). A patient's ``ehr-max-events`` most recent events are right-aligned
(the last slot is the latest event); a patient without EHR is all zeros (padding), the modality's zero input.
"""
from __future__ import annotations

import logging

import numpy as np

from .stats import mean_std

log = logging.getLogger(__name__)

EVENT_FEATURES = 4
PAD, UNKNOWN, FIRST_CODE = 0, 1, 2
N_TIME_BUCKETS = 16
VALUE_CLIP = 10.0


def time_bucket(hours_before: np.ndarray) -> np.ndarray:
    """Time bucket per event (see the module docstring); NaN = static -> 1."""
    h = np.asarray(hours_before, dtype=np.float64)
    b = 2 + np.clip(np.floor(np.log2(1.0 + np.maximum(np.nan_to_num(h, nan=0.0), 0.0))), 0, N_TIME_BUCKETS - 3)
    return np.where(np.isnan(h), 1, b).astype(np.int64)


def site_vocab(events, k: int) -> dict:
    """A site's vocabulary message (small-cell suppression at ``k`` training patients)."""
    keep = np.flatnonzero(events.train_patients >= k)
    return {"k": int(k), "sites": 1, "suppressed": int(len(events.codes) - len(keep)),
            "codes": [events.codes[j] for j in keep], "patients": events.train_patients[keep].astype(int).tolist(),
            "sum": events.train_sum[keep].tolist(), "sumsq": events.train_sumsq[keep].tolist(),
            "count": events.train_count[keep].astype(int).tolist()}


def combine_vocab(entries: list[dict], size: int | None) -> dict:
    """Server side: add the sites' code counts and sums by code; keep the top ``size`` codes by patients."""
    acc: dict[str, np.ndarray] = {}
    for e in entries:
        for j, code in enumerate(e["codes"]):
            row = acc.setdefault(code, np.zeros(4))
            row += (e["patients"][j], e["sum"][j], e["sumsq"][j], e["count"][j])
    ranked = sorted(acc, key=lambda c: (-acc[c][0], c))
    if size is not None:
        ranked = ranked[:int(size)]
    col = lambda j, cast=float: [cast(acc[c][j]) for c in ranked]  # noqa: E731
    return {"k": max(int(e.get("k", 0)) for e in entries) if entries else 0,
            "sites": sum(int(e.get("sites", 1)) for e in entries),
            "suppressed": sum(int(e.get("suppressed", 0)) for e in entries),
            "codes": ranked, "patients": col(0, int), "sum": col(1), "sumsq": col(2), "count": col(3, int)}


def encode_events(d, vocab: dict, size: int) -> str | None:
    """Fill ``d.values`` ``[N, L, 4]`` from ``d.events`` with ``vocab`` (top ``size`` codes); returns a note
    counting the events whose code is outside the vocabulary (None when there are none)."""
    ev = d.events
    n, length = d.values.shape[0], d.values.shape[1]
    codes = list(vocab.get("codes", []))[:size]
    index = {c: FIRST_CODE + j for j, c in enumerate(codes)}
    lut = np.array([index.get(c, UNKNOWN) for c in ev.codes], dtype=np.int64)
    mean, std = mean_std({k: list(vocab.get(k, []))[:size] for k in ("sum", "sumsq", "count")})
    idx = lut[ev.code] if len(ev.code) else np.zeros(0, np.int64)
    known = idx >= FIRST_CODE
    has = np.isfinite(ev.value)
    z = np.zeros(len(idx))
    sel = known & has
    j = idx[sel] - FIRST_CODE
    z[sel] = np.clip((ev.value[sel].astype(np.float64) - mean[j]) / std[j], -VALUE_CLIP, VALUE_CLIP)
    counts = np.bincount(ev.row, minlength=n) if len(ev.row) else np.zeros(n, np.int64)
    start = np.r_[0, np.cumsum(counts)[:-1]]
    slot = length - counts[ev.row] + (np.arange(len(ev.row)) - start[ev.row])
    d.values[:] = 0
    d.values[ev.row, slot] = np.stack([idx, z, has, time_bucket(ev.hours_before)], axis=1).astype(np.float32)
    d.values[~d.present] = 0
    oov = ~known & d.present[ev.row]
    if not oov.any():
        return None
    return (f"{d.name}: {int(oov.sum())} of {len(idx)} event(s) ({len(np.unique(ev.code[oov]))} code(s)) are "
            "outside the federated vocabulary (held by too few patients, or beyond ehr-vocab-size): given the "
            "unknown token")
