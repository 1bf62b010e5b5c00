"""One pass over a site folder: descriptor, cohort and every modality, collecting all problems.

``validate_site``, ``site_stats`` and ``load_site`` all start from :func:`scan_site`, so training uses exactly the
validator that ``omnifuse check-site`` runs.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..batch import KIND_EVENTS, KIND_GENOMICS, KIND_IMAGE, KIND_SEQUENCE, KIND_TABULAR, KIND_TEXT
from ..config import Config
from . import mimic_schema as S
from .base import ModalityData, ReadContext, empty
from .cohort import Cohort, read_cohort
from .descriptor import TASK_KINDS, SiteDescriptor, parse_descriptor
from .ehr import num_steps, read_ehr_long, read_ehr_stays, read_tabular
from .genomics import configured_genes, read_genomics
from .images import read_images
from .problems import Problem, ValidationReport
from .text import TextEmbedder, read_texts, text_data

log = logging.getLogger(__name__)

TYPE_KIND = {"ehr-timeseries": KIND_SEQUENCE, "ehr-long": KIND_SEQUENCE, "ehr-meds": KIND_EVENTS, "tabular": KIND_TABULAR,
             "image": KIND_IMAGE, "text": KIND_TEXT, "genomics": KIND_GENOMICS}
#: Kind of a configured modality that a site does not declare at all, inferred from its name.
NAME_KIND = {"ehr": KIND_SEQUENCE, "image": KIND_IMAGE, "text": KIND_TEXT, "genomics": KIND_GENOMICS}


@dataclass
class SiteScan:
    """Everything read from a site folder (raw, un-standardized), plus the validation report."""

    site_dir: Path
    report: ValidationReport
    desc: SiteDescriptor | None = None
    cohort: Cohort | None = None
    tasks: list[str] = field(default_factory=list)
    data: dict[str, ModalityData] = field(default_factory=dict)
    files: set[Path] = field(default_factory=set)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.report.problems if p.scope == "site"]

    def usable_rows(self) -> np.ndarray:
        """Rows whose patient can be used (valid id, split and labels)."""
        return self.cohort.row_ok.copy() if self.cohort is not None else np.zeros(0, dtype=bool)


def scan_site(path: str | Path, cfg: Config | None = None, *, modalities: list[str] | None = None,
              stats: dict | None = None, read_text: bool = True) -> SiteScan:
    """Read and validate a site folder.

    Args:
        path: the site folder.
        cfg: run configuration (task, modalities, sizes). None = validate every declared task and modality
            with default sizes.
        modalities: restrict reading to these modality names (default: the configured ones).
        stats: federated statistics (only their genomics gene list is used here).
        read_text: read text reports (embedding happens later, in ``load_site``).
    """
    site_dir = Path(path)
    report = ValidationReport(str(site_dir))
    scan = SiteScan(site_dir, report)
    if not site_dir.is_dir():
        report.add(Problem(str(site_dir), None, None, "site folder does not exist", "missing_file", "site"))
        return scan
    desc, problems = parse_descriptor(site_dir)
    report.add(*problems)
    if desc is None:
        return scan
    scan.desc = desc
    c = cfg or Config()
    scan.tasks = [cfg.task] if cfg else [k for k in TASK_KINDS if k in desc.labels]
    if not scan.tasks:
        report.add(Problem("site.yaml", None, "labels", "no labels declared; add labels: {binary: [column]} (see "
                           "docs/data-format.md)", "missing_labels", "site"))
    cohort, problems = read_cohort(site_dir, desc, scan.tasks, seed=c.split_seed, val_fraction=c.val_fraction,
                                   test_fraction=c.test_fraction)
    report.add(*problems)
    if cohort is None:
        return scan
    scan.cohort = cohort
    names = cfg.modality_list if cfg else list(desc.modalities)
    if modalities is not None:
        names = [m for m in names if m in modalities]
    ctx = ReadContext(site_dir, cohort, c, split_column=desc.split_column)
    notes = ctx.notes
    for extra in sorted(set(desc.modalities) - set(names)):
        if cfg is not None and modalities is None:
            notes.append(f"modality '{extra}' is declared in site.yaml but not configured (not used)")
    for name in names:
        md = desc.modalities.get(name)
        if md is None:
            notes.append(f"modality '{name}' is configured but this site has none (all patients missing)")
            scan.data[name] = _absent(name, c, stats, len(cohort))
            continue
        if md.type == "ehr-timeseries":
            scan.data[name] = read_ehr_stays(ctx, md)
        elif md.type == "ehr-long":
            scan.data[name] = read_ehr_long(ctx, md)
        elif md.type == "ehr-meds":
            from .meds import read_ehr_meds
            scan.data[name] = read_ehr_meds(ctx, md)
        elif md.type == "tabular":
            scan.data[name] = read_tabular(ctx, md)
        elif md.type == "image":
            scan.data[name] = read_images(ctx, md)
        elif md.type == "text":
            texts = read_texts(ctx, md) if read_text else [None] * len(cohort)
            scan.data[name] = text_data(md, texts, _text_dim(c))
        else:
            scan.data[name] = read_genomics(ctx, md, configured_genes(c, stats, name))
    report.add(*ctx.problems)
    scan.files = ctx.files
    # An entry with a problem never counts as present; rows that cannot be used carry no modality.
    for p in ctx.problems:
        if p.modality in scan.data:
            d = scan.data[p.modality]
            if p.patient is None:
                d.present[:] = False
            else:
                d.present[p.patient] = False
    for d in scan.data.values():
        d.present &= cohort.row_ok
    report.summary = _summary(scan, notes)
    return scan


def _absent(name: str, cfg: Config, stats: dict | None, n: int) -> ModalityData:
    """All-missing data for a configured modality the site does not have (same shape as at other sites)."""
    kind = NAME_KIND.get(name)
    feats = (stats or {}).get("features", {}).get(name)
    if name in (stats or {}).get("vocab", {}):  # the federation reads this modality as MEDS events
        from .events import EVENT_FEATURES
        shape = (int(cfg.ehr_max_events), EVENT_FEATURES)
        return ModalityData(name, KIND_EVENTS, shape, *empty(n, shape))
    if kind == KIND_SEQUENCE:
        shape = (num_steps(cfg), S.FEATURES_PER_STEP)
    elif kind == KIND_IMAGE:
        shape = (cfg.image_channels, cfg.image_size, cfg.image_size)
    elif kind == KIND_TEXT:
        shape = (_text_dim(cfg),)
    elif kind == KIND_GENOMICS or feats:
        genes = configured_genes(cfg, stats, name) or []
        kind, shape = kind or KIND_TABULAR, (len(genes),)
        return ModalityData(name, kind, shape, *empty(n, shape), genes, list(range(len(genes))))
    else:
        kind, shape = KIND_TABULAR, (0,)
    return ModalityData(name, kind, shape, *empty(n, shape))


def _text_dim(cfg: Config) -> int:
    return TextEmbedder(cfg.text_model_path, cfg.text_max_length).dim


def _summary(scan: SiteScan, notes: list[str]) -> dict:
    cohort = scan.cohort
    ok = cohort.row_ok
    summary: dict = {"patients": int(ok.sum()), "rows": len(cohort), "notes": list(notes)}
    summary["availability"] = {m: int(d.present.sum()) for m, d in scan.data.items()}
    summary["splits"] = {s: int(((cohort.split == s) & ok).sum()) for s in ("train", "val", "test")}
    labels = {}
    for task, y in cohort.labels.items():
        y = y[ok]
        cols = scan.desc.labels.get(task, [])
        if task == "binary":
            labels[cols[0]] = f"{int((y[:, 0] == 1).sum())} positive / {int((y[:, 0] == 0).sum())} negative"
        elif task == "multiclass":
            counts = Counter(int(v) for v in y[:, 0] if np.isfinite(v))
            labels[cols[0]] = " ".join(f"{k}:{counts[k]}" for k in sorted(counts))
        elif task == "multilabel":
            labels.update({c: f"{int((y[:, j] == 1).sum())} positive" for j, c in enumerate(cols)})
        elif task == "survival":
            labels[cols[1]] = f"{int((y[:, 1] == 1).sum())} events / {int((y[:, 1] == 0).sum())} censored"
    summary["labels"] = labels
    return summary
