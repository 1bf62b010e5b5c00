"""B11 — MEDS load (issue 26): reading a large ``ehr-meds`` site, first load and then from the site cache.

Writes a synthetic MEDS site (``--patients`` subjects, ``--events`` events each on average, ``--codes`` codes, a
30-day history before each prediction time plus events after it, ``--shards`` shards) and times, each in a fresh
process (as Flower runs every message): the first load through the site cache (read + leakage guard + vocabulary +
encoding + writing the cache) and a later load (the cache mapped in), with the process's peak resident memory
(``ru_maxrss``; it includes the ~0.4 GB of the torch import, reported apart). Usage:
  .venv/bin/python -m bench.meds_load --patients 10000 --events 520 --out bench/results/issue26/meds_load.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
import torch
from omnifuse_core.config import Config
from omnifuse_core.data.site_cache import load_site_disk_cached
t1 = time.perf_counter()
rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
site, root = sys.argv[1:3]
cfg = Config().replace(modalities="ehr")
t2 = time.perf_counter()
s = load_site_disk_cached(site, cfg, None, root)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_s": t3 - t2, "peak_rss_mb": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_after_imports_mb": rss_import,
    "patients": len(s.train) + len(s.val) + len(s.test)}))
"""


def write_site(out: Path, patients: int, events: int, codes: int, shards: int, seed: int = 0) -> int:
    """A MEDS site folder (cohort.csv, site.yaml, meds/...); returns the number of events written."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    rng = np.random.default_rng(seed)
    root = out / "meds"
    for sub in ("data", "metadata", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    subjects = np.arange(1, patients + 1, dtype=np.int64)
    epoch = np.datetime64("2100-01-01T00:00:00", "us").astype(np.int64)
    pred = epoch + rng.integers(0, 3650, patients) * 86_400_000_000 + 30 * 86_400_000_000
    y = rng.random(patients) < 0.2
    counts = rng.poisson(events, patients)
    total = 0
    code_names = np.array([f"LAB//{j:04d}" for j in range(codes)], dtype=object)
    for part in np.array_split(np.arange(patients), shards):
        n = counts[part]
        subj = np.repeat(subjects[part], n)
        t = np.repeat(pred[part], n) - rng.integers(-48 * 3_600_000_000, 30 * 86_400_000_000, int(n.sum()))
        order = np.lexsort((t, subj))
        code = rng.zipf(1.3, int(n.sum())) % codes
        val = np.where(rng.random(int(n.sum())) < 0.7, rng.normal(code % 17, 1.0), np.nan).astype(np.float32)
        table = pa.table({"subject_id": pa.array(subj[order]), "time": pa.array(t[order], pa.timestamp("us")),
                          "code": pa.array(code_names[code[order]], pa.string()),
                          "numeric_value": pa.array(val[order], pa.float32(), from_pandas=True)})
        pq.write_table(table, root / "data" / f"{int(part[0])}.parquet")
        total += table.num_rows
    split = np.where(rng.random(patients) < 0.7, "train", np.where(rng.random(patients) < 0.5, "tuning", "held_out"))
    pq.write_table(pa.table({"subject_id": pa.array(subjects), "split": pa.array(split)}),
                   root / "metadata" / "subject_splits.parquet")
    pq.write_table(pa.table({"subject_id": pa.array(subjects), "prediction_time": pa.array(pred, pa.timestamp("us")),
                             "boolean_value": pa.array(y)}), root / "labels" / "task.parquet")
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "bench", "meds_version": "0.4.1"}))
    lines = ["patient_id,y,ehr"] + [f"p{s},{int(v)},{s}" for s, v in zip(subjects, y)]
    (out / "cohort.csv").write_text("\n".join(lines) + "\n")
    (out / "site.yaml").write_text(yaml.safe_dump({"site": "bench", "split-column": None, "labels": {"binary": ["y"]},
                                                   "modalities": {"ehr": {"type": "ehr-meds", "root": "meds",
                                                                          "labels": "meds/labels/task.parquet"}}}))
    return total


def _child(site: Path, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(site), str(root)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=520, help="mean events per patient")
    ap.add_argument("--codes", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="meds-bench-"))
    try:
        t0 = time.perf_counter()
        n_events = write_site(tmp / "site", args.patients, args.events, args.codes, args.shards)
        written = time.perf_counter() - t0
        first = _child(tmp / "site", tmp / "cache")
        later = _child(tmp / "site", tmp / "cache")
        result = {"patients": args.patients, "events": n_events, "codes": args.codes, "shards": args.shards,
                  "write_s": round(written, 1), "first": first, "cached": later,
                  "command": "python -m bench.meds_load " + " ".join(argv or sys.argv[1:])}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
