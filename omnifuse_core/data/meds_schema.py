"""MEDS site inputs (issue 26): the MEDS root's files, their schemas, each patient's prediction time and split.

A MEDS root (Medical Event Data Standard, https://medical-event-data-standard.github.io) holds
``data/**/*.parquet`` (``subject_id`` int64, ``time`` timestamp[us], ``code`` string, optional ``numeric_value``
float32 / ``text_value``), ``metadata/dataset.json``, ``metadata/codes.parquet`` and
``metadata/subject_splits.parquet``; label files have ``subject_id, prediction_time`` and a value column. Schemas are
checked with the ``meds`` package: a column whose type can be cast without changing data (float64 values, int32
ids, timestamp[ns]) is cast with a note, anything else is a problem naming the file and the column.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ReadContext
from .descriptor import ModalityDesc, safe_path
from .problems import shown

log = logging.getLogger(__name__)

#: MEDS split names -> this framework's (``metadata/subject_splits.parquet``)
MEDS_SPLITS = {"train": "train", "tuning": "val", "held_out": "test"}
_US_PER_HOUR = 3_600_000_000


@dataclass
class MedsInputs:
    """What the event reader needs: the shards and, per cohort row, the subject and its prediction time.

    Args:
        root: the MEDS root folder.
        shards: ``data/**/*.parquet`` files, sorted.
        subject: per cohort row, the MEDS ``subject_id`` (-1 = no EHR reference).
        prediction_us: per cohort row, the prediction time in microseconds since the epoch (int64; only rows
            with a subject and a prediction time are used).
        usable: rows with a subject and a valid prediction time.
        codes_metadata: codes listed in ``metadata/codes.parquet`` (None when the file is absent).
    """

    root: Path
    shards: list[Path] = field(default_factory=list)
    subject: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prediction_us: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    usable: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    codes_metadata: set[str] | None = None


def check_schema(schema_cls, arrow_schema, ctx: ReadContext, name: str, rel: str) -> bool:
    """Check a parquet file's schema against a ``meds`` schema; True when usable (exactly or after a safe cast:
    same type family, e.g. float64 -> float32, int32 -> int64, timestamp[ns] -> timestamp[us])."""
    from flexible_schema import SchemaValidationError

    try:
        schema_cls.validate(arrow_schema)
        return True
    except SchemaValidationError as strict:
        want = schema_cls.schema()
        wrong = [f"{f.name} (want {want.field(f.name).type}, got {f.type})" for f in arrow_schema
                 if f.name in want.names and not _same_family(want.field(f.name).type, f.type)]
        missing = [c for c in schema_cls.required_columns() if c not in arrow_schema.names]
        if wrong or missing:
            what = "; ".join(filter(None, [f"columns with incorrect types: {', '.join(wrong)}" if wrong else "",
                                           f"missing required columns: {', '.join(missing)}" if missing else ""]))
            ctx.problem(name, None, rel, None, ", ".join([w.split(" ")[0] for w in wrong] + missing) or None,
                        f"not a MEDS {schema_cls.__name__} file: {what}; re-export it with the MEDS types "
                        "(meds-etl / MEDS-Transforms write them)", "bad_schema")
            return False
        ctx.notes.append(f"{name}: {rel}: {_one_line(strict)}; cast without changing data")
        return True


def _same_family(want, got) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(got):
        got = got.value_type
    families = (pa.types.is_integer, pa.types.is_timestamp, pa.types.is_boolean, pa.types.is_list,
                lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
    if pa.types.is_floating(want):
        return pa.types.is_floating(got) or pa.types.is_integer(got) or pa.types.is_null(got)
    return pa.types.is_null(got) or any(f(want) and f(got) for f in families)


def meds_inputs(ctx: ReadContext, desc: ModalityDesc) -> MedsInputs | None:
    """Locate and check the MEDS root of an ``ehr-meds`` modality; None when it cannot be used at all."""
    import pyarrow.parquet as pq
    from meds import DataSchema, DatasetMetadataSchema

    name, n = desc.name, len(ctx.cohort)
    root_ref = str(desc.options.get("root", "meds"))
    root, reason = safe_path(ctx.site_dir, root_ref)
    if root is not None and not root.is_dir():
        root, reason = None, f"MEDS root {shown(root_ref)} is not a folder"
    if root is None:
        ctx.problem(name, None, "site.yaml", None, f"modalities.{name}.root", reason, "missing_file")
        return None
    out = MedsInputs(root, subject=np.full(n, -1, np.int64), prediction_us=np.zeros(n, np.int64),
                     usable=np.zeros(n, bool))
    shards = sorted((root / "data").rglob("*.parquet"))
    if not shards:
        ctx.problem(name, None, ctx.rel(root / "data"), None, None, "no data/*.parquet shard in the MEDS root; "
                    "point root: at the folder that holds data/ and metadata/", "missing_file")
        return None
    for shard in shards:
        try:
            ok = check_schema(DataSchema, pq.ParquetFile(shard).schema_arrow, ctx, name, ctx.rel(shard))
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            ctx.problem(name, None, ctx.rel(shard), None, None, f"cannot read as Parquet ({_one_line(exc)})",
                        "unreadable")
            ok = False
        if ok:
            out.shards.append(shard)
            ctx.files.add(shard)
    meta = root / "metadata" / "dataset.json"
    if meta.is_file():
        ctx.files.add(meta)
        try:
            DatasetMetadataSchema.validate(json.loads(meta.read_text()))
        except (ValueError, TypeError) as exc:  # JSONDecodeError and schema errors
            ctx.problem(name, None, ctx.rel(meta), None, None, f"not valid MEDS dataset metadata "
                        f"({_one_line(exc)})", "bad_schema")
    else:
        ctx.notes.append(f"{name}: no metadata/dataset.json in the MEDS root (optional; meds-etl writes it)")
    codes = root / "metadata" / "codes.parquet"
    _subjects(ctx, desc, out)
    for step, path in ((_codes, codes), (_prediction_times, None), (_splits, None)):
        try:
            step(ctx, desc, out) if path is None else step(ctx, desc, out, path)
        except (OSError, ValueError) as exc:  # a corrupt metadata or label Parquet file (ArrowInvalid: ValueError)
            where = getattr(exc, "meds_file", None) or (ctx.rel(path) if path else "meds metadata")
            ctx.problem(name, None, where, None, None, f"cannot read as Parquet ({_one_line(exc)}); re-export it",
                        "unreadable")
    return out


def _codes(ctx: ReadContext, desc: ModalityDesc, out: MedsInputs, codes: Path) -> None:
    import pyarrow.parquet as pq
    from meds import CodeMetadataSchema

    if codes.is_file():
        ctx.files.add(codes)
        if check_schema(CodeMetadataSchema, pq.ParquetFile(codes).schema_arrow, ctx, desc.name, ctx.rel(codes)):
            out.codes_metadata = set(pq.read_table(codes, columns=["code"]).column("code").to_pylist())


def _subjects(ctx: ReadContext, desc: ModalityDesc, out: MedsInputs) -> None:
    """The cohort's EHR column holds each patient's MEDS ``subject_id`` (absent column: the patient id)."""
    for key, i in ctx.table_keys(desc).items():
        try:
            out.subject[i] = int(key)
        except ValueError:
            ctx.problem(desc.name, i, ctx.cohort.file, i + 1, desc.ref_column, f"subject_id {shown(key)} is not an "
                        "integer (MEDS subject ids are int64)", "bad_value")


def _prediction_times(ctx: ReadContext, desc: ModalityDesc, out: MedsInputs) -> None:
    """Prediction time per patient: the cohort's ``prediction-time-column`` or the MEDS label file."""
    name, has = desc.name, out.subject >= 0
    col = desc.options.get("prediction-time-column")
    if col:
        import pandas as pd

        col = str(col)
        if col not in ctx.cohort.table.columns:
            ctx.problem(name, None, ctx.cohort.file, None, col, f"prediction-time column '{col}' is not in the "
                        "cohort table", "missing_column")
            return
        raw = ctx.cohort.table[col].astype(str).str.strip()
        times = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        for i in np.flatnonzero(has):
            if pd.isna(times.iloc[i]):
                ctx.problem(name, i, ctx.cohort.file, i + 1, col, f"prediction time {shown(raw.iloc[i])} is not an "
                            "ISO 8601 date-time (e.g. 2100-01-03T00:00:00)", "bad_value")
                continue
            out.prediction_us[i] = times.iloc[i].value // 1000
            out.usable[i] = True
        return
    ref = desc.options.get("labels")
    if not ref:
        ctx.problem(name, None, "site.yaml", None, f"modalities.{name}.labels", "an ehr-meds modality needs each "
                    "patient's prediction time: set labels: (a MEDS label file) or prediction-time-column: (a "
                    "cohort column); without it no event could be kept out of the model", "missing_labels")
        return
    path, reason = safe_path(ctx.site_dir, str(ref))
    files = [] if path is None else sorted(path.rglob("*.parquet")) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        ctx.problem(name, None, "site.yaml", None, f"modalities.{name}.labels",
                    reason or f"label file {shown(ref)} does not exist", "missing_file")
        return
    import pyarrow.parquet as pq
    from meds import LabelSchema

    row_of = {int(s): i for i, s in enumerate(out.subject) if s >= 0}
    seen: dict[int, tuple[str, int]] = {}
    for f in files:
        rel = ctx.rel(f)
        ctx.files.add(f)
        try:
            if not check_schema(LabelSchema, pq.ParquetFile(f).schema_arrow, ctx, name, rel):
                continue
            table = LabelSchema.align(pq.read_table(f, columns=["subject_id", "prediction_time"]))
        except (OSError, ValueError) as exc:
            exc.meds_file = rel
            raise
        subj = table.column("subject_id").to_numpy()
        pt = table.column("prediction_time").cast("int64").to_numpy()
        for r, (s, t) in enumerate(zip(subj.tolist(), pt.tolist()), start=1):
            i = row_of.get(s)
            if i is None:
                continue
            if s in seen:
                ctx.problem(name, i, rel, r, "prediction_time", f"subject {s} has a second label row (first: "
                            f"{seen[s][0]} row {seen[s][1]}); one prediction time per patient is supported: keep "
                            "one row per subject in the label file", "duplicate_id")
                continue
            seen[s] = (rel, r)
            out.prediction_us[i], out.usable[i] = t, True
    unlabelled = [i for i in np.flatnonzero(has) if not out.usable[i]]
    if unlabelled:
        ctx.notes.append(f"{name}: {len(unlabelled)} patient(s) have no row in the label file {ref} (no prediction "
                         "time: EHR treated as missing)")


