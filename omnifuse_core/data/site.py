"""Load a site folder into train / val / test :class:`MultimodalDataset` splits."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..batch import ModalitySpec, MultimodalDataset, TaskSpec
from ..config import Config
from .problems import SiteDataError
from .sitedata import SiteData
from .scan import SiteScan, scan_site
from .stats import mean_std, stats_from_scan, survival_bin_edges
from .text import CACHE_DIRNAME, TextEmbedder, embed_texts

log = logging.getLogger(__name__)


def load_site(path: str | Path, cfg: Config, *, stats: dict | None = None,
              cache_dir: str | Path | None = None) -> SiteData:
    """Validate and load a site folder.

    Args:
        path: the site folder (see docs/data-format.md).
        cfg: run configuration (task, modalities, sizes, on-invalid, split fractions, seed).
        stats: federated statistics from ``combine_stats`` (None = this site's own statistics).
        cache_dir: text embedding cache (default ``<site>/.omnifuse_cache``).

    Raises:
        SiteDataError: the site is unusable, or it has problems and ``on-invalid`` is ``fail``. The message
            lists every problem with file, row and field.
    """
    site_dir = Path(path)
    scan = scan_site(site_dir, cfg, stats=stats)
    report = scan.report
    if scan.fatal or scan.cohort is None:
        raise SiteDataError(report, f"site {site_dir} cannot be loaded")
    if report.problems and cfg.on_invalid == "fail":
        raise SiteDataError(report)
    skipped = _skipped(scan)
    for key, counts in skipped.items():
        log.warning("site %s: skipped %s entries: %s", site_dir.name, key, counts)
    stats = stats if stats is not None else stats_from_scan(scan, cfg)
    _standardize(scan, stats)
    _encode_events(scan, stats, cfg)
    text_mods = [d for d in scan.data.values() if d.texts is not None]
    if text_mods:
        embedder = TextEmbedder(cfg.text_model_path, cfg.text_max_length, _text_device(cfg),
                                cache_dir=cache_dir or site_dir / CACHE_DIRNAME)
        for d in text_mods:
            embed_texts(d, embedder)
    task = _task(scan, cfg, stats)
    specs = [ModalitySpec(m, scan.data[m].kind, tuple(scan.data[m].shape)) for m in cfg.modality_list]
    for s in specs:
        if 0 in s.shape:
            raise ValueError(f"site {site_dir}: modality '{s.name}' has no features here and its shape is unknown; "
                             "set genomics-genes in the config or pass the federation's combined statistics")
    rows = np.flatnonzero(scan.usable_rows())
    labels = _label_tensor(task, scan.cohort.labels[cfg.task][rows])
    inputs = {s.name: torch.from_numpy(np.ascontiguousarray(scan.data[s.name].values[rows])) for s in specs}
    present = torch.from_numpy(np.stack([scan.data[s.name].present[rows] for s in specs], axis=1))
    ids = [scan.cohort.ids[i] for i in rows]
    full = MultimodalDataset(specs, inputs, present, labels, ids)
    split = scan.cohort.split[rows]
    parts = {s: full.subset(np.flatnonzero(split == s)) for s in ("train", "val", "test")}
    log.info("site %s: %s", scan.desc.name, {s: len(d) for s, d in parts.items()})
    _few_events_note(scan.desc.name, task, parts["test"], report)
    return SiteData(scan.desc.name, site_dir, specs, task, parts["train"], parts["val"], parts["test"], skipped,
                    fingerprint(scan), stats, report)


MIN_TEST_EVENTS = 10


def _few_events_note(site: str, task: TaskSpec, test: MultimodalDataset, report) -> None:
    """Warn (and note in the report) when the test split has fewer than ``MIN_TEST_EVENTS`` events (survival) or
    positives (binary): the site's own test metric is then mostly noise."""
    if task.kind not in ("binary", "survival") or not len(test):
        return
    y = test.labels.numpy()
    events = int((y[:, 1] > 0).sum()) if task.kind == "survival" else int((y.reshape(-1) > 0.5).sum())
    if events >= MIN_TEST_EVENTS:
        return
    what = "events" if task.kind == "survival" else "positive patients"
    note = (f"the test split has {events} {what} among {len(test)} patients (< {MIN_TEST_EVENTS}): this site's own "
            "test metric is mostly noise; read the pooled or federation-wide metric, or use a larger test-fraction")
    log.warning("site %s: %s", site, note)
    if report is not None:
        report.summary.setdefault("notes", []).append(note)


def fingerprint(scan: SiteScan) -> str:
    """SHA-256 over the cohort table bytes and every referenced file (sorted by relative path)."""
    h = hashlib.sha256()
    for path in [scan.cohort.path, *sorted(scan.files - {scan.cohort.path})]:
        rel = path.relative_to(scan.site_dir).as_posix() if path.is_relative_to(scan.site_dir) else path.name
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _skipped(scan: SiteScan) -> dict[str, dict[str, int]]:
    seen: dict[str, set] = {}
    counts: dict[str, Counter] = {}
    for p in scan.report.problems:
        key = p.modality or ("rows" if p.scope == "row" else "cohort")
        ident = (p.patient, p.code) if p.patient is not None else (id(p), p.code)
        if ident in seen.setdefault(key, set()):
            continue
        seen[key].add(ident)
        counts.setdefault(key, Counter())[p.code] += 1
    return {k: dict(v) for k, v in counts.items()}


def _standardize(scan: SiteScan, stats: dict) -> None:
    """Standardize the features that carry statistics; NaN (zero-filled genes, empty cells) -> 0 (the mean)."""
    for name, d in scan.data.items():
        if d.feature_index is None:
            continue
        entry = stats.get("features", {}).get(name)
        if entry is None:
            log.warning("no statistics for modality '%s'; its features are left unstandardized", name)
            mean, std = np.zeros(len(d.feature_names)), np.ones(len(d.feature_names))
        else:
            mean_all, std_all = mean_std(entry)
            pos = {n: j for j, n in enumerate(entry["names"])}
            idx = [pos.get(n, -1) for n in d.feature_names]
            mean = np.array([mean_all[j] if j >= 0 else 0.0 for j in idx])
            std = np.array([std_all[j] if j >= 0 else 1.0 for j in idx])
        cols = d.feature_index
        x = (d.values[..., cols].astype(np.float64) - mean) / std
        d.values[..., cols] = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
        d.values[~d.present] = 0


def _encode_events(scan: SiteScan, stats: dict, cfg: Config) -> None:
    """MEDS event modalities -> ``[N, L, 4]`` with the (federated) vocabulary; out-of-vocabulary events counted."""
    from .events import encode_events

    for name, d in scan.data.items():
        if d.events is None:
            continue
        vocab = stats.get("vocab", {}).get(name)
        if vocab is None:
            log.warning("no code vocabulary for modality '%s' in the statistics; every event gets the unknown token",
                        name)
            vocab = {}
        note = encode_events(d, vocab, int(cfg.ehr_vocab_size))
        if note:
            log.info("site %s: %s", scan.desc.name, note)
            scan.report.summary.setdefault("notes", []).append(note)


def _task(scan: SiteScan, cfg: Config, stats: dict) -> TaskSpec:
    cols = tuple(scan.desc.labels[cfg.task])
    if cfg.task == "binary":
        return TaskSpec("binary", 1, cols)
    if cfg.task == "multiclass":
        return TaskSpec("multiclass", int(scan.desc.labels["num-classes"]), cols)
    if cfg.task == "multilabel":
        return TaskSpec("multilabel", len(cols), cols)
    try:
        edges = survival_bin_edges(stats, cfg.survival_bins)
    except ValueError as exc:
        raise SiteDataError(scan.report, f"site {scan.site_dir}: {exc}") from exc
    return TaskSpec("survival", cfg.survival_bins, cols, tuple(edges))


def _label_tensor(task: TaskSpec, y: np.ndarray) -> torch.Tensor:
    if task.kind == "binary":
        return torch.tensor(y[:, 0], dtype=torch.float32)
    if task.kind == "multiclass":
        return torch.tensor(y[:, 0], dtype=torch.long)
    return torch.tensor(y, dtype=torch.float32)


def _text_device(cfg: Config) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device
