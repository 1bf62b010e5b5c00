"""load_site: specs identical across sites, splits, tasks, fingerprint."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from fixtures.data.site_factory import GENES, make_site
from omnifuse_core.config import Config
from omnifuse_core.data.site import load_site
from omnifuse_core.data.stats import combine_stats, site_stats

CFG = Config().replace(modalities="ehr,image,genomics")


def _drop_modality(site, name):
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc["modalities"].pop(name)
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    lines = (site / "cohort.csv").read_text().splitlines()
    j = lines[0].split(",").index(name)
    (site / "cohort.csv").write_text("\n".join(",".join(c for k, c in enumerate(line.split(",")) if k != j)
                                               for line in lines) + "\n")


def test_identical_specs_across_sites(tmp_path):
    a = make_site(tmp_path, 8, name="a")
    b = make_site(tmp_path, 6, name="b", seed=1, genes=GENES[3:] + ["EXTRA"], missing={"genomics": [0]})
    _drop_modality(b, "image")  # site b has no imaging at all
    stats = combine_stats([site_stats(a, CFG), site_stats(b, CFG)])
    da, db = load_site(a, CFG, stats=stats), load_site(b, CFG, stats=stats)
    assert da.specs == db.specs
    assert [s.shape for s in da.specs] == [(24, 76), (1, 64, 64), (len(GENES) + 1,)]
    assert not db.train.present[:, 1].any() and db.train.inputs["image"].abs().sum() == 0
    assert db.train.present[:, 2].sum() == len(db.train) - 1  # p0 lacks genomics
    # gene order is the sorted union; genes site b lacks are zero (= the federated mean)
    g = stats["features"]["genomics"]["names"]
    assert g == sorted(GENES + ["EXTRA"])
    assert torch.all(db.train.inputs["genomics"][:, g.index("G000")] == 0)


def test_absent_genomics_needs_a_gene_list(tmp_path):
    site = make_site(tmp_path, 4)
    _drop_modality(site, "genomics")
    with pytest.raises(ValueError, match="genomics-genes"):
        load_site(site, CFG)
    data = load_site(site, CFG.replace(genomics_genes="G1,G2,G3"))
    assert data.specs[2].shape == (3,) and not data.train.present[:, 2].any()


def test_splits_tasks_and_labels(tmp_path):
    site = make_site(tmp_path, 8, splits=False)
    desc = yaml.safe_load((site / "site.yaml").read_text())
    desc.pop("split-column")
    (site / "site.yaml").write_text(yaml.safe_dump(desc))
    cfg = CFG.replace(modalities="ehr", val_fraction=0.25, test_fraction=0.25, seed=3)
    d1, d2 = load_site(site, cfg), load_site(site, cfg)
    assert (len(d1.train), len(d1.val), len(d1.test)) == (4, 2, 2)
    assert d1.val.patient_ids == d2.val.patient_ids  # seeded, deterministic
    assert d1.train.labels.dtype == torch.float32 and d1.task.num_outputs == 1
    mc = load_site(site, cfg.replace(task="multiclass"))
    assert mc.train.labels.dtype == torch.long and mc.task.num_outputs == 3
    ml = load_site(site, cfg.replace(task="multilabel"))
    assert ml.train.labels.shape == (4, 2) and ml.task.label_names == ("pheno_0", "pheno_1")
    sv = load_site(site, cfg.replace(task="survival", survival_bins=3))
    assert sv.train.labels.shape == (4, 2) and len(sv.task.bin_edges) == 2
    assert sv.task.bin_edges[0] < sv.task.bin_edges[1]


def test_fingerprint_tracks_data(tmp_path):
    site = make_site(tmp_path, 4)
    f1 = load_site(site, CFG).fingerprint
    assert f1 == load_site(site, CFG).fingerprint and len(f1) == 64
    copy = shutil.copytree(site, tmp_path / "copy")
    assert load_site(copy, CFG).fingerprint == f1  # content, not location
    arr = (np.arange(400) % 255).astype(np.uint8).reshape(20, 20)
    from PIL import Image
    Image.fromarray(arr).save(copy / "images" / "p2.png")
    assert load_site(copy, CFG).fingerprint != f1


def test_batch_contract(tmp_path):
    site = make_site(tmp_path, 8, missing={"image": [0]})
    data = load_site(site, CFG)
    x = data.train[0]
    assert len(x) == 3 + 3  # inputs, present, label, index
    assert x[1].shape == (1, 64, 64) and x[1].abs().sum() == 0 and not x[3][1]
    assert data.train.inputs["ehr"].dtype == torch.float32
    assert torch.isfinite(data.train.inputs["genomics"]).all()
    # standardized with the site's own statistics: continuous EHR columns have mean ~0 over training rows
    cont = data.train.inputs["ehr"][..., [2, 3, 49, 50]]
    assert cont.mean().abs() < 0.2


def _genomics_present(data):
    gi = [s.name for s in data.specs].index("genomics")
    return data.train.present[:, gi].tolist()


def test_duplicated_cohort_row_does_not_take_the_first_rows_genomics(tmp_path):
    """A repeated patient row is skipped as a row; the first row keeps its own genomics entry (it used to lose it
    silently because the key pointed at the dropped duplicate)."""
    site = make_site(tmp_path, 8)
    lines = (site / "cohort.csv").read_text().splitlines()
    (site / "cohort.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    data = load_site(site, CFG.replace(on_invalid="skip"))
    assert data.skipped == {"rows": {"duplicate_id": 1}}
    assert all(_genomics_present(data))


def test_genomics_key_shared_by_two_patients_is_a_counted_problem(tmp_path):
    """Two patients naming the same matrix row: the first keeps it, the second's entry is a named, counted skip."""
    site = make_site(tmp_path, 8)
    lines = (site / "cohort.csv").read_text().splitlines()
    cells = lines[2].split(",")
    cells[-1] = "p0"  # p1 now points at p0's genomics row
    lines[2] = ",".join(cells)
    (site / "cohort.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"cohort.csv.*row 2.*'p0' is also used by row 1"):
        load_site(site, CFG)
    data = load_site(site, CFG.replace(on_invalid="skip"))
    assert data.skipped == {"genomics": {"duplicate_id": 1}}
    assert _genomics_present(data) == [True, False, True, True, True, True]
