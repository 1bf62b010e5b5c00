"""Federated-safe preprocessing statistics: per-site aggregates only, combined on the server.

A site sends, per standardized feature, ``sum``, ``sumsq`` and ``count`` over its *training* patients (EHR:
over every time step of the discretized, imputed continuous variables, as the benchmark's normalizer does;
genomics: per gene after the optional log1p; tabular: per column), plus a histogram of uncensored survival
times on a fixed geometric grid (for survival bin edges). No per-patient value leaves the site. Note: these
aggregates are not protected by DP (the privacy report says so).

Format (JSON-serializable)::

    {"format": "omnifuse-stats/1", "sites": 1, "n_train": 420,
     "features": {"ehr": {"names": [...], "sum": [...], "sumsq": [...], "count": [...]}, "genomics": {...}},
     "survival": {"hist": [...]},          # len(SURVIVAL_GRID) + 1 counts (under/overflow at the ends)
     "vocab": {"ehr": {"codes": [...], "patients": [...], "sum": [...], "sumsq": [...], "count": [...],
                       "k": 10, "sites": 1, "suppressed": 3}}}   # ehr-meds only (omnifuse_core.data.events)

``vocab`` is the federated code vocabulary of MEDS event modalities: per code held by at least ``k`` training
patients at the site, that patient count and the sums of its numeric values (small-cell suppression: rarer codes
never leave the site).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Config
from .problems import SiteDataError

log = logging.getLogger(__name__)

FORMAT = "omnifuse-stats/1"
#: Fixed grid of survival times (any unit): 401 geometric edges from 1e-2 to 1e5 (~4 % wide bins).
SURVIVAL_GRID = np.geomspace(1e-2, 1e5, 401)
_STD_FLOOR = 1e-6


def site_stats(path: str | Path, cfg: Config) -> dict:
    """Aggregates of one site's training split (see module docstring).

    Args:
        path: the site folder.
        cfg: the run configuration (modalities, task, EHR steps, genomics gene list).

    Raises:
        SiteDataError: the site cannot be read at all (bad descriptor or cohort table).
    """
    from .scan import scan_site

    scan = scan_site(path, cfg, read_text=False,
                     modalities=[m for m in cfg.modality_list if _standardized(path, m)])
    if scan.fatal or scan.cohort is None:
        raise SiteDataError(scan.report, "cannot compute statistics: the site folder is unusable")
    return stats_from_scan(scan, cfg)


def _standardized(path: str | Path, name: str) -> bool:
    """Whether a modality can carry standardization statistics (images and text need none: skip reading them)."""
    from .descriptor import parse_descriptor

    desc, _ = parse_descriptor(Path(path))
    md = desc.modalities.get(name) if desc else None
    return md is None or md.type not in ("image", "text")


def stats_from_scan(scan, cfg: Config) -> dict:
    """Aggregates from an already-read site (``scan_site`` result) over usable training rows."""
    train = scan.usable_rows() & (scan.cohort.split == "train")
    out: dict = {"format": FORMAT, "sites": 1, "n_train": int(train.sum()), "features": {}}
    for name, d in scan.data.items():
        if d.feature_index is None or not d.feature_names:
            continue
        rows = train & d.present
        x = d.values[rows][..., d.feature_index].astype(np.float64).reshape(-1, len(d.feature_index))
        finite = np.isfinite(x)
        x0 = np.where(finite, x, 0.0)
        out["features"][name] = {"names": list(d.feature_names), "sum": x0.sum(0).tolist(),
                                 "sumsq": (x0 ** 2).sum(0).tolist(), "count": finite.sum(0).astype(int).tolist()}
    for name, d in scan.data.items():
        if d.events is not None:
            from .events import site_vocab
            out.setdefault("vocab", {})[name] = site_vocab(d.events, int(cfg.ehr_vocab_min_patients))
    if cfg.task == "survival" and "survival" in scan.cohort.labels:
        y = scan.cohort.labels["survival"][train]
        times = y[(y[:, 1] == 1) & np.isfinite(y[:, 0]), 0]
        hist = np.bincount(np.searchsorted(SURVIVAL_GRID, times, side="right"), minlength=len(SURVIVAL_GRID) + 1)
        out["survival"] = {"hist": hist.astype(int).tolist()}
    return out


GENE_POLICIES = ("union", "intersection")


def combine_stats(parts: list[dict], *, gene_policy: str = "union", vocab_size: int | None = None) -> dict:
    """Server side: add the sites' aggregates, features aligned by name.

    Args:
        parts: the sites' ``site_stats``.
        gene_policy: when the sites' feature names differ, the shared list is their sorted ``union`` (a site lacking
            a name has it missing) or their sorted ``intersection`` (names some site lacks are dropped everywhere).
            Config key ``genomics-gene-policy``; a pinned ``genomics-genes`` list overrides both at the sites.
        vocab_size: MEDS code vocabularies keep the top this many codes by patients (config ``ehr-vocab-size``;
            None = all; the sites cut to ``ehr-vocab-size`` again when they load).
    """
    if gene_policy not in GENE_POLICIES:
        raise ValueError(f"genomics-gene-policy {gene_policy!r} unknown; use one of {', '.join(GENE_POLICIES)}")
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError("combine_stats needs at least one site's statistics")
    for p in parts:
        if p.get("format") != FORMAT:
            raise ValueError(f"statistics format {p.get('format')!r} is not {FORMAT!r}; recompute with site_stats")
    out: dict = {"format": FORMAT, "sites": sum(int(p.get("sites", 1)) for p in parts),
                 "n_train": sum(int(p.get("n_train", 0)) for p in parts), "features": {}}
    for name in sorted({m for p in parts for m in p.get("features", {})}):
        entries = [p["features"][name] for p in parts if name in p.get("features", {})]
        names = entries[0]["names"]
        if any(e["names"] != names for e in entries):
            sets = [set(e["names"]) for e in entries]
            names = sorted(set.union(*sets) if gene_policy == "union" else set.intersection(*sets))
        acc = {k: np.zeros(len(names)) for k in ("sum", "sumsq", "count")}
        pos = {n: j for j, n in enumerate(names)}
        for e in entries:
            keep = [k for k, n in enumerate(e["names"]) if n in pos]
            idx = [pos[e["names"][k]] for k in keep]
            for k in acc:
                np.add.at(acc[k], idx, np.asarray(e[k], dtype=np.float64)[keep])
        out["features"][name] = {"names": list(names), "sum": acc["sum"].tolist(), "sumsq": acc["sumsq"].tolist(),
                                 "count": acc["count"].astype(int).tolist()}
    for name in sorted({m for p in parts for m in p.get("vocab", {})}):
        from .events import combine_vocab
        out.setdefault("vocab", {})[name] = combine_vocab([p["vocab"][name] for p in parts if name in
                                                           p.get("vocab", {})], vocab_size)
    hists = [np.asarray(p["survival"]["hist"]) for p in parts if "survival" in p]
    if hists:
        out["survival"] = {"hist": np.sum(hists, axis=0).astype(int).tolist()}
    edges = [p["survival_bin_edges"] for p in parts if "survival_bin_edges" in p]
    if edges:
        out["survival_bin_edges"] = list(edges[0])
    return out


def mean_std(entry: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and (population) standard deviation per feature; std floored, count 0 -> (0, 1)."""
    count = np.asarray(entry["count"], dtype=np.float64)
    safe = np.maximum(count, 1.0)
    mean = np.asarray(entry["sum"], dtype=np.float64) / safe
    var = np.maximum(np.asarray(entry["sumsq"], dtype=np.float64) / safe - mean ** 2, 0.0)
    std = np.sqrt(var)
    std = np.where((count < 1) | (std < _STD_FLOOR), 1.0, std)
    return np.where(count < 1, 0.0, mean), std


