"""Genomics: a patient x gene matrix (CSV / TSV / Parquet) aligned to one gene order shared by every site.

Alignment rule (so that every site yields the same shape and gene order):

1. ``genomics-genes`` in the config (comma-separated names, or a text file with one gene per line), else
2. the gene list of the federated statistics (``combine_stats`` takes the sorted union of all sites' genes), else
3. the site's own genes, sorted by name (local use only: other sites may differ).

Genes of the list the site lacks are filled with the federated mean (0 after standardization) and named in a
logged note; genes not in the list are ignored and named too. ``genomics-gene-policy`` (union | intersection)
chooses rule 2's shared list; a site holding fewer than ``genomics-min-overlap`` of the shared genes is a problem
(e.g. gene symbols at one site, Ensembl ids at another). With ``log1p: true`` values are transformed with
``log(1 + x)`` first (negative values are then an error).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..batch import KIND_GENOMICS
from .base import ModalityData, ReadContext, empty
from .descriptor import ModalityDesc, read_table
from .problems import shown

log = logging.getLogger(__name__)

ORIENTATIONS = ("patient-by-gene", "gene-by-patient")


def configured_genes(cfg, stats: dict | None, name: str) -> list[str] | None:
    """The shared gene order (rules 1 and 2 of the module docstring), or None when neither is given."""
    spec = str(getattr(cfg, "genomics_genes", "") or "").strip()
    if spec:
        path = Path(spec).expanduser()
        if "," not in spec and path.is_file():
            return [g.strip() for g in path.read_text().splitlines() if g.strip() and not g.startswith("#")]
        return [g.strip() for g in spec.split(",") if g.strip()]
    feats = (stats or {}).get("features", {}).get(name)
    return list(feats["names"]) if feats else None


def read_genomics(ctx: ReadContext, desc: ModalityDesc, genes: list[str] | None) -> ModalityData:
    """Read the matrix and align it to ``genes`` (None = the site's own genes, sorted).

    Args:
        ctx: the read context.
        desc: the modality descriptor (``table``, ``orientation``, ``log1p``).
        genes: the shared gene order, or None.
    """
    n = len(ctx.cohort)
    path = ctx.resolve_table(desc)
    orientation = str(desc.options.get("orientation", "patient-by-gene"))
    if orientation not in ORIENTATIONS:
        ctx.problem(desc.name, None, "site.yaml", None, f"modalities.{desc.name}.orientation",
                    f"orientation {orientation!r} unknown; use {' or '.join(ORIENTATIONS)}", "bad_value")
        path = None
    table = None
    if path is not None:
        try:
            table = read_table(path, index_col=0)
        except ValueError as exc:
            ctx.problem(desc.name, None, ctx.rel(path), None, None, str(exc), "unreadable")
    if table is None:
        g = genes or []
        return _data(desc, *empty(n, (len(g),)), g)
    rel = ctx.rel(path)
    by_gene = orientation == "gene-by-patient"
    table.index = table.index.astype(str).str.strip()
    table.columns = [str(c).strip() for c in table.columns]
    if by_gene:
        table = table.T
    site_genes = list(table.columns)
    genes = list(genes) if genes is not None else sorted(site_genes)
    keys = ctx.table_keys(desc)
    raw = np.char.strip(table.to_numpy(dtype=str))
    num = pd.to_numeric(pd.Series(raw.ravel()), errors="coerce").to_numpy(dtype=float).reshape(raw.shape)
    empty_cell = raw == ""
    log1p = str(desc.options.get("log1p", False)).lower() in ("true", "1", "yes")
    bad = (~np.isfinite(num) & ~empty_cell) | ((num < 0) & log1p)
    seen: dict[str, int] = {}
    row_of: dict[int, int] = {}  # cohort row -> table position
    for pos, key in enumerate(table.index):
        i = keys.get(key)
        if key in seen:
            if i is not None:
                ctx.problem(desc.name, i, rel, None if by_gene else pos + 1, None if by_gene else table.index.name,
                            f"patient key {shown(key)} appears twice in the matrix", "duplicate_id")
            continue
        seen[key] = pos
        if i is not None:
            row_of[i] = pos
    for pos, gj in zip(*np.nonzero(bad)):
        i = keys.get(table.index[pos])
        if i is None:
            continue
        row, fld = (gj + 1, table.index[pos]) if by_gene else (pos + 1, site_genes[gj])
        reason = (f"negative value {shown(raw[pos, gj])} with log1p: true" if np.isfinite(num[pos, gj])
                  else f"value {shown(raw[pos, gj])} is not a finite number")
        ctx.problem(desc.name, i, rel, int(row), fld, reason, "nan")
    missing_keys = [k for k, i in keys.items() if i not in row_of]
    for k in missing_keys:
        i = keys[k]
        if desc.ref_column in ctx.cohort.table.columns:
            ctx.problem(desc.name, i, ctx.cohort.file, i + 1, desc.ref_column,
                        f"key {shown(k)} is not in {rel}; fix the key or leave the cell empty", "missing_key")
    if log1p:
        with np.errstate(invalid="ignore"):
            num = np.log1p(num)
    col_of = {g: j for j, g in enumerate(site_genes)}
    take = np.array([col_of.get(g, -1) for g in genes], dtype=int)
    _gene_notes(ctx, desc, rel, genes, site_genes, take)
    values, present = empty(n, (len(genes),))
    rows = sorted(row_of)
    if rows:
        block = num[[row_of[i] for i in rows]]
        aligned = np.where(take[None, :] >= 0, block[:, np.maximum(take, 0)], np.nan)
        _fill_note(ctx, desc, rel, genes, np.isnan(aligned) & (take[None, :] >= 0))
        values[rows] = aligned.astype(np.float32)
        present[rows] = True
    return _data(desc, values, present, genes)


def _names(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _gene_notes(ctx: ReadContext, desc: ModalityDesc, rel: str, genes: list[str], site_genes: list[str],
                take: np.ndarray) -> None:
    """Notes (also logged) naming the shared genes this site lacks and its genes outside the shared list; a site
    holding fewer than ``genomics-min-overlap`` of the shared genes is a site-wide problem."""
    absent = [g for g, t in zip(genes, take) if t < 0]
    extra = sorted(set(site_genes) - set(genes))
    notes = []
    if absent:
        notes.append(f"{desc.name}: {len(absent)} of {len(genes)} shared genes are not in {rel} ({_names(absent)}): "
                     "filled with the federation mean (0 after standardization) for every patient here")
    if extra:
        notes.append(f"{desc.name}: {len(extra)} gene(s) of {rel} are not in the shared gene list ({_names(extra)}): "
                     "ignored")
    for note in notes:
        ctx.notes.append(note)
        log.warning("site %s: %s", ctx.site_dir.name, note)
    held = 1.0 - len(absent) / len(genes) if genes else 1.0
    minimum = float(getattr(ctx.cfg, "genomics_min_overlap", 0.0) or 0.0)
    if genes and held < minimum:
        ctx.problem(desc.name, None, rel, None, None,
                    f"this site holds {held:.0%} of the {len(genes)} shared genes, below genomics-min-overlap = "
                    f"{minimum:g}; check the gene identifiers (symbols vs Ensembl ids), pin genomics-genes, use "
                    "genomics-gene-policy: intersection, or lower genomics-min-overlap", "gene_overlap")


def _fill_note(ctx: ReadContext, desc: ModalityDesc, rel: str, genes: list[str], filled: np.ndarray) -> None:
    """Count (and log) the empty expression cells that standardization fills with the federation mean."""
    if not filled.any():
        return
    per_gene = filled.sum(axis=0)
    worst = [f"{genes[j]} ({int(per_gene[j])})" for j in np.argsort(-per_gene, kind="stable") if per_gene[j]]
    note = (f"{desc.name}: {int(filled.sum())} empty cell(s) in {rel} for {int(filled.any(axis=1).sum())} patient(s) "
            f"filled with the federation mean (0 after standardization); by gene: {_names(worst)}")
    ctx.notes.append(note)
    log.warning("site %s: %s", ctx.site_dir.name, note)


def _data(desc: ModalityDesc, values: np.ndarray, present: np.ndarray, genes: list[str]) -> ModalityData:
    return ModalityData(desc.name, KIND_GENOMICS, (len(genes),), values, present, list(genes),
                        list(range(len(genes))))
