"""Write a synthetic federation to disk: one site folder per hospital, ``federation.yaml`` and ``oracle.json``.

Layout (site format: ``docs/data-format.md``)::

    OUT/federation.yaml        # preset, seed, site folders in partition order, label sets, modalities
    OUT/oracle.json            # oracle metrics (see sim.oracle)
    OUT/<site>/site.yaml, cohort.csv, ehr/<id>.csv, images/<id>.png, text/<id>.txt, genomics.csv

A modality a site does not have (structural missingness) keeps its declaration in ``site.yaml`` and an empty
cohort column; for genomics the site still gets a header-only ``genomics.csv`` so every site lists the same genes.

Presets with per-patient reliability (``reliability``) also get ``OUT/reliability.csv`` (site, patient_id, one 0/1
column per such modality: 1 = that patient's data in it is unreliable, where present; empty = modality absent). It
lies outside the site folders: ground truth for analysis, not training input.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from sim.cohort import SiteCohort, rng_for, simulate_federation
from sim.ehr import render_ehr, write_ehr
from sim.meds_writer import DECLARATION as MEDS_DECLARATION, subject_ids, write_meds
from sim.genomics import GenePanel, make_panel, render_expression, write_expression
from sim.images import corrupt_images, render_images, write_images
from sim.latent import PHENO_NAMES
from sim.oracle import compute_oracle
from sim.presets import MODALITIES, PRESETS, SCANNERS, Preset, get_preset, list_presets
from sim.text import render_reports, write_reports

__all__ = ["generate_federation", "PRESETS", "list_presets"]
log = logging.getLogger(__name__)

LABELS = {"binary": ["mortality"], "multiclass": ["subtype"], "num-classes": 3, "multilabel": PHENO_NAMES,
          "survival": ["time", "event"]}
MODALITY_DECLS = {
    "ehr": {"type": "ehr-timeseries", "format": "mimic-csv"},
    "image": {"type": "image", "channels": 1},
    "text": {"type": "text"},
    "genomics": {"type": "genomics", "table": "genomics.csv", "orientation": "patient-by-gene"},
}
FEDERATION_FILE = "federation.yaml"
ORACLE_FILE = "oracle.json"
RELIABILITY_FILE = "reliability.csv"


def _column(c: SiteCohort, m: str, factor: int) -> np.ndarray:
    """Signal column of latent ``factor`` in modality ``m`` (zeros when the modality does not observe it)."""
    if factor in c.factors[m]:
        return c.signals[m][:, c.factors[m].index(factor)]
    return np.zeros(c.n)


def _flags(c: SiteCohort, m: str, kind: str, sel: np.ndarray) -> np.ndarray | None:
    """Unreliable flags of the selected patients when modality ``m`` renders them as ``kind``, else None."""
    if m in c.unreliable and c.reliability_kind.get(m) == kind:
        return c.unreliable[m][sel]
    return None


EHR_FORMATS = ("csv", "meds")


def _write_site(root: Path, c: SiteCohort, panel: GenePanel, seed: int, ehr_format: str = "csv") -> dict[str, int]:
    site_dir = root / c.name
    site_dir.mkdir(parents=True)
    refs = {m: [""] * c.n for m in MODALITIES}
    pids = np.array(c.patient_ids, dtype=object)

    def fill(m: str, paths: list[str]) -> None:
        for i, p in zip(np.flatnonzero(c.present[m]), paths):
            refs[m][i] = p

    sel = c.present["ehr"]
    if sel.any():
        docs = render_ehr(_column(c, "ehr", 0)[sel], _column(c, "ehr", 3)[sel], c.profile.gcs_style,
                          rng_for(seed, c.index, "ehr"), sparse=_flags(c, "ehr", "sparse", sel))
        if ehr_format == "meds":
            subjects = subject_ids(c.index, c.n)[sel]
            write_meds(site_dir, subjects, docs, c.labels.mortality[sel], list(np.asarray(c.split)[sel]),
                       rng_for(seed, c.index, "meds"))
            fill("ehr", [str(s) for s in subjects])  # ehr reference = MEDS subject_id
        else:
            fill("ehr", write_ehr(site_dir, list(pids[sel]), docs))
    sel = c.present["image"]
    if sel.any():
        imgs = render_images(c.signals["image"][sel], SCANNERS[c.profile.scanner], rng_for(seed, c.index, "image"))
        artifact = _flags(c, "image", "artifact", sel)
        if artifact is not None and artifact.any():
            imgs[artifact] = corrupt_images(imgs[artifact], rng_for(seed, c.index, "artifact"))
        fill("image", write_images(site_dir, list(pids[sel]), imgs))
    sel = c.present["text"]
    if sel.any():
        reports = render_reports(c.signals["text"][sel], c.factors["text"], c.profile.text_style,
                                 rng_for(seed, c.index, "text"))
        fill("text", write_reports(site_dir, list(pids[sel]), reports))
    sel = c.present["genomics"]
    expr = render_expression(panel, c.signals["genomics"][sel], rng_for(seed, c.index, "genomics"))
    write_expression(site_dir, panel, list(pids[sel]), expr)
    fill("genomics", list(pids[sel]))  # genomics reference = key into genomics.csv

    lab = c.labels
    header = ["patient_id", "split", "mortality", "subtype", *PHENO_NAMES, "time", "event", *MODALITIES]
    with open(site_dir / "cohort.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for i in range(c.n):
            w.writerow([c.patient_ids[i], c.split[i], int(lab.mortality[i]), int(lab.subtype[i]),
                        *(int(v) for v in lab.pheno[i]), f"{lab.time[i]:.1f}", int(lab.event[i]),
                        *(refs[m][i] for m in MODALITIES)])
    descriptor = {"site": c.name, "cohort": "cohort.csv", "id-column": "patient_id", "split-column": "split",
                  "labels": LABELS, "modalities": {**MODALITY_DECLS,
                                                   **({"ehr": MEDS_DECLARATION} if ehr_format == "meds" else {})}}
    (site_dir / "site.yaml").write_text(yaml.safe_dump(descriptor, sort_keys=False))
    return {m: int(c.present[m].sum()) for m in MODALITIES}


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        fed = out_dir / FEDERATION_FILE
        if not overwrite:
            raise FileExistsError(f"output folder {out_dir} is not empty; choose a new folder or delete it "
                                  f"(or pass overwrite=True to replace an earlier synthetic federation)")
        if not fed.is_file():
            raise FileExistsError(f"output folder {out_dir} is not empty and holds no {FEDERATION_FILE}: refusing to "
                                  f"overwrite files the generator did not write; choose an empty folder")
        old = yaml.safe_load(fed.read_text()) or {}
        for name in old.get("sites", []):
            target = (out_dir / str(name)).resolve()
            if target.parent == out_dir.resolve() and target.is_dir():
                shutil.rmtree(target)
        for name in (FEDERATION_FILE, ORACLE_FILE, RELIABILITY_FILE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_reliability(path: Path, cohorts: list[SiteCohort]) -> None:
    mods = [m for m in MODALITIES if m in cohorts[0].unreliable]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["site", "patient_id", *mods])
        for c in cohorts:
            for i in range(c.n):
                w.writerow([c.name, c.patient_ids[i],
                            *(int(c.unreliable[m][i]) if c.present[m][i] else "" for m in mods)])


def generate_federation(preset: str | Preset, n_sites: int | None, out_dir: Path, seed: int = 0,
                        overwrite: bool = False, ehr_format: str = "csv") -> Path:
    """Simulate a federation and write it to ``out_dir``.

    Args:
        preset: a name from :data:`sim.presets.PRESETS` (or a :class:`Preset`).
        n_sites: number of sites; None = the preset's default.
        out_dir: output folder; must be empty or absent (see ``overwrite``).
        seed: random seed; the same seed gives byte-identical files.
        overwrite: replace an earlier synthetic federation in ``out_dir`` (only the folders it lists).
        ehr_format: ``csv`` (per-stay CSVs, MIMIC-benchmark layout) or ``meds`` (a MEDS root per site with the
            same observations, ``sim.meds_writer``).

    Returns:
        ``out_dir`` (holding ``federation.yaml``).

    Raises:
        ValueError: unknown preset or bad n_sites. FileExistsError: ``out_dir`` holds other files.
    """
    start = time.perf_counter()
    if ehr_format not in EHR_FORMATS:
        raise ValueError(f"ehr_format {ehr_format!r} unknown; use one of {', '.join(EHR_FORMATS)}")
    p = get_preset(preset) if isinstance(preset, str) else preset
    out_dir = Path(out_dir)
    cohorts = simulate_federation(p, n_sites, seed)
    _prepare(out_dir, overwrite)
    panel = make_panel(p.n_genes, len(p.signals["genomics"]), p.pathway_genes, rng_for(seed, -1, "structure"))
    counts = {}
    for c in cohorts:
        counts[c.name] = {"patients": c.n, **_write_site(out_dir, c, panel, seed, ehr_format)}
        log.info("site %s written: %s", c.name, counts[c.name])
    oracle = compute_oracle(p, cohorts, seed)
    oracle["genes"] = panel.describe()
    (out_dir / ORACLE_FILE).write_text(json.dumps(oracle, indent=1, allow_nan=False) + "\n")
    if p.reliability:
        _write_reliability(out_dir / RELIABILITY_FILE, cohorts)
    federation = {
        "preset": p.name, "seed": int(seed), "sites": [c.name for c in cohorts],
        "labels": LABELS, "tasks": ["binary", "multiclass", "multilabel", "survival"],
        "modalities": list(MODALITIES), "oracle": ORACLE_FILE, "counts": counts,
    }
    if ehr_format != "csv":  # written only when not the default, so CSV federations stay byte-identical to older ones
        federation["ehr-format"] = ehr_format
    if p.reliability:
        federation["reliability"] = RELIABILITY_FILE
    (out_dir / FEDERATION_FILE).write_text(yaml.safe_dump(federation, sort_keys=False))
    log.info("synthetic federation %r (%d sites, seed %d) written to %s in %.1f s", p.name, len(cohorts), seed,
             out_dir, time.perf_counter() - start)
    return out_dir