def survival_bin_edges(stats: dict, n_bins: int) -> list[float]:
    """Interior cut points (``n_bins - 1``) at quantiles of uncensored training times.

    Uses ``stats["survival_bin_edges"]`` when given; otherwise interpolates the combined histogram on
    :data:`SURVIVAL_GRID` (geometrically within a grid bin: accurate to a few percent).

    Raises:
        ValueError: no uncensored training time to place the bins.
    """
    if "survival_bin_edges" in stats:
        edges = [float(x) for x in stats["survival_bin_edges"]]
        if len(edges) != n_bins - 1:
            raise ValueError(f"survival_bin_edges has {len(edges)} cut points; survival-bins = {n_bins} needs "
                             f"{n_bins - 1}")
        return edges
    hist = np.asarray(stats.get("survival", {}).get("hist", []), dtype=np.float64)
    if hist.sum() <= 0:
        raise ValueError("no uncensored survival time in the training split(s): cannot place survival bins")
    cum = np.cumsum(hist)
    lo = np.r_[SURVIVAL_GRID[0] / 10, SURVIVAL_GRID]  # lower edge of each histogram cell
    hi = np.r_[SURVIVAL_GRID, SURVIVAL_GRID[-1] * 10]
    edges = []
    for q in np.arange(1, n_bins) / n_bins:
        target = q * cum[-1]
        k = int(np.searchsorted(cum, target, side="left"))
        before = cum[k - 1] if k else 0.0
        frac = (target - before) / hist[k] if hist[k] else 0.5
        edges.append(float(lo[k] * (hi[k] / lo[k]) ** frac))
    return edges
