"""Fuzzed site data (hypothesis): generated corruptions of a tiny site's cohort table, EHR CSVs, images, text
reports, genomics matrix and descriptor. Every one ends in a validation problem naming the file (and the row for
row/entry problems), never in an exception or in the validator's own "unexpected" last-resort problem; with
``on-invalid: skip`` nothing is dropped silently: rows read == rows loaded + rows counted as skipped, and every
referenced entry that is not loaded has a problem for that patient and modality."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.data.site_factory import GENES, make_site
from omnifuse_core.config import Config
from omnifuse_core.data.problems import SiteDataError
from omnifuse_core.data.scan import scan_site
from omnifuse_core.data.site import load_site
from omnifuse_core.data.validate import validate_site

N = 4
CFG = Config().replace(modalities="ehr,image,text,genomics")
LOAD_CFG = Config().replace(modalities="ehr,image,genomics", on_invalid="skip", genomics_genes=",".join(GENES),
                            image_size=16)
COHORT_COLS = ["patient_id", "split", "mortality", "subtype", "pheno_0", "pheno_1", "time", "event", "ehr", "image",
               "text", "genomics"]
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)

junk_text = st.one_of(st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e309", "-1", "abc", "  ", "\"", "'", ",,",
                                       "../x", "/etc/passwd", "p0", "0x1F", "1,2", "\u00e9\u00e8", "NULL"]),
                      st.text(max_size=12))
junk_bytes = st.binary(max_size=64)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("fuzz"), N, seed=3)


class Workspace:
    """A copy of the pristine site; each example corrupts one file, and the file is restored afterwards."""

    def __init__(self, pristine: Path, root: Path) -> None:
        self.site = root / "site_a"
        if not self.site.exists():
            shutil.copytree(pristine, self.site, symlinks=True)
        self.saved: dict[Path, bytes | None] = {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.site / rel
        self.saved.setdefault(path, path.read_bytes() if path.exists() else None)
        path.write_bytes(data)

    def read(self, rel: str) -> str:
        return (self.site / rel).read_text(encoding="utf-8", errors="replace")

    def restore(self) -> None:
        for path, data in self.saved.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)
        self.saved.clear()


@pytest.fixture(scope="module")
def ws(pristine, tmp_path_factory):
    return Workspace(pristine, tmp_path_factory.mktemp("fuzzws"))


def _edit_csv(text: str, op: str, row: int, col: int, value: str) -> str:
    lines = text.splitlines()
    header, rows = lines[0], lines[1:]
    row = row % max(1, len(rows))
    cells = rows[row].split(",") if rows else []
    if op == "cell" and cells:
        cells[col % len(cells)] = value
        rows[row] = ",".join(cells)
    elif op == "short_row" and cells:
        rows[row] = ",".join(cells[: col % len(cells)])
    elif op == "long_row":
        rows[row] = rows[row] + "," + value
    elif op == "dup_row" and rows:
        rows.append(rows[row])
    elif op == "drop_column":
        names = header.split(",")
        k = col % len(names)
        header = ",".join(names[:k] + names[k + 1:])
        rows = [",".join(r.split(",")[:k] + r.split(",")[k + 1:]) for r in rows]
    elif op == "header_only":
        rows = []
    elif op == "truncate":
        return "\n".join([header, *rows])[: (col * 7) % (len(text) + 1)]
    return "\n".join([header, *rows]) + "\n"


csv_ops = st.sampled_from(["cell", "cell", "cell", "short_row", "long_row", "dup_row", "drop_column", "header_only",
                           "truncate"])


@st.composite
def corruption(draw):
    """(file relative to the site, new bytes) for one corruption of one file of the site."""
    kind = draw(st.sampled_from(["cohort", "cohort", "ehr", "ehr", "image", "text", "genomics", "genomics",
                                 "descriptor", "bytes"]))
    pid = draw(st.integers(0, N - 1))
    row, col, value = draw(st.integers(0, 50)), draw(st.integers(0, 50)), draw(junk_text)
    if kind == "cohort":
        return "cohort.csv", ("csv", draw(csv_ops), row, col, value)
    if kind == "ehr":
        return f"ehr/p{pid}_episode1_timeseries.csv", ("csv", draw(csv_ops), row, col, value)
    if kind == "genomics":
        return "genomics.csv", ("csv", draw(csv_ops), row, col, value)
    if kind == "image":
        how = draw(st.sampled_from(["bytes", "truncate", "empty", "npy_nan", "npy_shape"]))
        return f"images/p{pid}.png", ("image", how, draw(junk_bytes), col)
    if kind == "text":
        return f"text/p{pid}.txt", ("raw", draw(st.one_of(junk_bytes, st.sampled_from([b"", b"  \n", b"\xff\xfe\xfa"]))))
    if kind == "descriptor":
        return "site.yaml", ("yaml", draw(st.sampled_from(["cohort", "id-column", "labels", "modalities", "site",
                                                          "split-column"])), value)
    target = draw(st.sampled_from(["cohort.csv", "genomics.csv", "site.yaml", f"ehr/p{pid}_episode1_timeseries.csv"]))
    return target, ("raw", draw(junk_bytes))


def _apply(ws: Workspace, rel: str, spec: tuple) -> None:
    import io

    import yaml

    if spec[0] == "csv":
        ws.write(rel, _edit_csv(ws.read(rel), *spec[1:]).encode("utf-8", errors="surrogatepass"))
    elif spec[0] == "raw":
        ws.write(rel, spec[1])
    elif spec[0] == "yaml":
        desc = yaml.safe_load(ws.read(rel))
        desc[spec[1]] = spec[2] if spec[2] else None
        ws.write(rel, yaml.safe_dump(desc).encode())
    else:
        _, how, junk, cut = spec
        good = (ws.site / rel).read_bytes()
        if how == "bytes":
            data = junk
        elif how == "truncate":
            data = good[: cut % max(1, len(good) - 1)]
        elif how == "empty":
            data = b""
        else:
            buf = io.BytesIO()
            np.save(buf, np.full((4, 4), np.nan) if how == "npy_nan" else np.zeros((2, 3, 4, 5)))
            data = buf.getvalue()
        ws.write(rel, data)


def _check_report(report, corrupted: str) -> None:
    assert not [p for p in report.problems if p.code == "unexpected"], report.format()
    for p in report.problems:
        assert p.file and p.reason  # names a file and says why
        if p.patient is not None and (p.scope == "row" or p.file == "cohort.csv"):
            assert p.row is not None, p  # a patient's row or cell of the cohort table: the row is named


def _check_no_silent_drop(site: Path) -> None:
    """on-invalid: skip -- rows read == loaded + counted skipped; each unloaded referenced entry has a problem."""
    scan = scan_site(site, LOAD_CFG)
    if scan.fatal or scan.cohort is None:
        with pytest.raises(SiteDataError):
            load_site(site, LOAD_CFG)
        return
    data = load_site(site, LOAD_CFG)
    loaded = len(data.train) + len(data.val) + len(data.test)
    row_problems = {p.patient for p in scan.report.problems if p.scope == "row" and p.patient is not None}
    assert loaded + len(row_problems) == len(scan.cohort), (loaded, row_problems, len(scan.cohort))
    assert sum(data.skipped.get("rows", {}).values()) >= len(row_problems)
    for m, d in scan.data.items():
        col = scan.desc.modalities[m].ref_column if m in scan.desc.modalities else None
        if col is None or col not in scan.cohort.table.columns:
            continue
        refs = scan.cohort.table[col].astype(str).str.strip()
        for i in np.flatnonzero(scan.cohort.row_ok):
            if refs.iloc[i] not in ("", "nan", "None") and not d.present[i]:
                assert any(p.modality == m and p.patient in (i, None) for p in scan.report.problems), (m, i)


@settings(max_examples=220, **SETTINGS)
@given(case=corruption())
def test_every_corruption_is_reported_with_file_and_row(ws, case):
    rel, spec = case
    _apply(ws, rel, spec)
    try:
        report = validate_site(ws.site, CFG)
        _check_report(report, rel)
    finally:
        ws.restore()


@settings(max_examples=40, **SETTINGS)
@given(case=corruption())
def test_skip_mode_never_drops_silently(ws, case):
    rel, spec = case
    _apply(ws, rel, spec)
    try:
        _check_no_silent_drop(ws.site)
    finally:
        ws.restore()


def test_pristine_site_is_clean_and_fully_loaded(ws):
    assert validate_site(ws.site, CFG).ok
    data = load_site(ws.site, LOAD_CFG)
    assert len(data.train) + len(data.val) + len(data.test) == N and not data.skipped


def test_nul_byte_in_a_path_cell_names_the_row(ws):
    _apply(ws, "cohort.csv", ("csv", "cell", 0, 8, "ehr/p0\x00.csv"))
    try:
        _check_report(validate_site(ws.site, CFG), "cohort.csv")
    finally:
        ws.restore()


def test_extra_field_in_first_cohort_row_is_reported_on_that_row(ws):
    _apply(ws, "cohort.csv", ("csv", "long_row", 0, 0, "x"))
    try:
        report = validate_site(ws.site, CFG)
        assert any(p.file == "cohort.csv" and p.row == 1 for p in report.problems), report.format()
        assert not [p for p in report.problems if p.file.startswith("images/") and p.modality == "ehr"]
    finally:
        ws.restore()
