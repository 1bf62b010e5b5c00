"""The cohort table: patient ids, splits and labels, validated row by row."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .descriptor import RaggedTableError, SiteDescriptor, read_table, safe_path
from .problems import Problem, shown

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Cohort:
    """The validated cohort table.

    Args:
        file: the table's path relative to the site folder.
        path: the table's path.
        table: every cell as a string (empty = ``""``).
        ids: patient id per row.
        split: ``train``/``val``/``test`` per row.
        row_ok: False for rows that cannot be used at all (bad label, duplicate id, bad split).
        labels: task kind -> float array ``[N, k]`` (NaN where invalid).
    """

    file: str
    path: Path
    table: pd.DataFrame
    ids: list[str]
    split: np.ndarray
    row_ok: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def read_cohort(site_dir: Path, desc: SiteDescriptor, tasks: list[str], *, seed: int, val_fraction: float,
                test_fraction: float, strict_columns: bool = True) -> tuple[Cohort | None, list[Problem]]:
    """Read and validate the cohort table.

    Args:
        site_dir: the site folder.
        desc: the parsed descriptor.
        tasks: task kinds whose labels are validated (the first one is the training task).
        seed: seed of the random split used when there is no split column.
        val_fraction: validation share of the random split.
        test_fraction: test share of the random split.
        strict_columns: report cohort columns the descriptor does not explain.

    Returns:
        ``(cohort, problems)``; ``cohort`` is None when the table cannot be read at all.
    """
    path, reason = safe_path(site_dir, desc.cohort)
    if path is None:
        return None, [Problem("site.yaml", None, "cohort", reason, "path_escapes_site", "site")]
    if not path.is_file():
        return None, [Problem("site.yaml", None, "cohort", f"cohort table {desc.cohort!r} does not exist",
                              "missing_file", "site")]
    try:
        table = read_table(path)
    except RaggedTableError as exc:
        return None, [Problem(desc.cohort, row, None, f"{n} fields where the header has a different count; fix "
                              "the quoting or stray delimiters on this row", "ragged_row", "site") for row, n in exc.rows]
    except ValueError as exc:
        return None, [Problem(desc.cohort, None, None, str(exc), "unreadable", "site")]
    table.columns = [str(c).strip() for c in table.columns]
    file, problems = desc.cohort, []
    if desc.id_column not in table.columns:
        return None, [Problem(file, None, desc.id_column, f"id column '{desc.id_column}' is missing (columns: "
                              f"{', '.join(table.columns)}); set id-column in site.yaml", "missing_column", "site")]
    ids = [s.strip() for s in table[desc.id_column].astype(str)]
    n = len(ids)
    row_ok = np.ones(n, dtype=bool)

    def bad_row(i: int, fld: str, reason: str, code: str) -> None:
        row_ok[i] = False
        problems.append(Problem(file, i + 1, fld, reason, code, "row", patient=i))

    first_seen: dict[str, int] = {}
    for i, pid in enumerate(ids):
        if not pid:
            bad_row(i, desc.id_column, "empty patient id; every row needs a unique id", "missing_id")
        elif pid in first_seen:
            bad_row(i, desc.id_column, f"duplicate patient id {shown(pid)} (first on row {first_seen[pid] + 1}); "
                    "keep one row per patient", "duplicate_id")
        else:
            first_seen[pid] = i
    split = _split(table, desc, ids, seed, val_fraction, test_fraction, bad_row)
    labels: dict[str, np.ndarray] = {}
    for task in tasks:
        cols = desc.labels.get(task)
        if not cols:
            problems.append(Problem("site.yaml", None, f"labels.{task}", f"no label columns declared for task "
                                    f"'{task}'; add labels: {{{task}: [...]}}", "missing_labels", "site"))
            continue
        missing = [c for c in cols if c not in table.columns]
        if missing:
            problems.append(Problem(file, None, ", ".join(missing), f"label column(s) {missing} declared for task "
                                    f"'{task}' are missing from the table", "missing_column", "site"))
            continue
        labels[task] = _labels(task, table, cols, desc, bad_row if task == tasks[0] else None, problems, file)
    if strict_columns:
        known = desc.known_columns()
        for col in table.columns:
            if col not in known:
                problems.append(Problem(file, None, col, f"unknown column '{col}': not an id, split, label or "
                                        "modality column; fix the name or list it under ignore-columns in site.yaml",
                                        "unknown_column", "column"))
    return Cohort(file, path, table, ids, split, row_ok, labels), problems


def _split(table: pd.DataFrame, desc: SiteDescriptor, ids: list[str], seed: int, val_fraction: float,
           test_fraction: float, bad_row) -> np.ndarray:
    col = desc.split_column
    if col and col in table.columns:
        split = np.array([s.strip().lower() for s in table[col].astype(str)], dtype=object)
        for i, s in enumerate(split):
            if s not in SPLITS:
                bad_row(i, col, f"split {shown(table[col].iloc[i])} is not one of train/val/test", "bad_split")
        return split
    # Seeded random split over the sorted unique ids: independent of row order.
    uniq = sorted(set(ids))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(uniq))
    n = len(uniq)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n - n_test - n_val < 1 and n > 0:
        n_test, n_val = max(0, min(n_test, n - 1)), max(0, min(n_val, n - 1 - min(n_test, n - 1)))
    assign = {}
    for rank, j in enumerate(perm):
        assign[uniq[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return np.array([assign[pid] for pid in ids], dtype=object)


def _labels(task: str, table: pd.DataFrame, cols: list[str], desc: SiteDescriptor, bad_row, problems: list,
            file: str) -> np.ndarray:
    """Parse label columns into ``[N, k]`` floats; invalid cells are NaN and reported."""
    n = len(table)
    out = np.full((n, len(cols)), np.nan)
    report = bad_row or (lambda i, fld, reason, code: problems.append(Problem(file, i + 1, fld, reason, code, "row",
                                                                              patient=i)))
    n_classes = desc.labels.get("num-classes") if task == "multiclass" else None
    if task == "multiclass" and not n_classes:
        problems.append(Problem("site.yaml", None, "labels.num-classes", "task 'multiclass' needs labels: "
                                "num-classes: C (a positive integer)", "missing_labels", "site"))
    for j, col in enumerate(cols):
        raw = table[col].astype(str).str.strip()
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        if task == "survival" and j == 0:
            expect = "a time > 0"
        elif task == "multiclass":
            expect = f"an integer class in 0..{(n_classes or 0) - 1}"
        else:
            expect = "0 or 1" + (" (the event indicator: 1 = event, 0 = censored)" if task == "survival" else "")
        for i in range(n):
            v = num[i]
            if not math.isfinite(v):
                what = "empty" if raw.iloc[i] == "" else f"{shown(raw.iloc[i])}, not a number"
                report(i, col, f"label is {what}; expected {expect}", "invalid_label")
                continue
            if task == "survival" and j == 0:
                ok = v > 0
            elif task == "multiclass":
                ok = v == int(v) and 0 <= v < (n_classes or math.inf)
            else:
                ok = v in (0.0, 1.0)
            if not ok:
                report(i, col, f"label {shown(raw.iloc[i])} is out of range; expected {expect}", "invalid_label")
                continue
            out[i, j] = v
    return out
