"""EHR readers: MIMIC-benchmark per-stay CSVs and long tables -> discretized ``[T, 76]``; static tabular columns.

The discretizer follows the MIMIC-III benchmark: step ``k`` covers hours ``(k*step, (k+1)*step]`` (times <= 0 go
to step 0; times after ``ehr-max-hours`` are not used); the last observation inside a step wins; a step without an
observation repeats the previous value, or the benchmark's normal value before the first observation; the 17
masks mark steps with a real observation. Continuous columns are standardized later with federated statistics.
"""
from __future__ import annotations

import csv
import logging

import numpy as np
import pandas as pd

from ..batch import KIND_SEQUENCE, KIND_TABULAR
from . import mimic_schema as S
from .base import ModalityData, ReadContext, empty
from .descriptor import ModalityDesc, read_table
from .problems import shown

log = logging.getLogger(__name__)

LONG_COLUMNS = ("patient", "time", "variable", "value")
_VAR_INDEX = {v: i for i, v in enumerate(S.VARIABLES)}


def num_steps(cfg) -> int:
    """Number of time steps T = ehr-max-hours / ehr-step-hours (rounded up)."""
    return int(np.ceil(cfg.ehr_max_hours / cfg.ehr_step_hours - 1e-9))


def _category_maps() -> dict[str, dict]:
    """Per categorical variable: exact string -> index, plus numeric value -> index for numeric categories."""
    maps = {}
    for var, values in S.CATEGORICAL_VALUES.items():
        m: dict = {v: k for k, v in enumerate(values)}
        for k, v in enumerate(values):
            try:
                m.setdefault(float(v), k)
            except ValueError:
                pass
        maps[var] = m
    return maps


_CAT_MAPS = _category_maps()
_NORMAL_CODE = np.array([_CAT_MAPS[v][S.NORMAL_VALUES[v]] if v in _CAT_MAPS else float(S.NORMAL_VALUES[v])
                         for v in S.VARIABLES])


def read_ehr_stays(ctx: ReadContext, desc: ModalityDesc) -> ModalityData:
    """Read one benchmark per-stay CSV (``Hours`` + 17 variables) per patient."""
    n, t = len(ctx.cohort), num_steps(ctx.cfg)
    if str(desc.options.get("format", "mimic-csv")) != "mimic-csv":
        ctx.problem(desc.name, None, "site.yaml", None, f"modalities.{desc.name}.format",
                    f"format {desc.options.get('format')!r} unknown; use mimic-csv", "bad_value")
        return _result(desc, *empty(n, (t, S.FEATURES_PER_STEP)))
    cells: dict[str, list] = {k: [] for k in ("patient", "time", "variable", "value", "row", "file")}
    rows = []
    for i, ref in ctx.references(desc):
        path = ctx.resolve_file(desc, i, ref)
        if path is None:
            continue
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                table = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            ctx.problem(desc.name, i, ref, None, None, f"cannot read as CSV ({exc})", "unreadable")
            continue
        header = [h.strip() for h in table[0]] if table else []
        unknown = [c for c in header if c not in S.CSV_COLUMNS]
        for c in unknown:
            ctx.problem(desc.name, i, ref, None, c, f"unknown column '{c}'; a per-stay CSV has 'Hours' and the 17 "
                        "benchmark variables", "unknown_column")
        if S.TIME_COLUMN not in header:
            ctx.problem(desc.name, i, ref, None, S.TIME_COLUMN, "no 'Hours' column", "missing_column")
            continue
        if unknown:
            continue
        tcol = header.index(S.TIME_COLUMN)
        vcols = [(j, h) for j, h in enumerate(header) if j != tcol]
        for r, line in enumerate(table[1:], start=1):
            if len(line) != len(header):
                if any(c.strip() for c in line):
                    ctx.problem(desc.name, i, ref, r, None, f"{len(line)} cells, the header has {len(header)}",
                                "malformed_row")
                continue
            hour = line[tcol].strip()
            try:
                ok = np.isfinite(float(hour))
            except ValueError:
                ok = False
            if not ok:
                ctx.problem(desc.name, i, ref, r, S.TIME_COLUMN, f"Hours {shown(hour)} is not a finite number", "nan")
                continue
            for j, var in vcols:
                value = line[j]
                if value and value.strip():
                    cells["patient"].append(i)
                    cells["time"].append(hour)
                    cells["variable"].append(var)
                    cells["value"].append(value)
                    cells["row"].append(r)
                    cells["file"].append(ref)
        rows.append(i)
    frames = [pd.DataFrame(cells)] if cells["patient"] else []
    return _discretize(ctx, desc, frames, n, t, rows)


