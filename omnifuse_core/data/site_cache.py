"""A loaded site kept on disk, so that later messages (any process) map it in instead of re-reading it (issue 16).

Flower starts a fresh ClientApp process for every message, so an in-process cache never survives: every train and
evaluate message would re-read, validate, discretise, decode images and embed texts. After the first load the site's
tensors are written once to ``<state-dir>/site-cache/<key>/``:

* ``tensors.safetensors`` — every split's inputs, presence mask and labels (safetensors: no pickle, memory-mapped
  when read);
* ``meta.json`` — the key, names, specs, task, patient ids, skipped counts, notes, fingerprint and statistics.

The key is a SHA-256 of: every file of the site folder by relative path, size and modification time (rsync's quick
check; the text-embedding cache folder is left out), the run's config digest, the combined statistics, and a digest
of this package's source (any code change rebuilds). Changed files → a new key → rebuilt. A cache whose ``meta.json``
names another key, or that cannot be read, is rebuilt with a logged note, never trusted. Only the newest
``KEEP`` entries stay. Nothing in it leaves the site: it sits in the site's own state folder, next to its privacy
ledger.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch

from ..batch import ModalitySpec, MultimodalDataset, TaskSpec
from .problems import Problem, ValidationReport
from .sitedata import CACHE_DIRNAME, SiteData

log = logging.getLogger(__name__)
FORMAT = 1
KEEP = 2
SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of this package's Python sources (the code that turns files into tensors)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def files_signature(site_dir: Path) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every file under ``site_dir`` (the text cache folder excluded)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(site_dir):
        dirnames[:] = sorted(d for d in dirnames if d != CACHE_DIRNAME)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            out.append((str(p.relative_to(site_dir)), st.st_size, st.st_mtime_ns))
    return out


def cache_key(site_dir: Path, cfg, stats: Optional[dict]) -> str:
    payload = {"format": FORMAT, "files": files_signature(Path(site_dir)), "config": cfg.digest(),
               "stats": stats, "code": code_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save(site, folder: Path, key: str) -> None:
    """Write ``site`` (a ``SiteData``) under ``folder`` atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {}
    for split in SPLITS:
        ds = site.splits[split]
        tensors.update({f"{split}/in/{k}": v.contiguous() for k, v in ds.inputs.items()})
        tensors[f"{split}/present"] = ds.present.contiguous()
        tensors[f"{split}/labels"] = ds.labels.contiguous()
    save_file(tensors, str(tmp / "tensors.safetensors"))
    report = site.report
    meta = {"key": key, "format": FORMAT, "name": site.name, "specs": [s.to_dict() for s in site.specs],
            "task": site.task.to_dict(), "ids": {s: list(site.splits[s].patient_ids) for s in SPLITS},
            "skipped": site.skipped, "fingerprint": site.fingerprint, "stats": site.stats,
            "report": None if report is None else {"site": report.site, "summary": report.summary,
                                                   "problems": [dataclasses.asdict(p) for p in report.problems]}}
    (tmp / "meta.json").write_text(json.dumps(meta, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load(folder: Path, key: str, site_dir: Path):
    """The cached ``SiteData`` in ``folder`` when it was written for ``key``; None otherwise (with a note when a
    cache exists but is foreign or unreadable)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or meta.get("format") != FORMAT:
            log.warning("site cache %s was written for other files or another config; rebuilding it", folder)
            return None
        tensors = load_file(str(folder / "tensors.safetensors"))
        specs = [ModalitySpec.from_dict(d) for d in meta["specs"]]
        splits = {s: MultimodalDataset(specs, {sp.name: tensors[f"{s}/in/{sp.name}"] for sp in specs},
                                       tensors[f"{s}/present"], tensors[f"{s}/labels"], list(meta["ids"][s]))
                  for s in SPLITS}
        rep = meta.get("report")
        report = None if rep is None else ValidationReport(
            rep["site"], [Problem(**p) for p in rep["problems"]], rep["summary"])
        return SiteData(meta["name"], Path(site_dir), specs, TaskSpec.from_dict(meta["task"]), splits["train"],
                        splits["val"], splits["test"], meta["skipped"], meta["fingerprint"], meta["stats"], report)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:  # corrupt, truncated, edited
        log.warning("site cache %s is unreadable (%s: %s); rebuilding it", folder, type(exc).__name__, exc)
        return None


def load_site_disk_cached(site_dir: Path, cfg, stats: Optional[dict], cache_root: Path):
    """``load_site`` through the on-disk cache under ``cache_root`` (the site's ``state-dir/site-cache``)."""
    from .site import load_site

    site_dir, cache_root = Path(site_dir), Path(cache_root)
    key = cache_key(site_dir, cfg, stats)
    folder = cache_root / key[:24]
    t0 = time.perf_counter()
    site = load(folder, key, site_dir)
    if site is not None:
        log.info("site %s: tensors mapped from the site cache in %.2f s", site.name, time.perf_counter() - t0)
        return site
    site = load_site(site_dir, cfg, stats=stats)
    try:
        save(site, folder, key)
        _prune(cache_root, keep=folder)
        log.info("site %s: loaded in %.2f s and written to the site cache %s", site.name,
                 time.perf_counter() - t0, folder)
    except OSError as exc:  # a read-only or full state folder must not stop training
        log.warning("site %s: could not write the site cache under %s (%s); later messages reload the files",
                    site.name, cache_root, exc)
    return site


def _prune(cache_root: Path, keep: Path) -> None:
    """Keep the newest ``KEEP`` cache entries (by modification time); ``keep`` always stays."""
    entries = sorted((p for p in cache_root.iterdir() if p.is_dir() and ".tmp" not in p.name),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in entries if p != keep][KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)