def _splits(ctx: ReadContext, desc: ModalityDesc, out: MedsInputs) -> None:
    """Check ``metadata/subject_splits.parquet``; it sets the split when the cohort table has no split column."""
    import pyarrow.parquet as pq
    from meds import SubjectSplitSchema

    from .problems import Problem

    path = out.root / "metadata" / "subject_splits.parquet"
    if not path.is_file():
        return
    rel, name = ctx.rel(path), desc.name
    ctx.files.add(path)
    try:
        if not check_schema(SubjectSplitSchema, pq.ParquetFile(path).schema_arrow, ctx, name, rel):
            return
        table = SubjectSplitSchema.align(pq.read_table(path))
    except (OSError, ValueError) as exc:
        exc.meds_file = rel
        raise
    row_of = {int(s): i for i, s in enumerate(out.subject) if s >= 0}
    cohort = ctx.cohort
    from_meds = not (ctx.split_column and ctx.split_column in cohort.table.columns)
    unknown, differ = 0, 0
    for r, (s, split) in enumerate(zip(table.column("subject_id").to_pylist(), table.column("split").to_pylist()),
                                   start=1):
        i = row_of.get(s)
        ours = MEDS_SPLITS.get(split)
        if ours is None:
            unknown += 1
            if i is not None and from_meds:
                cohort.row_ok[i] = False
                ctx.problems.append(Problem(rel, r, "split", f"split {shown(split)} of subject {s} is not one of "
                                            f"{', '.join(MEDS_SPLITS)}; rename it (or give the cohort a split "
                                            "column)", "bad_split", "row", patient=i))
            continue
        if i is None:
            continue
        if from_meds:
            cohort.split[i] = ours
        elif cohort.split[i] != ours:
            differ += 1
    if unknown and not from_meds:
        ctx.notes.append(f"{name}: {unknown} row(s) of {rel} have a split name other than "
                         f"{', '.join(MEDS_SPLITS)} (the cohort's split column is used)")
    if differ:
        ctx.notes.append(f"{name}: {differ} patient(s) have another split in {rel} than in {cohort.file}; the "
                         "cohort table's split column wins")


def hours(us: np.ndarray) -> np.ndarray:
    """Microseconds -> hours (float64)."""
    return np.asarray(us, dtype=np.float64) / _US_PER_HOUR


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
