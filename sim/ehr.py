"""Synthetic ICU time series in the MIMIC-III benchmark per-stay layout (``Hours`` + the 17 variables).

Each patient's severity follows ``s(t) = a + slope * t / 48`` where ``a`` is the EHR acuity signal (latent factor 0
seen through noise) and sicker patients tend to deteriorate (``slope`` grows with ``a``). Vital signs, labs and GCS
are noisy functions of ``s(t)``; glucose and weight also follow the chronic signal when the EHR observes factor 3.
Rows fall at irregular times in [0, 48) h (sicker patients are measured more often); each variable is observed on
a row with its own probability (vitals often, labs and GCS rarely, height / weight once), so most cells are empty.
GCS is written as the benchmark's category strings, numbered ("4 Spontaneously") or plain ("Spontaneously")
depending on the site; intubated patients get "1.0 ET/Trach" / "No Response-ETT" as verbal response.

Sparse stays (per-patient unreliable EHR of the ``reliability`` preset): 3-8 rows whatever the acuity; their acuity
signal is also noisier (see :mod:`sim.cohort`), so a short stay is both less informative and recognizable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from omnifuse_core.data.mimic_schema import CATEGORICAL_VALUES, CSV_COLUMNS, VARIABLES

EYE = [["1 No Response", "2 To pain", "3 To speech", "4 Spontaneously"],
       ["None", "To Pain", "To Speech", "Spontaneously"]]
MOTOR = [["1 No Response", "2 Abnorm extensn", "3 Abnorm flexion", "4 Flex-withdraws", "5 Localizes Pain",
          "6 Obeys Commands"],
         ["No response", "Abnormal extension", "Abnormal Flexion", "Flex-withdraws", "Localizes Pain",
          "Obeys Commands"]]
VERBAL = [["1 No Response", "2 Incomp sounds", "3 Inapprop words", "4 Confused", "5 Oriented"],
          ["No Response", "Incomprehensible sounds", "Inappropriate Words", "Confused", "Oriented"]]
INTUBATED = ["1.0 ET/Trach", "No Response-ETT"]
for _table, _var in ((EYE, "Glascow coma scale eye opening"), (MOTOR, "Glascow coma scale motor response"),
                     (VERBAL, "Glascow coma scale verbal response")):
    assert all(v in CATEGORICAL_VALUES[_var] for row in _table for v in row), _var
assert all(v in CATEGORICAL_VALUES["Glascow coma scale verbal response"] for v in INTUBATED)

# variable -> (probability observed on a row, format)
OBSERVE = {
    "Capillary refill rate": (0.05, None), "Diastolic blood pressure": (0.85, "{:.1f}"),
    "Fraction inspired oxygen": (0.15, "{:.2f}"), "Glucose": (0.15, "{:.1f}"), "Heart Rate": (0.95, "{:.1f}"),
    "Height": (0.0, "{:.1f}"), "Mean blood pressure": (0.85, "{:.1f}"), "Oxygen saturation": (0.9, "{:.1f}"),
    "Respiratory rate": (0.9, "{:.1f}"), "Systolic blood pressure": (0.85, "{:.1f}"), "Temperature": (0.3, "{:.1f}"),
    "Weight": (0.02, "{:.1f}"), "pH": (0.08, "{:.2f}"),
}
GCS_PROB = 0.25


def _values(s: np.ndarray, chronic: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Continuous values per row from severity ``s`` and the chronic signal (both ``[R]``)."""
    r = len(s)
    nz = rng.standard_normal
    sbp = np.clip(120 - 12 * s + 8 * nz(r), 50, 230)
    dbp = np.clip(62 - 6 * s + 6 * nz(r), 20, 130)
    return {
        "Systolic blood pressure": sbp, "Diastolic blood pressure": dbp,
        "Mean blood pressure": np.clip((sbp + 2 * dbp) / 3 + 2 * nz(r), 25, 170),
        "Heart Rate": np.clip(85 + 14 * s + 6 * nz(r), 30, 210),
        "Respiratory rate": np.clip(18 + 4 * s + 2.5 * nz(r), 5, 55),
        "Oxygen saturation": np.clip(97 - 2 * s + 1.5 * nz(r), 60, 100),
        "Temperature": np.clip(37.0 + 0.4 * s + 0.3 * nz(r), 33, 42),
        "Fraction inspired oxygen": np.clip(0.21 + 0.12 * np.maximum(s, 0) + 0.05 * nz(r), 0.21, 1.0),
        "Glucose": np.clip(125 + 15 * s + 25 * chronic + 20 * nz(r), 40, 600),
        "pH": np.clip(7.40 - 0.04 * s + 0.03 * nz(r), 6.8, 7.8),
        "Height": np.clip(170 + 10 * nz(r), 140, 210),
        "Weight": np.clip(80 + 10 * chronic + 15 * nz(r), 35, 250),
    }


