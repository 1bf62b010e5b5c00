"""Malformed MEDS sites (issue 26): each corruption ends in a named problem (file, row where it has one) or a
counted note, never in an exception or the validator's last-resort "unexpected" problem."""
from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.data.validate import validate_site
from sim.generator import generate_federation

CFG = Config().replace(modalities="ehr")
SHARD = "meds/data/0.parquet"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return generate_federation("smoke", 1, tmp_path_factory.mktemp("fz") / "fed", seed=1,
                               ehr_format="meds") / "hospital_a"


@pytest.fixture
def site(pristine, tmp_path) -> Path:
    dst = tmp_path / "s"
    shutil.copytree(pristine, dst)
    return dst


def _rewrite(site: Path, rel: str, fn) -> None:
    pq.write_table(fn(pq.read_table(site / rel)), site / rel)


def _set(table: pa.Table, name: str, array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, array)


def _report(site: Path):
    report = validate_site(site, CFG)
    assert not [p for p in report.problems if p.code == "unexpected"], report.format()
    return report


def _notes(report) -> str:
    return "\n".join(report.summary.get("notes", []))


def test_wrong_dtype_is_a_named_problem(site):
    _rewrite(site, SHARD, lambda t: _set(t, "subject_id", pc.cast(t.column("subject_id"), pa.string())))
    r = _report(site)
    assert any(p.file == SHARD and p.code == "bad_schema" and "subject_id" in p.reason for p in r.problems)


def test_castable_dtype_is_cast_with_a_note(site):
    _rewrite(site, SHARD, lambda t: _set(t, "numeric_value", pc.cast(t.column("numeric_value"), pa.float64())))
    r = _report(site)
    assert r.ok, r.format()
    assert "cast without changing data" in _notes(r)


def test_missing_column_is_a_named_problem(site):
    _rewrite(site, SHARD, lambda t: t.drop_columns(["code"]))
    r = _report(site)
    assert any(p.file == SHARD and "code" in p.reason for p in r.problems)


def test_unsorted_times_name_the_patient_and_row(site):
    def swap(t: pa.Table) -> pa.Table:
        times = t.column("time").to_pylist()
        times[1] = times[1] + timedelta(days=30)  # later than the first subject's next rows
        return _set(t, "time", pa.array(times, pa.timestamp("us")))
    _rewrite(site, SHARD, swap)
    r = _report(site)
    bad = [p for p in r.problems if p.code == "unsorted"]
    assert len(bad) == 1 and bad[0].file == SHARD and bad[0].row is not None and bad[0].field == "time"
    loaded = load_site(site, CFG.replace(on_invalid="skip"))
    assert loaded.skipped["ehr"] == {"unsorted": 1}


def test_label_before_first_event_is_a_counted_note(site):
    labels = "meds/labels/mortality.parquet"
    _rewrite(site, labels, lambda t: _set(t, "prediction_time", pa.array(
        [v - timedelta(days=30) if i < 2 else v for i, v in enumerate(t.column("prediction_time").to_pylist())],
        pa.timestamp("us"))))
    r = _report(site)
    assert r.ok, r.format()
    assert "2 patient(s) have no event before their prediction time" in _notes(r)


def test_unknown_split_name(site):
    splits = "meds/metadata/subject_splits.parquet"
    _rewrite(site, splits, lambda t: _set(t, "split", pa.array(["validation"] + t.column("split").to_pylist()[1:])))
    assert "1 row(s) of meds/metadata/subject_splits.parquet have a split name other than" in _notes(_report(site))
    desc = yaml.safe_load((site / "site.yaml").read_text())  # without a cohort split column: MEDS sets the split
    desc["split-column"] = None
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    r = _report(site)
    bad = [p for p in r.problems if p.code == "bad_split"]
    assert len(bad) == 1 and bad[0].file == splits and bad[0].row == 1 and "validation" in bad[0].reason


def test_subject_split_over_two_shards(site):
    table = pq.read_table(site / SHARD)
    pq.write_table(table.slice(0, 3), site / "meds/data/0.parquet")
    pq.write_table(table.slice(3), site / "meds/data/1.parquet")
    r = _report(site)
    assert any(p.code == "unsorted" and p.file == "meds/data/1.parquet" and "contiguous" in p.reason
               for p in r.problems)


def test_duplicate_label_rows_and_bad_subject_ids(site):
    labels = "meds/labels/mortality.parquet"
    _rewrite(site, labels, lambda t: pa.concat_tables([t, t.slice(1, 1)]))
    cohort = (site / "cohort.csv").read_text().splitlines()
    head = cohort[0].split(",")
    row = cohort[1].split(",")
    row[head.index("ehr")] = "abc"
    (site / "cohort.csv").write_text("\n".join([cohort[0], ",".join(row), *cohort[2:]]) + "\n")
    r = _report(site)
    assert any(p.code == "duplicate_id" and p.file == labels and p.row is not None for p in r.problems)
    assert any(p.code == "bad_value" and p.file == "cohort.csv" and p.row == 1 for p in r.problems)


def test_missing_prediction_time_and_bad_metadata(site):
    desc = yaml.safe_load((site / "site.yaml").read_text())
    del desc["modalities"]["ehr"]["labels"]
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    (site / "meds/metadata/dataset.json").write_text("{not json")
    r = _report(site)
    assert any(p.code == "missing_labels" and "prediction time" in p.reason for p in r.problems)
    assert any(p.code == "bad_schema" and p.file == "meds/metadata/dataset.json" for p in r.problems)


@settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None, max_examples=15)
@given(cut=st.integers(min_value=0, max_value=4000), junk=st.binary(max_size=32))
def test_fuzzed_shard_bytes_never_crash(pristine, tmp_path_factory, cut, junk):
    site = tmp_path_factory.mktemp("b") / "s"
    shutil.copytree(pristine, site)
    raw = (site / SHARD).read_bytes()
    (site / SHARD).write_bytes(raw[:cut] + junk + raw[cut + len(junk):])
    r = _report(site)
    if not r.ok:
        assert all(p.file for p in r.problems)
    json.dumps([tuple(p) for p in r.problems])


@pytest.mark.parametrize("rel", ["meds/labels/mortality.parquet", "meds/metadata/subject_splits.parquet",
                                 "meds/metadata/codes.parquet"])
def test_corrupt_metadata_parquet_is_named(site, rel):
    (site / rel).write_bytes(b"PAR1 not really parquet")
    r = _report(site)
    assert any(p.code == "unreadable" and p.file == rel for p in r.problems), r.format()
