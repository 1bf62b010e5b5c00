"""The synthetic generator writes real site folders (docs/data-format.md) deterministically."""
from __future__ import annotations

import dataclasses
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from omnifuse_core.data.mimic_schema import CATEGORICAL_VALUES, CSV_COLUMNS
from sim.generator import generate_federation
from sim.presets import PRESETS, list_presets

SITES = ["hospital_a", "hospital_b", "hospital_c"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    return generate_federation("smoke", None, tmp_path_factory.mktemp("fed") / "smoke", seed=3)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_federation_files(smoke: Path) -> None:
    fed = yaml.safe_load((smoke / "federation.yaml").read_text())
    assert fed["sites"] == SITES and fed["preset"] == "smoke" and fed["seed"] == 3
    assert fed["tasks"] == ["binary", "multiclass", "multilabel", "survival"]
    assert fed["labels"]["multilabel"] == [f"pheno_{j}" for j in range(5)]
    oracle = json.loads((smoke / "oracle.json").read_text())
    assert oracle["sites"] == SITES and set(oracle["per_site"]) == set(SITES)
    g = oracle["global"]["all"]
    assert g["n"] == 120
    assert 0.5 < g["true"]["binary"]["auroc"] <= 1.0
    assert 0.5 < g["true"]["survival"]["c_index"] <= 1.0


def test_site_layout_follows_doc(smoke: Path) -> None:
    gene_headers = set()
    for site in SITES:
        d = smoke / site
        desc = yaml.safe_load((d / "site.yaml").read_text())
        assert desc["site"] == site and desc["id-column"] == "patient_id" and desc["split-column"] == "split"
        assert desc["labels"]["survival"] == ["time", "event"] and desc["labels"]["num-classes"] == 3
        assert set(desc["modalities"]) == {"ehr", "image", "text", "genomics"}
        rows = _rows(d / "cohort.csv")
        assert len(rows) == 40 and len({r["patient_id"] for r in rows}) == 40
        splits = [r["split"] for r in rows]
        assert splits.count("train") == 28 and splits.count("val") == 6 and splits.count("test") == 6
        for r in rows:
            assert r["mortality"] in ("0", "1") and r["event"] in ("0", "1") and float(r["time"]) > 0
            assert r["subtype"] in ("0", "1", "2")
            assert any(r[m] for m in ("ehr", "image", "text", "genomics")), "every patient has a modality"
            for m in ("ehr", "image", "text"):
                if r[m]:
                    assert (d / r[m]).is_file() and not Path(r[m]).is_absolute()
        with open(d / "genomics.csv") as fh:
            header = fh.readline().strip().split(",")
        gene_headers.add(tuple(header))
        assert header[0] == "patient_id" and len(header) == 1 + PRESETS["smoke"].n_genes
        keys = {line.split(",", 1)[0] for line in (d / "genomics.csv").read_text().splitlines()[1:]}
        assert keys == {r["genomics"] for r in rows if r["genomics"]}
        # every image / text / ehr file on disk is referenced (nothing orphaned)
        for sub, m in (("images", "image"), ("text", "text"), ("ehr", "ehr")):
            on_disk = {f"{sub}/{p.name}" for p in (d / sub).glob("*")} if (d / sub).exists() else set()
            assert on_disk == {r[m] for r in rows if r[m]}
    assert len(gene_headers) == 1, "every site must list the same genes"


def test_structural_missing_site_has_no_genomics(smoke: Path) -> None:
    rows = _rows(smoke / "hospital_c" / "cohort.csv")
    assert all(r["genomics"] == "" for r in rows)
    assert len((smoke / "hospital_c" / "genomics.csv").read_text().splitlines()) == 1  # header only


def test_ehr_csv_is_mimic_benchmark_style(smoke: Path) -> None:
    files = sorted((smoke / "hospital_b" / "ehr").glob("*.csv"))[:10]
    assert files
    for f in files:
        rows = list(csv.reader(f.read_text().splitlines()))
        assert rows[0] == CSV_COLUMNS
        hours = [float(r[0]) for r in rows[1:]]
        assert hours == sorted(hours) and 0 <= hours[0] and hours[-1] < 48
        for r in rows[1:]:
            assert any(r[1:]), "no empty rows"
            for name, cell in zip(CSV_COLUMNS[1:], r[1:]):
                if cell and name in CATEGORICAL_VALUES:
                    assert cell in CATEGORICAL_VALUES[name], (name, cell)
                elif cell:
                    float(cell)
        total = [int(r[CSV_COLUMNS.index("Glascow coma scale total")]) for r in rows[1:]
                 if r[CSV_COLUMNS.index("Glascow coma scale total")]]
        assert all(3 <= t <= 15 for t in total)


def test_images_are_64px_grayscale(smoke: Path) -> None:
    paths = sorted((smoke / "hospital_a" / "images").glob("*.png"))[:5]
    assert paths
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "L"
            assert np.asarray(im).std() > 5


def test_reports_have_findings_and_negation(smoke: Path) -> None:
    texts = [p.read_text().lower() for p in (smoke / "hospital_a" / "text").glob("*.txt")]
    assert texts and all("consolidation" in t for t in texts)
    assert any("no consolidation" in t for t in texts) and any("consolidation is present" in t for t in texts)


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    a = generate_federation("smoke", 2, tmp_path / "a", seed=7)
    b = generate_federation("smoke", 2, tmp_path / "b", seed=7)
    c = generate_federation("smoke", 2, tmp_path / "c", seed=8)
    for site in SITES[:2]:
        assert (a / site / "cohort.csv").read_bytes() == (b / site / "cohort.csv").read_bytes()
        assert (a / site / "genomics.csv").read_bytes() == (b / site / "genomics.csv").read_bytes()
        for sub in ("ehr", "images", "text"):
            for f in sorted((a / site / sub).iterdir())[:3]:
                assert f.read_bytes() == (b / site / sub / f.name).read_bytes()
    assert (a / "oracle.json").read_bytes() == (b / "oracle.json").read_bytes()
    assert (a / "hospital_a" / "cohort.csv").read_bytes() != (c / "hospital_a" / "cohort.csv").read_bytes()


def test_sites_override_and_bad_inputs(tmp_path: Path) -> None:
    out = generate_federation("smoke", 5, tmp_path / "five", seed=0)
    fed = yaml.safe_load((out / "federation.yaml").read_text())
    assert len(fed["sites"]) == 5 and all((out / s / "site.yaml").is_file() for s in fed["sites"])
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        generate_federation("nope", None, tmp_path / "x")
    with pytest.raises(ValueError, match="sites must be >= 1"):
        generate_federation("smoke", 0, tmp_path / "y")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_federation("smoke", 1, out)
    again = generate_federation("smoke", 1, out, overwrite=True)
    assert yaml.safe_load((again / "federation.yaml").read_text())["sites"] == ["hospital_a"]
    assert not (out / "hospital_e").exists(), "sites of the earlier federation are removed"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="did not write"):
        generate_federation("smoke", 1, tmp_path / "foreign", overwrite=True)
    assert (tmp_path / "foreign" / "keep.txt").is_file()


def test_list_presets_names() -> None:
    names = [n for n, _ in list_presets()]
    assert names == ["smoke", "demo", "demo-x5", "laziness", "extreme-missing", "reliability"]


def test_smoke_sites_pass_the_validator(smoke: Path) -> None:
    validate = pytest.importorskip("omnifuse_core.data.validate").validate_site
    for site in SITES:
        report = validate(smoke / site)
        assert report.ok, report.format()
        assert report.summary["patients"] == 40


def test_demo_x5_is_the_demo_federation_with_five_times_the_patients() -> None:
    from sim.presets import get_preset

    demo, big = get_preset("demo"), get_preset("demo-x5")
    assert [s.patients * 5 for s in demo.sites] == [s.patients for s in big.sites]
    assert [dataclasses.replace(s, patients=0) for s in demo.sites] == [
        dataclasses.replace(s, patients=0) for s in big.sites]
