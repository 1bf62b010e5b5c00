"""The site descriptor (``site.yaml``), safe path resolution inside a site folder and table reading."""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .problems import Problem

log = logging.getLogger(__name__)

DESCRIPTOR = "site.yaml"
TASK_KINDS = ("binary", "multiclass", "multilabel", "survival")
#: Modality types and the descriptor keys each accepts (besides ``type``).
MODALITY_KEYS: dict[str, tuple[str, ...]] = {
    "ehr-timeseries": ("format", "column"),
    "ehr-long": ("table", "column"),
    "ehr-meds": ("root", "labels", "prediction-time-column", "column"),
    "tabular": ("columns",),
    "image": ("channels", "mean", "std", "column"),
    "text": ("column", "path-column"),
    "genomics": ("table", "orientation", "log1p", "column"),
}
SITE_KEYS = ("site", "cohort", "id-column", "split-column", "labels", "modalities", "ignore-columns")
LABEL_KEYS = (*TASK_KINDS, "num-classes")


@dataclass
class ModalityDesc:
    """How one modality is stored at the site.

    Args:
        name: modality name (matches the config's ``modalities`` list).
        type: one of :data:`MODALITY_KEYS`.
        options: the remaining descriptor keys.
    """

    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ref_column(self) -> str:
        """Cohort column holding each patient's reference (path or table key)."""
        if self.type == "text":
            return str(self.options.get("path-column", self.name))
        return str(self.options.get("column", self.name))

    @property
    def inline_text_column(self) -> str | None:
        return str(self.options["column"]) if self.type == "text" and "column" in self.options else None


@dataclass
class SiteDescriptor:
    """The parsed ``site.yaml``."""

    name: str
    cohort: str = "cohort.csv"
    id_column: str = "patient_id"
    split_column: str | None = "split"
    labels: dict[str, Any] = field(default_factory=dict)
    modalities: dict[str, ModalityDesc] = field(default_factory=dict)
    ignore_columns: list[str] = field(default_factory=list)

    def known_columns(self) -> set[str]:
        cols = {self.id_column, *self.ignore_columns}
        if self.split_column:
            cols.add(self.split_column)
        for kind in TASK_KINDS:
            cols.update(self.labels.get(kind, []))
        for m in self.modalities.values():
            cols.add(m.ref_column)
            if m.inline_text_column:
                cols.add(m.inline_text_column)
            cols.update(m.options.get("columns", []))
            if m.options.get("prediction-time-column"):
                cols.add(str(m.options["prediction-time-column"]))
        return cols


def parse_descriptor(site_dir: Path) -> tuple[SiteDescriptor | None, list[Problem]]:
    """Read ``site.yaml``; returns ``(None, problems)`` when the descriptor is unusable."""
    path = site_dir / DESCRIPTOR
    if not path.is_file():
        return None, [_site(f"no {DESCRIPTOR} in {site_dir}; create it (see docs/data-format.md)", "missing_file")]
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return None, [_site(f"malformed YAML: {str(exc).splitlines()[0]}; fix the syntax", "malformed_yaml")]
    if not isinstance(raw, dict):
        return None, [_site("expected a mapping of keys at top level (site:, cohort:, modalities: ...)", "malformed_yaml")]
    problems = [_site(f"unknown key '{k}'; valid keys: {', '.join(SITE_KEYS)}", "unknown_key", k)
                for k in raw if k not in SITE_KEYS]
    name = str(raw.get("site", site_dir.name))
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        problems.append(_site(f"site name {name!r} may only use letters, digits, _ or -", "bad_value", "site"))
    split = raw.get("split-column", "split")
    desc = SiteDescriptor(name=name, cohort=str(raw.get("cohort", "cohort.csv")),
                          id_column=str(raw.get("id-column", "patient_id")),
                          split_column=None if split in (None, "", False) else str(split),
                          ignore_columns=[str(c) for c in _as_list(raw.get("ignore-columns", []))])
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        problems.append(_site("'labels' must map task kinds to column lists", "bad_value", "labels"))
        labels = {}
    for key, value in labels.items():
        if key not in LABEL_KEYS:
            problems.append(_site(f"unknown labels key '{key}'; valid: {', '.join(LABEL_KEYS)}", "unknown_key",
                                  f"labels.{key}"))
        elif key == "num-classes":
            desc.labels[key] = int(value) if str(value).isdigit() else None
        else:
            desc.labels[key] = [str(c) for c in _as_list(value)]
    if "survival" in desc.labels and len(desc.labels["survival"]) != 2:
        problems.append(_site("labels.survival must name two columns: [time, event]", "bad_value", "labels.survival"))
    mods = raw.get("modalities") or {}
    if not isinstance(mods, dict):
        problems.append(_site("'modalities' must map modality names to {type: ...}", "bad_value", "modalities"))
        mods = {}
    for mname, spec in mods.items():
        spec = spec if isinstance(spec, dict) else {}
        mtype = str(spec.get("type", ""))
        if mtype not in MODALITY_KEYS:
            problems.append(_site(f"modality '{mname}': type {mtype!r} unknown; use one of "
                                  f"{', '.join(MODALITY_KEYS)}", "bad_value", f"modalities.{mname}.type"))
            continue
        for key in spec:
            if key != "type" and key not in MODALITY_KEYS[mtype]:
                problems.append(_site(f"modality '{mname}': unknown key '{key}' for type {mtype}; valid: "
                                      f"{', '.join(MODALITY_KEYS[mtype])}", "unknown_key", f"modalities.{mname}.{key}"))
        desc.modalities[str(mname)] = ModalityDesc(str(mname), mtype, {k: v for k, v in spec.items() if k != "type"})
    return desc, problems


