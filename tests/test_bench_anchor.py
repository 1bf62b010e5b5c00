"""bench/anchor.py: the classical anchor's features are label-free, NaN where a modality is missing, and its fit
never sees the test labels."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bench.anchor import anchor_result, modality_features
from omnifuse_core.batch import MultimodalDataset
from omnifuse_core.config import Config


@pytest.fixture(scope="module")
def sites(smoke_federation):
    from bench.common import load_all

    return load_all(smoke_federation, Config.load("smoke"))


def _with_labels(ds: MultimodalDataset, labels: torch.Tensor) -> MultimodalDataset:
    return MultimodalDataset(ds.specs, ds.inputs, ds.present, labels, list(ds.patient_ids))


def test_features_have_names_and_nan_exactly_where_a_modality_is_missing(sites):
    ds = sites[0].train
    x, names = modality_features(ds)
    assert x.shape == (len(ds), len(names)) and len(set(names)) == len(names)
    for m, spec in enumerate(ds.specs):
        cols = [i for i, n in enumerate(names) if n.startswith(f"{spec.name}:")]
        assert cols, spec.name
        missing = ~ds.present[:, m].numpy()
        assert np.isnan(x[np.ix_(missing, cols)]).all()
        if spec.kind != "sequence":  # an observed EHR variable may still lack a value at every step
            assert not np.isnan(x[np.ix_(~missing, cols)]).any()


def test_a_missing_modalitys_raw_input_never_matters(sites):
    ds = sites[0].train
    m = next(i for i in range(len(ds.specs)) if (~ds.present[:, i]).any())
    name = ds.specs[m].name
    noisy = dict(ds.inputs)
    noisy[name] = ds.inputs[name] + 100.0 * (~ds.present[:, m]).float().view(-1, *[1] * (ds.inputs[name].dim() - 1))
    a, _ = modality_features(ds)
    b, _ = modality_features(MultimodalDataset(ds.specs, noisy, ds.present, ds.labels, list(ds.patient_ids)))
    np.testing.assert_array_equal(a, b)


def test_features_are_label_free(sites):
    ds = sites[0].train
    shuffled = _with_labels(ds, ds.labels[torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))])
    np.testing.assert_array_equal(modality_features(ds)[0], modality_features(shuffled)[0])


@pytest.mark.parametrize("model", ["hgb", "logistic", "mlp"])
def test_test_labels_never_reach_the_fit(sites, model):
    cfg = Config.load("smoke")
    base = anchor_result(sites, cfg, model=model, setting="pooled")
    flipped = [dataclasses.replace(s, test=_with_labels(s.test, 1 - s.test.labels)) for s in sites]
    again = anchor_result(flipped, cfg, model=model, setting="pooled")
    for name in base["scores"]:
        np.testing.assert_allclose(base["scores"][name], again["scores"][name])
    assert 0.0 <= base["pooled_auroc"] <= 1.0 and base["n_skipped"] == 0


def test_a_one_class_site_is_counted_not_scored(sites):
    cfg = Config.load("smoke")
    one = dataclasses.replace(sites[0], train=_with_labels(sites[0].train, torch.zeros_like(sites[0].train.labels)))
    out = anchor_result([one, *sites[1:]], cfg, model="logistic", setting="local")
    assert out["n_skipped"] == 1 and sites[0].name in out["skipped"] and sites[0].name not in out["scores"]
    assert all(s.name in out["scores"] for s in sites[1:])


def test_unsupported_task_is_refused(sites):
    with pytest.raises(ValueError, match="survival"):
        anchor_result(sites, Config.load("smoke").replace(task="survival"))


def test_cli_quick_writes_the_table_and_json(tmp_path, smoke_federation):
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shutil.copytree(smoke_federation, tmp_path / "smoke-3-0")
    out = tmp_path / "anchor.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(root / "bench" / "anchor.py"), "--quick", "--work", str(tmp_path),
                           "--out", str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| pooled HGB |" in proc.stdout and "oracle (observed modalities)" in proc.stdout
    assert json.loads(out.read_text())
