"""EHR discretizer (per-stay CSV and long table) and static tabular columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from omnifuse_core.config import Config
from omnifuse_core.data import mimic_schema as S
from omnifuse_core.data.site import load_site
from omnifuse_core.data.validate import validate_site

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "mimic" / "train"
IDENTITY = {"features": {"ehr": {"names": S.CONTINUOUS, "sum": [0.0] * 12, "sumsq": [1.0] * 12, "count": [1] * 12}},
            "format": "omnifuse-stats/1"}


def _site(tmp: Path, modalities: dict, rows: list[dict], extra_files: dict[str, str] | None = None) -> Path:
    site = tmp / "s"
    site.mkdir(parents=True)
    for name, text in (extra_files or {}).items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    cols = list(rows[0])
    (site / "cohort.csv").write_text("\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]))
    (site / "site.yaml").write_text(yaml.safe_dump({"site": "s", "labels": {"binary": ["y"]},
                                                    "modalities": modalities}))
    return site


def _cfg(**kw) -> Config:
    return Config().replace(modalities="ehr", **kw)


def test_schema_counts():
    assert len(S.VARIABLES) == 17 and S.FEATURES_PER_STEP == 76
    assert [len(v) for v in S.CATEGORICAL_VALUES.values()] == [2, 8, 12, 13, 12]
    assert len(S.CONTINUOUS) == 12 and set(S.NORMAL_VALUES) == set(S.VARIABLES)
    for var, values in S.CATEGORICAL_VALUES.items():
        assert S.NORMAL_VALUES[var] in values


def test_discretize_benchmark_stay(tmp_path):
    stay = (FIXTURE / "10011_episode1_timeseries.csv").read_text()
    site = _site(tmp_path, {"ehr": {"type": "ehr-timeseries"}},
                 [{"patient_id": "a", "split": "train", "y": "1", "ehr": "ehr/a.csv"}], {"ehr/a.csv": stay})
    x = load_site(site, _cfg(), stats=IDENTITY).train.inputs["ehr"][0].numpy()
    assert x.shape == (24, 76)
    hr, mask_hr = S.BLOCK_START["Heart Rate"], S.MASK_START + S.VARIABLES.index("Heart Rate")
    # step 0 = (0, 2] h: 90 then 88 -> the last one wins; step 3 = (6, 8] h: 101; 51.5 h is beyond 48 h.
    assert x[0, hr] == pytest.approx(88.0) and x[0, mask_hr] == 1
    assert np.allclose(x[1:3, hr], 88.0) and not x[1:3, mask_hr].any()  # previous value carried, mask 0
    assert x[3, hr] == pytest.approx(101.0) and x[3, mask_hr] == 1
    assert np.allclose(x[4:, hr], 101.0) and not x[4:, mask_hr].any()
    # glucose first seen at 2.18 h (step 1): normal value 128 before it.
    glu = S.BLOCK_START["Glucose"]
    assert x[0, glu] == pytest.approx(128.0) and x[1, glu] == pytest.approx(142.0)
    # categorical one-hot: eye opening '4 Spontaneously' at step 0, '3 To speech' from step 3.
    eye = S.BLOCK_START["Glascow coma scale eye opening"]
    vals = S.CATEGORICAL_VALUES["Glascow coma scale eye opening"]
    assert x[0, eye + vals.index("4 Spontaneously")] == 1 and x[0, eye:eye + 8].sum() == 1
    assert x[5, eye + vals.index("3 To speech")] == 1 and x[5, eye:eye + 8].sum() == 1
    # every categorical block is exactly one-hot at every step
    for var, values in S.CATEGORICAL_VALUES.items():
        start = S.BLOCK_START[var]
        assert np.all(x[:, start:start + len(values)].sum(1) == 1)


def test_long_table_matches_per_stay(tmp_path):
    stay = (FIXTURE / "10026_episode1_timeseries.csv").read_text()
    import pandas as pd
    from io import StringIO

    df = pd.read_csv(StringIO(stay), dtype=str, keep_default_na=False)
    long = df.melt(id_vars="Hours", var_name="variable", value_name="value")
    long = long[long["value"] != ""]
    lines = ["patient,time,variable,value"] + [f'b,{r.Hours},{r.variable},"{r.value}"' for r in long.itertuples()]
    files = {"ehr/b.csv": stay, "long.csv": "\n".join(lines)}
    a = _site(tmp_path / "1", {"ehr": {"type": "ehr-timeseries"}},
              [{"patient_id": "b", "split": "train", "y": "0", "ehr": "ehr/b.csv"}], files)
    b = _site(tmp_path / "2", {"ehr": {"type": "ehr-long", "table": "long.csv"}},
              [{"patient_id": "b", "split": "train", "y": "0"}], files)
    xa = load_site(a, _cfg(), stats=IDENTITY).train.inputs["ehr"]
    xb = load_site(b, _cfg(), stats=IDENTITY).train.inputs["ehr"]
    assert np.array_equal(xa.numpy(), xb.numpy())
    # negative time goes to step 0; capillary refill '1.0' (numeric) is understood
    cap = S.BLOCK_START["Capillary refill rate"]
    assert xa[0, 14, cap + 1] == 1  # 30 h -> step 14


def test_step_config_changes_shape(tmp_path):
    stay = (FIXTURE / "10045_episode2_timeseries.csv").read_text()
    site = _site(tmp_path, {"ehr": {"type": "ehr-timeseries"}},
                 [{"patient_id": "c", "split": "train", "y": "0", "ehr": "ehr/c.csv"}], {"ehr/c.csv": stay})
    data = load_site(site, _cfg(ehr_step_hours=1.0, ehr_max_hours=12.0), stats=IDENTITY)
    assert data.specs[0].shape == (12, 76)
    x = data.train.inputs["ehr"][0]
    hr = S.MASK_START + S.VARIABLES.index("Heart Rate")
    assert x[:, hr].nonzero().flatten().tolist() == [3]  # 4.0 h -> step (3, 4]


def test_bad_ehr_values_are_reported(tmp_path):
    lines = [",".join(S.CSV_COLUMNS), "1.0" + ",abc" + "," * 16, "x" + "," * 17,
             "2.0" + ",,,,Eyes wide open" + "," * 13, "3.0" + ",,nan" + "," * 15]
    site = _site(tmp_path, {"ehr": {"type": "ehr-timeseries"}},
                 [{"patient_id": "d", "split": "train", "y": "0", "ehr": "ehr/d.csv"}],
                 {"ehr/d.csv": "\n".join(lines)})
    report = validate_site(site, _cfg())
    found = {(p.file, p.row, p.field) for p in report.problems}
    assert ("ehr/d.csv", 1, "Capillary refill rate") in found  # 'abc' is not a category
    assert ("ehr/d.csv", 3, "Glascow coma scale eye opening") in found
    assert ("ehr/d.csv", 4, "Diastolic blood pressure") in found  # nan
    assert any(p.file == "ehr/d.csv" and p.row == 2 and p.field == "Hours" for p in report.problems)
    assert not report.ok


def test_tabular_columns(tmp_path):
    rows = [{"patient_id": f"p{i}", "split": "train", "y": str(i % 2), "age": a, "lactate": l}
            for i, (a, l) in enumerate([("60", "1.0"), ("70", ""), ("", ""), ("80", "3.0")])]
    site = _site(tmp_path, {"labs": {"type": "tabular", "columns": ["age", "lactate"]}}, rows)
    data = load_site(site, Config().replace(modalities="labs"))
    assert data.specs[0].kind == "tabular" and data.specs[0].shape == (2,)
    x, present = data.train.inputs["labs"], data.train.present[:, 0]
    assert present.tolist() == [True, True, False, True]
    assert x[:, 0].tolist() == pytest.approx([-1.2247449, 0.0, 0.0, 1.2247449], abs=1e-5)
    assert x[1, 1] == 0.0  # empty cell -> feature mean
