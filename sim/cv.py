"""Repeated random-split evaluation (``omnifuse cv``): the same config trained and tested on ``repeats`` patient
splits (``split-seed`` = first, first + 1, ...), one run directory per split, and a summary with the mean and a 95 %
t-interval over splits of the final test metrics.

Why: a small cohort's test split holds a few events per site, so one split's metric is mostly noise (issue 15: per-
site C from 0.11 to 1.0). Repeating the split is scikit-learn's ``ShuffleSplit`` / ``RepeatedKFold`` practice and
PyHealth's "mean ± std over splits"; the interval is over splits (they share patients, so it is optimistic, as
every repeated-split interval is; say so when quoting it).

Sites whose cohort table has a split column keep their fixed split, so every repeat would be the same run: ``cv``
refuses them. ``cv`` also refuses ``dp: true``: each repeat trains on the same patients again and spends ε again.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from omnifuse_core.config import Config, ConfigError
from omnifuse_core.data.descriptor import parse_descriptor
from omnifuse_core.metrics import headline_metric

log = logging.getLogger(__name__)
SUMMARY = "cv.json"


def fixed_split_sites(data: Path) -> list[str]:
    """Sites of ``data`` whose cohort table has the descriptor's split column (their split ignores split-seed)."""
    import pandas as pd

    from sim.modes import site_folders

    fixed = []
    for folder in site_folders(data):
        desc, _ = parse_descriptor(folder)
        if desc is None or not desc.split_column:
            continue
        table = folder / desc.cohort
        try:
            cols = (pd.read_parquet(table).columns if table.suffix == ".parquet"
                    else pd.read_csv(table, nrows=0, sep=None, engine="python").columns)
        except (OSError, ValueError, ImportError) as exc:  # unreadable here (or Parquet without pyarrow):
            # training names the problem; here it only means "cannot tell whether the split is fixed"
            log.debug("cv: cannot read the header of %s: %s", table, exc)
            continue
        if desc.split_column in cols:
            fixed.append(folder.name)
    return fixed


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-interval of the finite ``values`` (NaN bounds with fewer than two)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size < 2:
        return float(v.mean()), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _finals(final: dict, head: str) -> dict[str, Optional[float]]:
    """The headline numbers of one run's ``final`` entry."""
    out = {"global": (final.get("global") or {}).get(head)}
    if "pooled_binned" in final:
        out["pooled_binned"] = final["pooled_binned"].get("auroc")
    if "pooled_stratified" in final:
        out["pooled_stratified"] = final["pooled_stratified"].get("c_index")
    if "pooled" in final:
        out["pooled_exact"] = final["pooled"].get(head)
    return out


def run_cv(mode: str, cfg: Config, data: Path, out: Path, *, repeats: int, first: int = 0,
           run: Optional[Callable[[str, Config, Path, Path], Path]] = None) -> dict:
    """Train and test ``repeats`` times on split seeds ``first``, ``first + 1``, ...; writes ``out/cv.json``.

    Args:
        run: ``(mode, cfg, data, run_dir) -> run_dir`` (the CLI's ``train``); needed.
    """
    if repeats < 2:
        raise ConfigError(f"cv needs --repeats >= 2 to say anything about spread, got {repeats}")
    if cfg.dp:
        raise ConfigError("cv with dp: true would train on the same patients once per repeat and spend the privacy "
                          "budget again each time; run DP training once with `omnifuse train` (its ledger counts it)")
    fixed = fixed_split_sites(data)
    if fixed:
        raise ConfigError(f"sites {fixed} have a split column in their cohort table, so split-seed does not change "
                          "their patients' split and every repeat would be the same run; remove the column from the "
                          "cohort table and set split-column: null in site.yaml to let cv draw random splits")
    head = headline_metric(cfg.task)
    out = Path(out)
    runs = []
    for k in range(first, first + repeats):
        run_dir = run(mode, cfg.replace(split_seed=k), data, out / f"split-{k}")
        final = json.loads((Path(run_dir) / "metrics.json").read_text()).get("final") or {}
        runs.append({"split_seed": k, "run_dir": str(run_dir), **_finals(final, head)})
        log.info("cv split-seed %d: %s", k, {key: v for key, v in runs[-1].items() if key not in ("run_dir",)})
    keys = [key for key in runs[0] if key not in ("split_seed", "run_dir")]
    summary = {key: dict(zip(("mean", "ci_low", "ci_high"), t_interval([r.get(key) for r in runs]))) for key in keys}
    result = {"mode": mode, "metric": head, "repeats": repeats, "first_split_seed": first, "runs": runs,
              "summary": summary, "interval": "95 % t-interval over splits (splits share patients: optimistic)"}
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).write_text(json.dumps(result, indent=1))
    return result
