"""Write a synthetic site's EHR as MEDS (``omnifuse synth --ehr-format meds``; docs/data-format.md).

The same observations as the per-stay CSVs (``sim.ehr.render_ehr``): each non-empty cell becomes one event at
``admission + Hours``, code ``ICU//<variable>`` with ``numeric_value`` for the 12 continuous variables and
``ICU//<variable>//<category>`` for the categorical ones, plus one ``HOSPITAL_ADMISSION`` event at admission. The
prediction time is ``admission + ehr-max-hours`` (48 h), so every CSV observation lies strictly before it. Patients
who die also get a ``MEDS_DEATH`` event *after* the prediction time: it gives the label away, as it would in a real
export, and only the reader's leakage guard keeps it out of the model.

Layout under ``<site>/meds/``: ``data/0.parquet`` (sorted by subject_id, time), ``metadata/dataset.json``,
``metadata/codes.parquet``, ``metadata/subject_splits.parquet``, ``labels/mortality.parquet``.
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from omnifuse_core.data.mimic_schema import CATEGORICAL_VALUES, TIME_COLUMN

ROOT = "meds"
LABELS = f"{ROOT}/labels/mortality.parquet"
PREDICTION_HOURS = 48.0
_EPOCH = datetime(2100, 1, 1)
_SPLITS = {"train": "train", "val": "tuning", "test": "held_out"}
DECLARATION = {"type": "ehr-meds", "root": ROOT, "labels": LABELS}


def subject_ids(site_index: int, n: int) -> np.ndarray:
    """MEDS subject ids of a site's patients (int64, unique across the federation)."""
    return (site_index + 1) * 1_000_000 + np.arange(n, dtype=np.int64)


def write_meds(site_dir: Path, subjects: np.ndarray, docs: list[str], died: np.ndarray, splits: list[str],
               rng: np.random.Generator) -> None:
    """Write the MEDS root of one site.

    Args:
        site_dir: the site folder.
        subjects: subject id per EHR patient.
        docs: per-stay CSV text per EHR patient (``sim.ehr.render_ehr``).
        died: mortality label per EHR patient.
        splits: ``train``/``val``/``test`` per EHR patient.
        rng: random stream (admission dates, death times).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = site_dir / ROOT
    for sub in ("data", "metadata", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    admit = [_EPOCH + timedelta(days=int(d)) for d in rng.integers(0, 3650, len(subjects))]
    death_after = rng.uniform(1.0, 240.0, len(subjects))
    cols: dict[str, list] = {"subject_id": [], "time": [], "code": [], "numeric_value": []}

    def event(s, t, code, value=None):
        cols["subject_id"].append(int(s))
        cols["time"].append(t)
        cols["code"].append(code)
        cols["numeric_value"].append(value)

    for k, (s, doc) in enumerate(zip(subjects, docs)):
        event(s, admit[k], "HOSPITAL_ADMISSION")
        rows = list(csv.reader(io.StringIO(doc)))
        header = rows[0]
        for line in rows[1:]:
            t = admit[k] + timedelta(hours=float(line[header.index(TIME_COLUMN)]))
            for var, cell in zip(header, line):
                if var == TIME_COLUMN or not cell.strip():
                    continue
                if var in CATEGORICAL_VALUES:
                    event(s, t, f"ICU//{var}//{cell.strip()}")
                else:
                    event(s, t, f"ICU//{var}", float(cell))
        if died[k]:
            event(s, admit[k] + timedelta(hours=PREDICTION_HOURS + float(death_after[k])), "MEDS_DEATH")
    data = pa.table({"subject_id": pa.array(cols["subject_id"], pa.int64()),
                     "time": pa.array(cols["time"], pa.timestamp("us")),
                     "code": pa.array(cols["code"], pa.string()),
                     "numeric_value": pa.array(cols["numeric_value"], pa.float32())})
    data = data.sort_by([("subject_id", "ascending"), ("time", "ascending")])  # stable: same-time order kept
    pq.write_table(data, root / "data" / "0.parquet")
    codes = sorted(set(cols["code"]))
    pq.write_table(pa.table({"code": pa.array(codes, pa.string()),
                             "description": pa.array([c.split("//")[1] if "//" in c else c for c in codes]),
                             "parent_codes": pa.array([[] for _ in codes], pa.list_(pa.string()))}),
                   root / "metadata" / "codes.parquet")
    pq.write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()),
                             "split": pa.array([_SPLITS[s] for s in splits], pa.string())}),
                   root / "metadata" / "subject_splits.parquet")
    pred = [a + timedelta(hours=PREDICTION_HOURS) for a in admit]
    pq.write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()),
                             "prediction_time": pa.array(pred, pa.timestamp("us")),
                             "boolean_value": pa.array([bool(d) for d in died], pa.bool_())}),
                   site_dir / LABELS)
    meta = {"dataset_name": f"omnifuse-synthetic-{site_dir.name}", "dataset_version": "1",
            "etl_name": "omnifuse synth --ehr-format meds", "etl_version": "1", "meds_version": "0.4.1",
            "created_at": "2100-01-01T00:00:00"}
    (root / "metadata" / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
