"""The on-disk site cache: a later load (another process) maps the same tensors in; changed files, another config or
statistics, a foreign or corrupt cache are rebuilt, never trusted; nothing but the state folder is written."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.data.site_cache import cache_key, load_site_disk_cached

CFG = Config.load("smoke")


@pytest.fixture()
def site(smoke_federation, tmp_path):
    s = tmp_path / "hospital_a"
    shutil.copytree(smoke_federation / "hospital_a", s)
    return s


def _same(a, b):
    assert a.name == b.name and a.specs == b.specs and a.task == b.task and a.fingerprint == b.fingerprint
    assert a.skipped == b.skipped and a.stats == b.stats
    for split in ("train", "val", "test"):
        x, y = a.splits[split], b.splits[split]
        assert x.patient_ids == y.patient_ids
        assert torch.equal(x.present, y.present) and torch.equal(x.labels, y.labels)
        assert all(torch.equal(x.inputs[k], y.inputs[k]) for k in x.inputs)
    assert a.report.summary == b.report.summary and a.report.problems == b.report.problems


def test_second_load_maps_the_same_site_from_the_cache(site, tmp_path, caplog):
    root = tmp_path / "state" / "site-cache"
    first = load_site_disk_cached(site, CFG, None, root)
    assert len(list(root.iterdir())) == 1
    caplog.set_level(logging.INFO, logger="omnifuse_core.data.site_cache")
    again = load_site_disk_cached(site, CFG, None, root)
    assert "mapped from the site cache" in caplog.text
    _same(first, again)
    _same(load_site(site, CFG), again)  # what a plain load gives


def test_a_new_process_maps_it_in(site, tmp_path):
    root = tmp_path / "state" / "site-cache"
    load_site_disk_cached(site, CFG, None, root)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
            "from omnifuse_core.config import Config; from omnifuse_core.data.site_cache import load_site_disk_cached;"
            f"s = load_site_disk_cached({str(site)!r}, Config.load('smoke'), None, {str(root)!r});"
            "print(len(s.train), s.fingerprint)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "mapped from the site cache" in proc.stderr


def test_changed_files_config_or_stats_give_another_key(site):
    key = cache_key(site, CFG, None)
    assert cache_key(site, CFG.replace(image_size=48), None) != key
    assert cache_key(site, CFG, {"x": 1}) != key
    cohort = site / "cohort.csv"
    st = cohort.stat()
    os.utime(cohort, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key(site, CFG, None) != key
    (site / ".omnifuse_cache").mkdir(exist_ok=True)
    (site / ".omnifuse_cache" / "x").write_text("text cache")  # the text-embedding cache is not part of the key
    assert cache_key(site, CFG, None) == cache_key(site, CFG, None)


@pytest.mark.parametrize("damage", ["foreign", "corrupt"])
def test_foreign_or_corrupt_cache_is_rebuilt_with_a_note(site, tmp_path, caplog, damage):
    root = tmp_path / "state" / "site-cache"
    first = load_site_disk_cached(site, CFG, None, root)
    entry = next(root.iterdir())
    if damage == "foreign":
        meta = json.loads((entry / "meta.json").read_text())
        meta["key"] = "0" * 64
        (entry / "meta.json").write_text(json.dumps(meta))
    else:
        (entry / "tensors.safetensors").write_bytes(b"not a safetensors file")
    caplog.set_level(logging.WARNING)
    rebuilt = load_site_disk_cached(site, CFG, None, root)
    assert ("rebuilding it" in caplog.text)
    _same(first, rebuilt)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="omnifuse_core.data.site_cache")
    load_site_disk_cached(site, CFG, None, root)
    assert "mapped from the site cache" in caplog.text  # the rebuilt entry is good


def test_old_entries_are_pruned(site, tmp_path):
    root = tmp_path / "state" / "site-cache"
    for size in (32, 48, 64):
        load_site_disk_cached(site, CFG.replace(image_size=size), None, root)
    assert len([p for p in root.iterdir() if p.is_dir()]) == 2