def read_ehr_long(ctx: ReadContext, desc: ModalityDesc) -> ModalityData:
    """Read a long table ``patient, time, variable, value``; the cohort column holds the patient key."""
    n, t = len(ctx.cohort), num_steps(ctx.cfg)
    path = ctx.resolve_table(desc)
    if path is None:
        return _result(desc, *empty(n, (t, S.FEATURES_PER_STEP)))
    rel = ctx.rel(path)
    try:
        df = read_table(path)
    except ValueError as exc:
        ctx.problem(desc.name, None, rel, None, None, str(exc), "unreadable")
        return _result(desc, *empty(n, (t, S.FEATURES_PER_STEP)))
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        ctx.problem(desc.name, None, rel, None, ", ".join(missing), f"long table needs columns {LONG_COLUMNS}",
                    "missing_column")
        return _result(desc, *empty(n, (t, S.FEATURES_PER_STEP)))
    keys = ctx.table_keys(desc)
    df["row"] = np.arange(len(df)) + 1
    df["file"] = rel
    df["patient"] = df["patient"].astype(str).str.strip().map(keys)
    orphans = int(df["patient"].isna().sum())
    if orphans:
        ctx.notes.append(f"{desc.name}: {orphans} row(s) of {rel} belong to no cohort patient (not used)")
    df = df[df["patient"].notna()].copy()
    df["patient"] = df["patient"].astype(int)
    bad_var = ~df["variable"].isin(S.VARIABLES)
    for r in df[bad_var].itertuples():
        ctx.problem(desc.name, r.patient, rel, r.row, "variable", f"unknown variable {shown(r.variable)}; use one of the "
                    "17 benchmark variable names (omnifuse_core.data.mimic_schema.VARIABLES)", "unknown_variable")
    with_rows = set(df["patient"].tolist())
    without = [i for i in keys.values() if i not in with_rows]
    if without:
        ctx.notes.append(f"{desc.name}: {len(without)} patient(s) have no row in {rel} (treated as missing)")
    return _discretize(ctx, desc, [df[~bad_var]], n, t, sorted(with_rows))


