"""MIMIC-III benchmark importer on fixture files with the benchmark's real column layout."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from omnifuse_core.config import Config
from omnifuse_core.data import import_mimic_benchmark
from omnifuse_core.data.site import load_site
from omnifuse_core.data.validate import validate_site

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "mimic" / "train"
CFG = Config().replace(modalities="ehr", val_fraction=0.0, test_fraction=0.0)


def test_import_ihm_listfile(tmp_path):
    out = import_mimic_benchmark(FIXTURE / "listfile.csv", FIXTURE, tmp_path / "site", site_name="mimic_a",
                                 task="in-hospital-mortality")
    desc = yaml.safe_load((out / "site.yaml").read_text())
    assert desc["site"] == "mimic_a" and desc["labels"] == {"binary": ["y_true"]}
    report = validate_site(out, CFG)
    assert report.ok, report.format()
    data = load_site(out, CFG)
    assert data.train.patient_ids == ["10011_episode1", "10026_episode1", "10045_episode2"]
    assert data.train.labels.tolist() == [1.0, 0.0, 0.0]
    assert data.train.inputs["ehr"].shape == (3, 24, 76) and data.train.present.all()
    assert (out / "ehr" / "10011_episode1_timeseries.csv").read_bytes() == \
        (FIXTURE / "10011_episode1_timeseries.csv").read_bytes()  # copied, not linked


def test_import_split_from_folder_and_duplicates(tmp_path, caplog):
    bench = tmp_path / "bench" / "train"
    shutil.copytree(FIXTURE, bench)
    out = import_mimic_benchmark(bench / "decomp_listfile.csv", bench, tmp_path / "site", site_name="m",
                                 task="decompensation")
    lines = (out / "cohort.csv").read_text().splitlines()
    assert lines[0] == "patient_id,split,y_true,ehr" and len(lines) == 3  # repeated stay kept once
    assert "repeat a stay" in caplog.text


def test_import_errors(tmp_path):
    bad = tmp_path / "listfile.csv"
    bad.write_text("stay,y_true\nmissing_episode1_timeseries.csv,1\n10011_episode1_timeseries.csv,0\n")
    with pytest.raises(ValueError, match="1 per-stay CSV"):
        import_mimic_benchmark(bad, FIXTURE, tmp_path / "o", site_name="m", task="binary")
    with pytest.raises(ValueError, match="task"):
        import_mimic_benchmark(bad, FIXTURE, tmp_path / "o", site_name="m", task="regression")
    pheno = tmp_path / "pheno.csv"
    pheno.write_text("stay,period_length,Sepsis,Shock\n10011_episode1_timeseries.csv,40.0,1,0\n")
    with pytest.raises(ValueError, match="binary task needs"):
        import_mimic_benchmark(pheno, FIXTURE, tmp_path / "o", site_name="m", task="binary")
    out = import_mimic_benchmark(pheno, FIXTURE, tmp_path / "p", site_name="m", task="phenotyping")
    assert yaml.safe_load((out / "site.yaml").read_text())["labels"] == {"multilabel": ["Sepsis", "Shock"]}
