"""Import the MIMIC-III benchmark's task folders (``listfile.csv`` + per-stay CSVs) as a site folder."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

log = logging.getLogger(__name__)

TASK_ALIASES = {"in-hospital-mortality": "binary", "ihm": "binary", "decompensation": "binary",
                "phenotyping": "multilabel", "binary": "binary", "multilabel": "multilabel"}
SPLIT_NAMES = ("train", "val", "test")


def import_mimic_benchmark(listfile: str | Path | Sequence[str | Path], stays_dir: str | Path | Sequence[str | Path],
                           out_dir: str | Path, *, site_name: str, task: str = "binary",
                           split: str | None = None) -> Path:
    """Write a site folder from benchmark list files and per-stay CSVs (the CSVs are copied, not linked).

    The list file has columns ``stay,y_true`` (in-hospital mortality), ``stay,period_length,y_true``
    (decompensation) or ``stay,period_length,<25 phenotypes>`` (phenotyping, ``task="multilabel"``). One patient
    row per stay; a stay listed more than once (decompensation lists one row per prediction time) keeps its first
    row and the others are counted in the log. The EHR window is always the first ``ehr-max-hours``.

    Args:
        listfile: one list file, or several (e.g. train, val and test list files).
        stays_dir: folder of the per-stay CSVs; one per list file when several are given.
        out_dir: the site folder to create (must not contain a cohort already).
        site_name: the site's name in site.yaml.
        task: ``binary`` / ``multilabel`` (or the benchmark names in-hospital-mortality, decompensation,
            phenotyping).
        split: split of every imported row; None = from the list file's name (``train_``/``val_``/``test_``
            prefix) or its folder (``train``/``test``), else no split column (seeded random split at load time).

    Returns:
        The site folder.

    Raises:
        ValueError: unknown task, unexpected list-file columns, or per-stay CSVs that do not exist (all listed).
    """
    kind = TASK_ALIASES.get(task)
    if kind is None:
        raise ValueError(f"task {task!r} unknown; use one of {sorted(TASK_ALIASES)}")
    lists = [Path(listfile)] if isinstance(listfile, (str, Path)) else [Path(p) for p in listfile]
    dirs = [Path(stays_dir)] if isinstance(stays_dir, (str, Path)) else [Path(d) for d in stays_dir]
    if len(dirs) == 1:
        dirs = dirs * len(lists)
    if len(dirs) != len(lists):
        raise ValueError(f"give one stays folder, or one per list file ({len(lists)} list files, {len(dirs)} folders)")
    out = Path(out_dir)
    if (out / "cohort.csv").exists():
        raise ValueError(f"{out} already holds a cohort.csv; choose an empty output folder")
    frames, label_cols, missing = [], None, []
    for lf, sd in zip(lists, dirs):
        df = pd.read_csv(lf, dtype=str, keep_default_na=False)
        df.columns = [c.strip() for c in df.columns]
        if "stay" not in df.columns:
            raise ValueError(f"{lf}: no 'stay' column; expected stay,y_true or stay,period_length,<labels>")
        cols = [c for c in df.columns if c not in ("stay", "period_length")]
        if kind == "binary" and cols != ["y_true"]:
            raise ValueError(f"{lf}: columns {list(df.columns)}; a binary task needs stay[,period_length],y_true")
        if not cols:
            raise ValueError(f"{lf}: no label column after stay/period_length")
        if label_cols is not None and cols != label_cols:
            raise ValueError(f"{lf}: label columns {cols} differ from the first list file's {label_cols}")
        label_cols = cols
        df["split"] = split or _split_of(lf)
        df["_dir"] = str(sd)
        missing += [str(sd / s) for s in df["stay"] if not (sd / s).is_file()]
        frames.append(df)
    if missing:
        shown = "\n  ".join(missing[:20])
        raise ValueError(f"{len(missing)} per-stay CSV(s) listed but not found (first {min(20, len(missing))}):\n  "
                         f"{shown}\ncheck the stays folder")
    df = pd.concat(frames, ignore_index=True)
    dup = df["stay"].duplicated(keep="first")
    if dup.any():
        log.warning("%d list-file row(s) repeat a stay already imported (one patient row per stay); kept the "
                    "first row of each stay", int(dup.sum()))
    df = df[~dup]
    (out / "ehr").mkdir(parents=True, exist_ok=True)
    refs = []
    for stay, sd in zip(df["stay"], df["_dir"]):
        dst = out / "ehr" / Path(stay).name
        shutil.copyfile(Path(sd) / stay, dst)
        refs.append(f"ehr/{dst.name}")
    cohort = pd.DataFrame({"patient_id": [Path(s).name.removesuffix(".csv").removesuffix("_timeseries")
                                          for s in df["stay"]]})
    has_split = df["split"].astype(bool).all()
    if has_split:
        cohort["split"] = df["split"].to_numpy()
    for c in label_cols:
        cohort[c] = df[c].to_numpy()
    cohort["ehr"] = refs
    cohort.to_csv(out / "cohort.csv", index=False)
    desc = {"site": site_name, "cohort": "cohort.csv", "id-column": "patient_id",
            "split-column": "split" if has_split else None, "labels": {kind: list(label_cols)},
            "modalities": {"ehr": {"type": "ehr-timeseries", "format": "mimic-csv"}}}
    (out / "site.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    log.info("imported %d stays (%d label column(s)) into %s", len(cohort), len(label_cols), out)
    return out


def _split_of(listfile: Path) -> str:
    for name in SPLIT_NAMES:
        if listfile.name.startswith(f"{name}_") or listfile.parent.name == name:
            return name
    return ""
