"""``ehr-meds``: a site's MEDS events, read lazily shard by shard, behind the prediction-time leakage guard.

Each ``data/**/*.parquet`` shard is read in record batches of ``BATCH_ROWS`` rows and only four columns
(``subject_id, time, code, numeric_value``); the whole database is never in memory. Per event:

* **leakage guard** — an event is used only when its ``time`` is *strictly before* the patient's prediction time
  and, with ``ehr-look-back-hours`` > 0, not earlier than that many hours before it. Static events (null ``time``)
  are used. Events at or after the prediction time are counted (``after_prediction``) and never kept;
* the most recent ``ehr-max-events`` used events per patient are kept (site-local code ids, value, hours before the
  prediction time); counts of training patients per code and per-code sums of ``numeric_value`` over training
  events feed the federated vocabulary and normalisation (:mod:`omnifuse_core.data.events`).

MEDS requires each subject's rows to be contiguous and sorted by time: a violation is a problem for that patient
(file, row), as is a subject split over two shards. Subjects without a cohort row are counted, not used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..batch import KIND_EVENTS
from .base import ModalityData, ReadContext, empty
from .descriptor import ModalityDesc
from .events import EVENT_FEATURES
from .meds_schema import MedsInputs, hours, meds_inputs

log = logging.getLogger(__name__)

BATCH_ROWS = 1 << 18
COMPACT_AT = 1 << 22  # pending events before the per-patient tail is cut to ehr-max-events
_NULL = np.iinfo(np.int64).min
_US_PER_HOUR = 3_600_000_000


@dataclass
class EventData:
    """The used events of one site (after the leakage guard), grouped by cohort row, in time order.

    Args:
        codes: site-local code table (local id -> MEDS code).
        row, code, value, hours_before: per kept event: cohort row, local code id, ``numeric_value`` (NaN = none),
            hours before the prediction time (NaN = static event).
        train_patients: per local code, training patients with at least one used event of it.
        train_sum, train_sumsq, train_count: per local code, sums of ``numeric_value`` over used training events.
        counts: event counts (read, used, after_prediction, before_window, not_in_cohort, static).
    """

    codes: list[str]
    row: np.ndarray
    code: np.ndarray
    value: np.ndarray
    hours_before: np.ndarray
    train_patients: np.ndarray
    train_sum: np.ndarray
    train_sumsq: np.ndarray
    train_count: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def read_ehr_meds(ctx: ReadContext, desc: ModalityDesc) -> ModalityData:
    """Read an ``ehr-meds`` modality (see the module docstring); values are filled later from the vocabulary."""
    n, length = len(ctx.cohort), int(ctx.cfg.ehr_max_events)
    values, present = empty(n, (length, EVENT_FEATURES))
    inputs = meds_inputs(ctx, desc)
    if inputs is None:
        return ModalityData(desc.name, KIND_EVENTS, (length, EVENT_FEATURES), values, present)
    train = (ctx.cohort.split == "train") & ctx.cohort.row_ok & inputs.usable
    stream = _Stream(ctx, desc, inputs, train, length)
    for shard in inputs.shards:
        stream.read(shard)
    events = stream.finish()
    present[np.unique(events.row)] = True
    _notes(ctx, desc, inputs, events, present)
    return ModalityData(desc.name, KIND_EVENTS, (length, EVENT_FEATURES), values, present, events=events)


class _Stream:
    """Accumulates the used events of every shard, batch by batch (bounded memory)."""

    def __init__(self, ctx: ReadContext, desc: ModalityDesc, inputs: MedsInputs, train: np.ndarray,
                 length: int) -> None:
        self.ctx, self.desc, self.inputs, self.train, self.length = ctx, desc, inputs, train, length
        self.lookback_us = int(float(ctx.cfg.ehr_look_back_hours) * _US_PER_HOUR)
        with_subject = np.flatnonzero(inputs.subject >= 0)
        order = np.argsort(inputs.subject[with_subject], kind="stable")
        self.keys, self.rows = inputs.subject[with_subject][order], with_subject[order]
        self.code_id: dict[str, int] = {}
        self.pending: list[tuple[np.ndarray, ...]] = []
        self.n_pending = 0
        self.pairs: list[np.ndarray] = []
        self.sums = np.zeros((3, 0))
        self.started = np.zeros(len(inputs.subject), bool)  # row seen in an earlier run of rows
        self.bad = np.zeros(len(inputs.subject), bool)
        self.counts = dict.fromkeys(("read", "used", "after_prediction", "before_window", "not_in_cohort",
                                     "static"), 0)

    def read(self, shard) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from flexible_schema import TableValidationError
        from meds import DataSchema

        rel = self.ctx.rel(shard)
        cols = [c for c in ("subject_id", "time", "code", "numeric_value") if c in pq.ParquetFile(shard).schema_arrow.names]
        prev = (None, _NULL)  # (subject, time) of the previous row in this shard
        offset = 0
        try:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=BATCH_ROWS, columns=cols):
                try:
                    table = DataSchema.align(pa.Table.from_batches([batch]))
                except (TableValidationError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    self.ctx.problem(self.desc.name, None, rel, offset + 1, None, f"{' '.join(str(exc).split())}; "
                                     "MEDS needs subject_id and code on every row, and values of the MEDS types",
                                     "bad_schema")
                    return
                prev = self._batch(table, rel, offset, prev)
                offset += table.num_rows
        except OSError as exc:  # a corrupt page: the rows before it are kept, the rest of the shard is not
            self.ctx.problem(self.desc.name, None, rel, offset + 1, None, f"cannot read the shard from this row on "
                             f"({' '.join(str(exc).split())}); re-export it", "unreadable")

    def _batch(self, table, rel: str, offset: int, prev: tuple) -> tuple:
        import pyarrow.compute as pc

        subj = table.column("subject_id").to_numpy()
        t = pc.fill_null(table.column("time").cast("int64"), _NULL).to_numpy()
        val = pc.fill_null(table.column("numeric_value").cast("float32"), np.nan).to_numpy(zero_copy_only=False)
        codes = table.column("code").combine_chunks().dictionary_encode()
        lut = np.array([self._code(c) for c in codes.dictionary.to_pylist()], dtype=np.int32)
        code = lut[codes.indices.to_numpy(zero_copy_only=False)] if len(lut) else np.zeros(0, np.int32)
        m = len(subj)
        self.counts["read"] += m
        pos = np.clip(np.searchsorted(self.keys, subj), 0, max(len(self.keys) - 1, 0))
        found = (self.keys[pos] == subj) if len(self.keys) else np.zeros(m, bool)
        row = np.where(found, self.rows[pos] if len(self.rows) else 0, -1)
        self.counts["not_in_cohort"] += int((~found).sum())
        # MEDS order: a subject's rows contiguous, sorted by time (static rows, null time, first)
        prev_s = np.r_[prev[0] if prev[0] is not None else -1, subj[:-1]]
        prev_t = np.r_[prev[1], t[:-1]]
        same = prev_s == subj
        if prev[0] is None:
            same[0] = False
        for k in np.flatnonzero(same & (t < prev_t) & (row >= 0)):
            self._bad(int(row[k]), rel, int(offset + k + 1), f"events of subject {subj[k]} are not sorted by time (this "
                      "row is earlier than the one before); MEDS shards must be sorted by subject_id, then time")
        for k in np.flatnonzero(~same & (row >= 0)):
            r = int(row[k])
            if self.started[r]:
                self._bad(r, rel, int(offset + k + 1), f"rows of subject {subj[k]} are not contiguous (or the subject is "
                          "in two shards); MEDS keeps each subject's rows together in one shard")
            self.started[r] = True
        ok = row >= 0
        pt = np.where(ok, self.inputs.prediction_us[np.maximum(row, 0)], 0)
        ok &= self.inputs.usable[np.maximum(row, 0)]
        static = t == _NULL
        after = ok & ~static & (t >= pt)
        early = ok & ~static & ~after & (self.lookback_us > 0) & (t < pt - self.lookback_us)
        use = ok & ~after & ~early
        self.counts["after_prediction"] += int(after.sum())
        self.counts["before_window"] += int(early.sum())
        self.counts["static"] += int((use & static).sum())
        self.counts["used"] += int(use.sum())
        r, c, v = row[use].astype(np.int32), code[use], val[use].astype(np.float32)
        hb = np.where(static[use], np.nan, hours(pt[use] - t[use])).astype(np.float32)
        self.pairs.append(np.unique((r.astype(np.int64) << 32) | c.astype(np.int64)))
        tr = self.train[r] & np.isfinite(v)
        if len(self.code_id) > self.sums.shape[1]:
            self.sums = np.pad(self.sums, ((0, 0), (0, len(self.code_id) - self.sums.shape[1])))
        for j, w in enumerate((v[tr].astype(np.float64), v[tr].astype(np.float64) ** 2, np.ones(int(tr.sum())))):
            self.sums[j] += np.bincount(c[tr], weights=w, minlength=self.sums.shape[1])
        self.pending.append((r, c, v, hb))
        self.n_pending += len(r)
        if self.n_pending > COMPACT_AT:
            self.pending = [self._tail()]
            self.n_pending = len(self.pending[0][0])
        return (subj[-1], t[-1]) if m else prev

    def _code(self, code: str) -> int:
        return self.code_id.setdefault(code, len(self.code_id))

    def _bad(self, row: int, rel: str, line: int, reason: str) -> None:
        if not self.bad[row]:
            self.bad[row] = True
            self.ctx.problem(self.desc.name, row, rel, line, "time" if "sorted" in reason else "subject_id", reason,
                             "unsorted")

    def _tail(self) -> tuple[np.ndarray, ...]:
        """The pending events cut to the last ``length`` per patient (kept in time order)."""
        r, c, v, hb = (np.concatenate(a) for a in zip(*self.pending)) if self.pending else (
            np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))
        order = np.argsort(r, kind="stable")
        r, c, v, hb = r[order], c[order], v[order], hb[order]
        counts = np.bincount(r, minlength=len(self.started)) if len(r) else np.zeros(len(self.started), int)
        start = np.r_[0, np.cumsum(counts)[:-1]]
        from_end = counts[r] - 1 - (np.arange(len(r)) - start[r])
        keep = from_end < self.length
        return r[keep], c[keep], v[keep], hb[keep]

    def finish(self) -> EventData:
        r, c, v, hb = self._tail()
        keep = ~self.bad[r]
        n_codes = len(self.code_id)
        pairs = np.unique(np.concatenate(self.pairs)) if self.pairs else np.zeros(0, np.int64)
        p_row, p_code = (pairs >> 32).astype(np.int64), (pairs & 0xFFFFFFFF).astype(np.int64)
        sel = self.train[p_row] & ~self.bad[p_row]
        sums = np.pad(self.sums, ((0, 0), (0, n_codes - self.sums.shape[1])))
        return EventData(list(self.code_id), r[keep], c[keep], v[keep], hb[keep],
                         np.bincount(p_code[sel], minlength=n_codes), sums[0], sums[1], sums[2].astype(np.int64),
                         dict(self.counts))


def _notes(ctx: ReadContext, desc: ModalityDesc, inputs: MedsInputs, ev: EventData, present: np.ndarray) -> None:
    """Counted notes: nothing the reader leaves out is silent."""
    name, c = desc.name, ev.counts
    ctx.notes.append(f"{name}: {c['read']} MEDS event(s) read, {c['used']} before the prediction times "
                     f"({c['static']} static), {c['after_prediction']} at or after a prediction time left out "
                     f"(leakage guard), {c['before_window']} before the look-back window, {c['not_in_cohort']} of "
                     "subjects not in the cohort (not used)")
    without = int((inputs.usable & ~present).sum())
    if without:
        ctx.notes.append(f"{name}: {without} patient(s) have no event before their prediction time (EHR treated as "
                         "missing)")
    k = int(ctx.cfg.ehr_vocab_min_patients)
    rare = ev.train_patients < k
    if rare.any():
        n_ev = int(np.isin(ev.code, np.flatnonzero(rare)).sum())
        ctx.notes.append(f"{name}: {int(rare.sum())} of {len(ev.codes)} code(s) are held by fewer than {k} training "
                         f"patients here: they never leave the site (small-cell suppression), and their {n_ev} kept "
                         "event(s) get the unknown token unless another site's vocabulary has them")
    if inputs.codes_metadata is not None:
        unlisted = [x for x in ev.codes if x not in inputs.codes_metadata]
        if unlisted:
            ctx.notes.append(f"{name}: {len(unlisted)} code(s) are not in metadata/codes.parquet (e.g. "
                             f"{', '.join(unlisted[:3])})")