def safe_path(site_dir: Path, ref: str) -> tuple[Path | None, str | None]:
    """Resolve a reference inside the site folder.

    Returns:
        ``(path, None)`` when the reference stays inside the folder, else ``(None, reason)``. Absolute paths,
        ``..`` components and symlinks that point outside the folder are refused.
    """
    ref = ref.strip()
    if "\x00" in ref:
        return None, "path contains a NUL byte; re-export the table as plain text"
    p = Path(ref)
    if p.is_absolute() or ref.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", ref):
        return None, f"absolute path {ref!r} is not allowed; give a path relative to the site folder"
    if ".." in re.split(r"[\\/]", ref):
        return None, f"path {ref!r} escapes the site folder ('..'); keep every file inside the site folder"
    root = _resolved(site_dir)
    full = (site_dir / p)
    resolved = full.resolve()
    if resolved != root and root not in resolved.parents:
        return None, f"path {ref!r} points outside the site folder (symlink to {resolved}); copy the file inside"
    return full, None


@functools.lru_cache(maxsize=64)
def _resolved(path: Path) -> Path:
    return path.resolve()


def read_table(path: Path, *, strings: bool = True, index_col: int | None = None) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet table.

    Args:
        path: the file; ``.tsv``/``.tab`` are tab-separated, ``.parquet``/``.pq`` need pyarrow.
        strings: read every cell as a string (empty cells stay ``""``), for exact validation.
        index_col: column to use as the index.

    Raises:
        ValueError: the file cannot be parsed (message names the file and what to do).
    """
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"{path.name}: reading Parquet needs the 'pyarrow' package (pip install pyarrow), "
                             f"or save the table as CSV") from exc
        df = pd.read_parquet(path)
        if index_col is not None:
            df = df.set_index(df.columns[index_col])
        return df.astype(str).replace({"None": "", "nan": ""}) if strings else df
    sep = "\t" if suffix in (".tsv", ".tab") else ","
    _check_field_counts(path, sep)
    # index_col=False: never let pandas guess an index (a row with one extra field would shift every column)
    index = False if index_col is None else index_col
    try:
        if strings:
            return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, index_col=index)
        return pd.read_csv(path, sep=sep, index_col=index)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name}: cannot parse as {'TSV' if sep == chr(9) else 'CSV'} "
                         f"({str(exc).splitlines()[0]}); check the delimiter and quoting") from exc


class RaggedTableError(ValueError):
    """Some data rows have more or fewer fields than the header; ``rows`` holds their 1-based numbers."""

    def __init__(self, message: str, rows: list[tuple[int, int]]) -> None:
        super().__init__(message)
        self.rows = rows  # (data row, field count)


def _check_field_counts(path: Path, sep: str) -> None:
    import csv
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh, delimiter=sep)
            header = next(reader, None)
            if header is None:
                return
            bad = [(i, len(r)) for i, r in enumerate(reader, start=1) if r and len(r) != len(header)]
    except (UnicodeDecodeError, csv.Error):
        return  # pandas reports these with its own message
    if bad:
        rows = ", ".join(f"row {i} has {n}" for i, n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise RaggedTableError(f"{path.name}: the header has {len(header)} fields but {rows}; fix the quoting or "
                               "the stray delimiters on those rows", bad)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _site(reason: str, code: str, fld: str | None = None) -> Problem:
    return Problem(DESCRIPTOR, None, fld, reason, code=code, scope="site")
