"""Validator: every problem of a corrupted site is listed at once, with file and row; on-invalid fail / skip."""
from __future__ import annotations

import shutil

import pytest

from fixtures.data.site_factory import make_site
from omnifuse_core.config import Config
from omnifuse_core.data.problems import SiteDataError
from omnifuse_core.data.site import load_site
from omnifuse_core.data.validate import validate_site

CFG = Config().replace(modalities="ehr,image,genomics")  # no text model needed here


def _rewrite_cohort(site, edit):
    lines = (site / "cohort.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    edit(header, rows)
    (site / "cohort.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")


@pytest.fixture
def corrupted(tmp_path):
    site = make_site(tmp_path, 8)
    (site / "images" / "p1.png").unlink()  # deleted file (row 2)
    (site / "images" / "p3.png").write_bytes(b"not a png at all")  # unreadable image (row 4)
    (tmp_path / "outside.png").write_bytes((site / "images" / "p0.png").read_bytes())

    def edit(header, rows):
        img, y = header.index("image"), header.index("mortality")
        rows[2][img] = "../outside.png"  # escapes the site (row 3)
        rows[4][y] = "nan"  # NaN label (row 5)
        rows[5][img] = "/etc/passwd"  # absolute path (row 6)
        rows.append(list(rows[6]))  # duplicated patient row (row 9 repeats row 7)
    _rewrite_cohort(site, edit)
    return site


def test_every_problem_listed_with_file_and_row(corrupted):
    report = validate_site(corrupted, CFG)
    assert not report.ok
    got = {(p.file, p.row, p.field, p.code) for p in report.problems}
    assert ("cohort.csv", 2, "image", "missing_file") in got
    assert ("cohort.csv", 3, "image", "path_escapes_site") in got
    assert ("cohort.csv", 4, "image", "unreadable") in got
    assert ("cohort.csv", 5, "mortality", "invalid_label") in got
    assert ("cohort.csv", 6, "image", "path_escapes_site") in got
    assert ("cohort.csv", 9, "patient_id", "duplicate_id") in got
    assert len(report.problems) == 6
    text = report.format()
    assert "cohort.csv row 3 [image]" in text and "duplicate patient id 'p6'" in text
    assert tuple(report.problems[0])[0] == "cohort.csv"  # (file, row, field, reason)


def test_fail_mode_raises_with_all_problems(corrupted):
    with pytest.raises(SiteDataError) as err:
        load_site(corrupted, CFG)
    assert len(err.value.report.problems) == 6
    assert "does not exist" in str(err.value) and "escapes the site folder" in str(err.value)


def test_skip_mode_drops_entries_and_rows(corrupted):
    data = load_site(corrupted, CFG.replace(on_invalid="skip"))
    assert data.skipped["image"] == {"missing_file": 1, "path_escapes_site": 2, "unreadable": 1}
    assert data.skipped["rows"] == {"invalid_label": 1, "duplicate_id": 1}
    ids = [*data.train.patient_ids, *data.val.patient_ids, *data.test.patient_ids]
    assert sorted(ids) == ["p0", "p1", "p2", "p3", "p5", "p6", "p7"]  # p4 (NaN label) and the duplicate dropped
    by_id = {pid: data.train.present[k] for k, pid in enumerate(data.train.patient_ids)}
    assert by_id["p1"].tolist() == [True, False, True]  # image missing, ehr and genomics kept
    assert by_id["p0"].tolist() == [True, True, True]


def test_site_level_problems(tmp_path):
    site = make_site(tmp_path, 4)
    (site / "text" / "p2.txt").write_text("   \n")
    _rewrite_cohort(site, lambda h, rows: (h.append("notes"), [r.append("x") for r in rows]))
    report = validate_site(site)  # no config: every declared task and modality
    codes = {(p.file, p.row, p.field, p.code) for p in report.problems}
    assert ("cohort.csv", 3, "text", "empty_text") in codes
    assert ("cohort.csv", None, "notes", "unknown_column") in codes
    (site / "site.yaml").write_text("site: [unclosed\n")
    bad = validate_site(site)
    assert [p.code for p in bad.problems] == ["malformed_yaml"] and "site.yaml" in bad.format()
    shutil.rmtree(site)
    assert validate_site(site).problems[0].code == "missing_file"


def test_symlink_out_of_site(tmp_path):
    site = make_site(tmp_path, 3)
    (site / "images" / "p0.png").unlink()
    (site / "images" / "p0.png").symlink_to(tmp_path / "elsewhere.png")
    problems = validate_site(site, CFG).problems
    assert [(p.row, p.code) for p in problems] == [(1, "path_escapes_site")]


def test_valid_site_summary(tmp_path):
    site = make_site(tmp_path, 8, missing={"image": [0, 1]})
    report = validate_site(site, CFG)
    assert report.ok, report.format()
    assert report.summary["patients"] == 8
    assert report.summary["availability"] == {"ehr": 8, "image": 6, "genomics": 8}
    assert report.summary["splits"] == {"train": 6, "val": 1, "test": 1}
    assert report.summary["labels"]["mortality"] == "4 positive / 4 negative"


def test_parquet_without_pyarrow_is_a_clear_problem(tmp_path):
    pytest.importorskip("pandas")
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed here")
    except ImportError:
        pass
    site = make_site(tmp_path, 2)
    (site / "cohort.parquet").write_bytes(b"PAR1")
    text = (site / "site.yaml").read_text().replace("cohort: cohort.csv", "cohort: cohort.parquet")
    (site / "site.yaml").write_text(text)
    problems = validate_site(site, CFG).problems
    assert len(problems) == 1 and "pip install pyarrow" in problems[0].reason
    assert problems[0].file == "cohort.parquet"


def test_label_messages_name_the_expected_value_and_never_a_python_repr(tmp_path):
    """An event coded yes/no is reported per row with what is expected (0/1: event/censored); values are quoted
    as written, never as numpy reprs like np.str_('yes')."""
    site = make_site(tmp_path, 8)

    def edit(header, rows):
        ev = header.index("event")
        rows[0][ev], rows[1][ev] = "yes", "no"
    _rewrite_cohort(site, edit)
    report = validate_site(site, CFG.replace(task="survival"))
    reasons = [p.reason for p in report.problems if p.field == "event"]
    assert len(reasons) == 2
    assert reasons[0] == "label is 'yes', not a number; expected 0 or 1 (the event indicator: 1 = event, 0 = censored)"
    assert "np." not in report.format() and "str_" not in report.format()
