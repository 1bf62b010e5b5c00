"""Gather what a report shows: the run directory's records plus, when site folders are given, what must be
computed from the data (availability counts, test predictions, aggregate diagnostics, the embedding map).

Nothing here fails a report: a part that cannot be computed is left empty and a one-line note says why.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import yaml

from ..config import Config
from ..data.problems import SiteDataError
from ..predict import Predictions, load_run_config, load_run_model, load_site_for_run, predict_dataset

log = logging.getLogger(__name__)
PACKAGES = ("omnifuse-fl", "torch", "torchvision", "flwr", "opacus", "dp-accounting", "numpy", "scikit-learn",
            "scipy", "matplotlib", "transformers")


@dataclass
class RunData:
    """Everything the HTML report and the model card read."""

    run_dir: Path
    metrics: dict
    cfg: Optional[Config]
    config_text: str
    sites_given: list[Path] = field(default_factory=list)
    availability: dict = field(default_factory=dict)  # site -> split -> modality counts
    availability_source: str = ""
    diagnostics: dict = field(default_factory=dict)  # site -> flat site_diagnostics dict (final model)
    predictions: dict = field(default_factory=dict)  # site -> Predictions (test split)
    embedding_map: Optional[dict] = None
    privacy: dict = field(default_factory=dict)  # site -> privacy report JSON
    versions: dict = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)  # section id -> why it is partial/absent
    strata: Optional[dict] = None  # pooled test stratification (set by the HTML builder)

    @property
    def mode(self) -> str:
        return str(self.metrics.get("mode", "unknown"))

    @property
    def task(self) -> str:
        return str(self.metrics.get("task") or (self.cfg.task if self.cfg else "binary"))

    @property
    def headline(self) -> str:
        return str(self.metrics.get("headline") or ("c_index" if self.task == "survival" else "auroc"))


def expand_sites(sites: Optional[Sequence[str | Path]]) -> list[Path]:
    """Site folders from a list of site folders and/or federation folders (``federation.yaml``)."""
    out: list[Path] = []
    for item in sites or []:
        path = Path(item)
        fed = path / "federation.yaml"
        if fed.is_file():
            names = (yaml.safe_load(fed.read_text()) or {}).get("sites") or []
            out += [path / str(n) for n in names]
        elif (path / "site.yaml").is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: neither a site folder (site.yaml) nor a federation folder "
                                    "(federation.yaml); pass --site with a folder written by `omnifuse synth` or "
                                    "prepared as in docs/data-format.md")
    return out


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_privacy(run_dir: Path) -> dict:
    """``RUN/privacy/*.json`` site reports (``summary.json`` excluded), keyed by site."""
    out = {}
    for path in sorted((run_dir / "privacy").glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable privacy report (%s); left out of the report", path, exc)
            continue
        if isinstance(data, dict) and "epsilon" in data:
            out[str(data.get("site") or path.stem)] = data
    return out


def collect(run_dir: str | Path, sites: Optional[Sequence[str | Path]] = None) -> RunData:
    """Read a run directory and, with ``sites``, compute the data-dependent parts of the report."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: missing; give a run directory written by `omnifuse train`")
    metrics = json.loads(mpath.read_text())
    cfg_path = run_dir / "config.yaml"
    cfg = load_run_config(run_dir) if cfg_path.is_file() else None
    data = RunData(run_dir, metrics, cfg, cfg_path.read_text() if cfg_path.is_file() else "",
                   sites_given=expand_sites(sites), privacy=read_privacy(run_dir),
                   versions=metrics.get("versions") or package_versions(),
                   modalities=cfg.modality_list if cfg else [])
    if not metrics.get("versions"):
        data.notes["versions"] = "package versions at report time (the run did not record its own)"
    _availability_from_metrics(data)
    if data.sites_given and cfg is not None:
        try:
            _from_sites(data, cfg)
        except (SiteDataError, ValueError, FileNotFoundError, OSError) as exc:
            log.warning("report: could not compute the data-dependent sections from the site folders: %s", exc)
            data.notes["data"] = f"site folders given but not usable: {exc}"
    elif not data.sites_given:
        data.notes["data"] = ("no site folders given (omnifuse report RUN --site DIR): sections that need patient "
                              "data (ROC, calibration, Kaplan-Meier, embedding map) are computed only at the sites")
    return data


def _availability_from_metrics(data: RunData) -> None:
    avail = (data.metrics.get("final") or {}).get("availability")
    if avail:
        data.availability, data.availability_source = avail, "recorded by the run"
        return
    for rnd in reversed(data.metrics.get("rounds") or []):
        counts = {s: {"train": t["counts"]} for s, t in (rnd.get("train") or {}).items()
                  if isinstance(t, dict) and t.get("counts")}
        if counts:
            data.availability, data.availability_source = counts, "training-split counts reported by each site"
            return


def _from_sites(data: RunData, cfg: Config) -> None:
    from ..data.stats import combine_stats, site_stats
    from ..diagnostics import embedding_map, site_diagnostics

    local = data.mode == "local"
    model, _, meta = (None, None, None) if local else load_run_model(data.run_dir)
    stats = meta.get("stats") if meta else None
    if stats is None:  # the runners combine per-site sums and counts the same way
        stats = combine_stats([site_stats(p, cfg) for p in data.sites_given], gene_policy=cfg.genomics_gene_policy)
    loaded = []
    for path in data.sites_given:
        if local:
            model, _, meta = load_run_model(data.run_dir, site=_site_name(path))
        site = load_site_for_run(path, cfg, meta, stats=meta.get("stats") or stats)
        loaded.append((site, model))
        data.availability[site.name] = {s: d.modality_counts() for s, d in site.splits.items()}
        data.availability_source = "counted from the site folders"
        if len(site.test):
            pred = predict_dataset(model, site.test, cfg, split="test")
            data.predictions[site.name] = pred
        diag = site_diagnostics(model, site.train, cfg)
        if diag:
            data.diagnostics[site.name] = diag
    data.modalities = list(model.names)
    if data.mode in ("centralized", "local") and loaded:
        from ..batch import MultimodalDataset
        site, model = loaded[0]
        ds = site.train if local else MultimodalDataset.concat([s.train for s, _ in loaded])
        data.embedding_map = embedding_map(model, ds, cfg)
        if local:
            data.notes["embedding"] = f"local run: the map shows site {site.name}'s own model on its training split"


def _site_name(path: Path) -> str:
    from ..data.descriptor import parse_descriptor
    desc, _ = parse_descriptor(path)
    return desc.name if desc is not None else path.name


def predictions_of(data: RunData) -> Optional[Predictions]:
    """All sites' test predictions pooled (None when there are none)."""
    import numpy as np

    preds = [p for p in data.predictions.values() if len(p.patient_ids)]
    if not preds:
        return None
    emb = [p.embedding for p in preds]
    return Predictions(
        patient_ids=[i for p in preds for i in p.patient_ids], score=np.concatenate([p.score for p in preds]),
        heads={}, present=np.concatenate([p.present for p in preds]),
        imputed=np.concatenate([p.imputed for p in preds]),
        labels=np.concatenate([p.labels for p in preds]),
        embedding=np.concatenate(emb) if all(e is not None for e in emb) else None,
        split=[s for p in preds for s in p.split])
