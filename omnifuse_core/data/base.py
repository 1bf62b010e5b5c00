"""Shared pieces of the modality readers: the read context and the per-modality result."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from .cohort import Cohort
from .descriptor import ModalityDesc, safe_path
from .problems import Problem, shown


@dataclass
class ModalityData:
    """One modality read for every cohort row (raw values, before standardization).

    Args:
        name: modality name.
        kind: a ``batch.KIND_*`` value.
        shape: per-sample shape.
        values: ``[N, *shape]`` float32; rows without the modality are zeros (or NaN before standardization
            for zero-filled genomics genes).
        present: bool ``[N]``.
        feature_names: names of the features standardized with federated statistics (last axis).
        feature_index: their positions on the last axis (None: nothing is standardized).
        texts: raw texts (text modality only; embedded later).
        events: the kept MEDS events (``ehr-meds`` only; encoded later with the vocabulary,
            ``omnifuse_core.data.events``).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    values: np.ndarray
    present: np.ndarray
    feature_names: list[str] = field(default_factory=list)
    feature_index: list[int] | None = None
    texts: list[str | None] | None = None
    events: Any = None


@dataclass
class ReadContext:
    """What a modality reader needs: the site folder, the cohort and where to put problems.

    Args:
        site_dir: the site folder.
        cohort: the validated cohort table.
        cfg: the run configuration.
        problems: problems found so far (readers append).
        notes: human-readable notes for the validation summary.
        files: every data file referenced (for the dataset fingerprint).
        split_column: the descriptor's split column (a MEDS reader sets the split from MEDS without one).
    """

    site_dir: Path
    cohort: Cohort
    cfg: Config
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    split_column: str | None = None

    def problem(self, modality: str, patient: int | None, file: str, row: int | None, fld: str | None,
                reason: str, code: str) -> None:
        """Record an entry-level problem (one modality of one patient, or of all patients when ``patient`` is None)."""
        self.problems.append(Problem(file, row, fld, reason, code, "entry", modality, patient))

    def references(self, desc: ModalityDesc) -> list[tuple[int, str]]:
        """``(row index, reference)`` for every cohort row whose reference cell is not empty."""
        col = desc.ref_column
        if col not in self.cohort.table.columns:
            return []
        cells = self.cohort.table[col].astype(str).str.strip()
        return [(i, ref) for i, ref in enumerate(cells) if ref and ref.lower() not in ("nan", "none")]

    def table_keys(self, desc: ModalityDesc) -> dict[str, int]:
        """Table key -> cohort row: the modality column's cell, or the patient id when the cohort lacks the column.

        Rows that are unusable as a whole (e.g. a duplicated patient id) are left out, so they cannot take another
        row's entry; a key referenced by two usable rows goes to the first, and the later row gets a problem.
        """
        by_ref = desc.ref_column in self.cohort.table.columns
        pairs = self.references(desc) if by_ref else [(i, pid) for i, pid in enumerate(self.cohort.ids) if pid]
        keys: dict[str, int] = {}
        for i, key in pairs:
            if not self.cohort.row_ok[i]:
                continue
            if key in keys:
                self.problem(desc.name, i, self.cohort.file, i + 1, desc.ref_column if by_ref else None,
                             f"key {shown(key)} is also used by row {keys[key] + 1}; each patient needs its own entry",
                             "duplicate_id")
                continue
            keys[key] = i
        return keys

    def resolve_file(self, desc: ModalityDesc, i: int, ref: str) -> Path | None:
        """Resolve a patient's file reference; records a problem and returns None when it is unusable."""
        path, reason = safe_path(self.site_dir, ref)
        if path is None:
            self.problem(desc.name, i, self.cohort.file, i + 1, desc.ref_column, reason, "path_escapes_site")
            return None
        if not path.is_file():
            self.problem(desc.name, i, self.cohort.file, i + 1, desc.ref_column,
                         f"file {shown(ref)} does not exist; fix the path or leave the cell empty if the patient "
                         "lacks this modality", "missing_file")
            return None
        self.files.add(path)
        return path

    def resolve_table(self, desc: ModalityDesc) -> Path | None:
        """Resolve a modality's ``table:``; records a problem for every referencing patient when unusable."""
        ref = str(desc.options.get("table", ""))
        path, reason = safe_path(self.site_dir, ref) if ref else (None, f"modality '{desc.name}' needs table:")
        if path is not None and not path.is_file():
            path, reason = None, f"table {shown(ref)} does not exist"
        if path is None:
            self.problem(desc.name, None, "site.yaml", None, f"modalities.{desc.name}.table", reason,
                         "missing_file")
            return None
        self.files.add(path)
        return path

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.site_dir))
        except ValueError:
            return str(path)


def empty(n: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Zero values ``[n, *shape]`` and an all-False presence vector."""
    return np.zeros((n, *shape), dtype=np.float32), np.zeros(n, dtype=bool)