def _gcs(s: np.ndarray, style: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """GCS strings per row: total deficit grows with severity and is split over eye / verbal / motor."""
    r = len(s)
    deficit = np.clip(np.round(1.6 * np.maximum(s, -1) + 1 + 1.2 * rng.standard_normal(r)), 0, 12).astype(int)
    eye_d = np.minimum(3, np.round(deficit * 0.3)).astype(int)
    verbal_d = np.minimum(4, np.round(deficit * 0.35)).astype(int)
    motor_d = np.minimum(5, deficit - eye_d - verbal_d)
    eye, verbal, motor = 4 - eye_d, 5 - verbal_d, 6 - motor_d
    intubated = (s > 1.5) & (rng.random(r) < 0.5)
    verbal_str = np.array(VERBAL[style], dtype=object)[verbal - 1]
    verbal_str[intubated] = INTUBATED[style]
    verbal[intubated] = 1
    return {"Glascow coma scale eye opening": np.array(EYE[style], dtype=object)[eye - 1],
            "Glascow coma scale motor response": np.array(MOTOR[style], dtype=object)[motor - 1],
            "Glascow coma scale verbal response": verbal_str,
            "Glascow coma scale total": (eye + verbal + motor).astype(str).astype(object)}


def render_ehr(acuity: np.ndarray, chronic: np.ndarray, gcs_style: int, rng: np.random.Generator,
               sparse: np.ndarray | None = None) -> list[str]:
    """CSV text of each patient's stay.

    Args:
        acuity: EHR acuity signal per patient ``[N]``.
        chronic: chronic signal per patient ``[N]`` (zeros when the EHR does not observe it).
        gcs_style: 0 numbered GCS strings, 1 plain strings.
        rng: the site's EHR random stream.
        sparse: optional bool ``[N]``: short stays (3-8 rows, independent of acuity). None = none (and no extra
            random draws, so earlier presets render identically).

    Returns:
        One CSV document (header + rows, newline-terminated) per patient.
    """
    n = len(acuity)
    n_rows = np.clip(np.round(24 + 8 * acuity + 4 * rng.standard_normal(n)), 12, 64).astype(int)
    if sparse is not None:
        n_rows = np.where(np.asarray(sparse, dtype=bool), rng.integers(3, 9, n), n_rows)
    owner = np.repeat(np.arange(n), n_rows)
    r = len(owner)
    starts = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    first = np.zeros(r, dtype=bool)
    first[starts] = True
    hours = rng.uniform(0, 48, r)
    hours[first] = rng.uniform(0, 1, n)
    hours = np.round(hours, 4)
    order = np.lexsort((hours, owner))
    hours = hours[order]
    slope = 0.5 * acuity + 0.3 * rng.standard_normal(n)
    s = acuity[owner] + slope[owner] * hours / 48 + 0.25 * rng.standard_normal(r)
    values = _values(s, chronic[owner], rng)
    gcs = _gcs(s, gcs_style, rng)
    gcs_seen = rng.random(r) < GCS_PROB
    cap = np.where(rng.random(r) < 1 / (1 + np.exp(-(s - 1.5))), "1.0", "0.0").astype(object)
    columns: list[list[str]] = [[f"{h:.4f}" for h in hours]]
    any_seen = np.zeros(r, dtype=bool)
    for var in VARIABLES:
        if var in gcs:
            seen, cells = gcs_seen, gcs[var]
        elif var == "Capillary refill rate":
            seen, cells = rng.random(r) < OBSERVE[var][0], cap
        else:
            prob, fmt = OBSERVE[var]
            seen = rng.random(r) < prob
            if var == "Fraction inspired oxygen":
                seen |= (s > 0.5) & (rng.random(r) < 0.3)
            if var in ("Height", "Weight"):
                seen |= first & (rng.random(r) < 0.8)
            if var == "Heart Rate":
                seen |= first
            cells = [fmt.format(v) for v in values[var]]
        any_seen |= seen
        columns.append([c if k else "" for c, k in zip(cells, seen)])
    for i in np.flatnonzero(~any_seen):  # a row with no observation at all gets its heart rate
        columns[1 + VARIABLES.index("Heart Rate")][i] = f"{values['Heart Rate'][i]:.1f}"
    lines = [",".join(row) for row in zip(*columns)]
    header = ",".join(CSV_COLUMNS)
    ends = np.cumsum(n_rows)
    return [header + "\n" + "\n".join(lines[a:b]) + "\n" for a, b in zip(starts, ends)]


def write_ehr(site_dir: Path, pids: list[str], docs: list[str]) -> list[str]:
    """Write ``ehr/<pid>.csv`` files; returns their site-relative paths."""
    (site_dir / "ehr").mkdir(parents=True, exist_ok=True)
    rel = []
    for pid, doc in zip(pids, docs):
        path = f"ehr/{pid}.csv"
        (site_dir / path).write_text(doc)
        rel.append(path)
    return rel