def _discretize(ctx: ReadContext, desc: ModalityDesc, frames: list[pd.DataFrame], n: int, t: int,
                rows: list[int]) -> ModalityData:
    values, present = empty(n, (t, S.FEATURES_PER_STEP))
    present[rows] = True
    if not frames:
        return _result(desc, values, present)
    df = pd.concat(frames, ignore_index=True)
    df["value"] = df["value"].astype(str).str.strip()
    df = df[df["value"] != ""]
    hours = pd.to_numeric(df["time"], errors="coerce").to_numpy(dtype=float)
    var = df["variable"].map(_VAR_INDEX).to_numpy(dtype=int)
    code = np.full(len(df), np.nan)
    cont = ~df["variable"].isin(list(S.CATEGORICAL_VALUES)).to_numpy()
    code[cont] = pd.to_numeric(df["value"][cont], errors="coerce").to_numpy(dtype=float)
    for v, m in _CAT_MAPS.items():
        sel = (df["variable"] == v).to_numpy()
        if sel.any():
            vals = df["value"][sel]
            mapped = vals.map(m)
            numeric = pd.to_numeric(vals, errors="coerce").map(m)
            code[sel] = mapped.fillna(numeric).to_numpy(dtype=float)
    bad = ~np.isfinite(hours) | ~np.isfinite(code)
    for k in np.flatnonzero(bad):
        r = df.iloc[k]
        if not np.isfinite(hours[k]):
            fld, reason = "time", f"time {shown(r['time'])} is not a finite number of hours"
        elif cont[k]:
            fld, reason = r["variable"], f"value {shown(r['value'])} is not a finite number"
        else:
            fld, reason = r["variable"], (f"value {shown(r['value'])} is not one of the benchmark's categories "
                                          f"{S.CATEGORICAL_VALUES[r['variable']]}")
        ctx.problem(desc.name, int(r["patient"]), r["file"], int(r["row"]), fld, reason, "nan" if cont[k] or
                    fld == "time" else "unknown_category")
    keep = ~bad & (hours <= ctx.cfg.ehr_max_hours + 1e-6)
    patient = df["patient"].to_numpy(dtype=int)[keep]
    hours, var, code = hours[keep], var[keep], code[keep]
    step = np.clip(np.ceil(hours / ctx.cfg.ehr_step_hours - 1e-6).astype(int) - 1, 0, t - 1)
    nv = S.NUM_VARIABLES
    key = (patient * t + step) * nv + var
    order = np.lexsort((hours, key))  # by key, then time: the last observation in a step wins
    key_s = key[order]
    last = np.r_[key_s[1:] != key_s[:-1], True] if len(key_s) else np.zeros(0, dtype=bool)
    obs = np.full(n * t * nv, np.nan)
    obs[key_s[last]] = code[order][last]
    obs = obs.reshape(n, t, nv)
    mask = ~np.isnan(obs)
    idx = np.where(mask, np.arange(t)[None, :, None], -1)
    idx = np.maximum.accumulate(idx, axis=1)
    filled = np.take_along_axis(obs, np.maximum(idx, 0), axis=1)
    filled = np.where(idx < 0, _NORMAL_CODE[None, None, :], filled)
    for vi, v in enumerate(S.VARIABLES):
        start = S.BLOCK_START[v]
        if v in _CAT_MAPS:
            onehot = np.eye(len(S.CATEGORICAL_VALUES[v]), dtype=np.float32)[filled[:, :, vi].astype(int)]
            values[:, :, start:start + onehot.shape[-1]] = onehot
        else:
            values[:, :, start] = filled[:, :, vi]
    values[:, :, S.MASK_START:] = mask
    values[~present] = 0
    return _result(desc, values, present)


def _result(desc: ModalityDesc, values: np.ndarray, present: np.ndarray) -> ModalityData:
    return ModalityData(desc.name, KIND_SEQUENCE, tuple(values.shape[1:]), values, present,
                        feature_names=list(S.CONTINUOUS), feature_index=list(S.CONTINUOUS_COLUMNS))


def read_tabular(ctx: ReadContext, desc: ModalityDesc) -> ModalityData:
    """Static numeric columns of the cohort table. All cells empty = missing; some empty = filled with the mean."""
    cols = [str(c) for c in desc.options.get("columns", [])]
    n = len(ctx.cohort)
    values, present = empty(n, (len(cols),))
    absent = [c for c in cols if c not in ctx.cohort.table.columns]
    if not cols or absent:
        ctx.problem(desc.name, None, ctx.cohort.file, None, ", ".join(absent) or f"modalities.{desc.name}.columns",
                    "tabular modality needs columns: [...] naming cohort columns that exist", "missing_column")
        return ModalityData(desc.name, KIND_TABULAR, (len(cols),), values, present, cols, list(range(len(cols))))
    raw = ctx.cohort.table[cols].apply(lambda s: s.astype(str).str.strip())
    num = raw.apply(lambda s: pd.to_numeric(s, errors="coerce")).to_numpy(dtype=float)
    empty_cell = (raw == "").to_numpy()
    bad = ~np.isfinite(num) & ~empty_cell
    for i, j in zip(*np.nonzero(bad)):
        ctx.problem(desc.name, int(i), ctx.cohort.file, int(i) + 1, cols[j],
                    f"value {shown(raw.iat[i, j])} is not a finite number", "nan")
    present[:] = ~empty_cell.all(axis=1)
    filled = int((empty_cell & present[:, None]).sum())
    if filled:
        ctx.notes.append(f"{desc.name}: {filled} empty cell(s) filled with the feature mean")
    values[:] = np.where(np.isfinite(num), num, np.nan).astype(np.float32)
    values[~present] = 0
    return ModalityData(desc.name, KIND_TABULAR, (len(cols),), values, present, cols, list(range(len(cols))))
