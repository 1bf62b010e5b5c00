"""`omnifuse_core.predict`: weights-only loading, one CSV row per patient, refusal of mismatched sites."""
import json
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli
from omnifuse_core.config import Config
from omnifuse_core.models import build_model
from omnifuse_core.predict import RunMismatchError, load_run_model, predict_site
from omnifuse_core.weights import get_trainable
from server.checkpoint import Checkpoint, save_checkpoint
from server.run_dir import RunRecorder
from sim.modes import load_sites

MODS = ["ehr", "image", "text", "genomics"]


def make_run(fed, out, cfg: Config):
    """A run directory holding an untrained model (predict needs weights, not a good model)."""
    sites = load_sites(fed, cfg)
    model = build_model(sites[0].specs, sites[0].task, cfg)
    rec = RunRecorder(cfg.replace(run_dir=str(out)))
    rec.data["mode"] = "centralized"
    rec.record_final({"global": {}, "sites": {}, "prediction_mode": "both"})
    save_checkpoint(rec.checkpoints, Checkpoint(1, get_trainable(model), state={
        "specs": [s.to_dict() for s in model.specs], "task": model.task_spec.to_dict(), "prediction_mode": "both",
        "fusion": cfg.fusion, "sites": [s.name for s in sites], "mode": "centralized"}))
    return out


@pytest.fixture(scope="module")
def run(smoke_federation, tmp_path_factory):
    return make_run(smoke_federation, tmp_path_factory.mktemp("predict") / "run", Config.load("smoke"))


@pytest.fixture(scope="module")
def holey_site(smoke_federation, tmp_path_factory):
    """hospital_a where patient k (k = 0..3) lacks modality k, the other three present."""
    site = tmp_path_factory.mktemp("holey") / "hospital_a"
    shutil.copytree(smoke_federation / "hospital_a", site, ignore=shutil.ignore_patterns(".omnifuse_cache"))
    cohort = pd.read_csv(site / "cohort.csv", dtype=str, keep_default_na=False)
    full = cohort[(cohort[MODS] != "").all(axis=1)].index[:4]
    assert len(full) == 4, "the smoke site should have 4 patients with every modality"
    for k, row in enumerate(full):
        cohort.loc[row, MODS[k]] = ""
    cohort.to_csv(site / "cohort.csv", index=False)
    return site, [cohort.loc[r, "patient_id"] for r in full], len(cohort)


def test_load_run_model_weights_only(run):
    model, cfg, meta = load_run_model(run)
    assert model.names == MODS and cfg.fusion == "omnifuse"
    assert meta["prediction_mode"] == "both" and model.prediction_mode == "both"
    assert meta["checkpoint"].endswith(".safetensors") and len(meta["config_digest"]) == 16


def test_predict_one_row_per_patient_with_flags(run, holey_site, tmp_path):
    site, lacking, n = holey_site
    out = predict_site(run, site, tmp_path / "preds.csv")
    df = pd.read_csv(out)
    assert len(df) == n and df["patient_id"].is_unique
    expected = {"patient_id", "split", "probability", "prediction_mode", "run_id", "config_digest",
                *[f"{p}_{m}" for m in MODS for p in ("present", "imputed", "head")]}
    assert expected <= set(df.columns)
    assert set(df["split"]) <= {"train", "val", "test"}
    assert df["probability"].between(0, 1).all() and (df["prediction_mode"] == "both").all()
    for k, pid in enumerate(lacking):
        row = df.set_index("patient_id").loc[pid]
        for j, m in enumerate(MODS):
            assert row[f"present_{m}"] == (0 if j == k else 1), (pid, m)
            assert row[f"imputed_{m}"] == (1 if j == k else 0), (pid, m)
    # imputed exactly where missing (OmniFuse imputes every missing slot)
    for m in MODS:
        assert ((df[f"present_{m}"] == 0) == (df[f"imputed_{m}"] == 1)).all()
    heads = df[[f"head_{m}" for m in MODS]].to_numpy()
    assert ((heads > 0) & (heads < 1)).all()


def test_site_sharing_no_modality_is_refused(run, smoke_federation, tmp_path):
    site = tmp_path / "other"
    shutil.copytree(smoke_federation / "hospital_b", site, ignore=shutil.ignore_patterns(".omnifuse_cache"))
    text = (site / "site.yaml").read_text()
    head, _ = text.split("modalities:")
    (site / "site.yaml").write_text(head + "modalities:\n  xray:\n    type: image\n    channels: 1\n")
    with pytest.raises(RunMismatchError, match=r"declares modalities \['xray'\].*shares none"):
        predict_site(run, site, tmp_path / "p.csv")


def test_image_size_mismatch_is_refused(run, smoke_federation, tmp_path):
    other = tmp_path / "run16"
    shutil.copytree(run, other)
    state = other / "checkpoints" / "round-0001.json"
    data = json.loads(state.read_text())
    data["specs"][1]["shape"] = [1, 16, 16]
    state.write_text(json.dumps(data))
    with pytest.raises(RunMismatchError, match=r"'image' is image \[1, 32, 32\] here but image \[1, 16, 16\]"):
        predict_site(other, smoke_federation / "hospital_a", tmp_path / "p.csv")


def test_genomics_schema_mismatch_is_refused(run, smoke_federation, tmp_path):
    site = tmp_path / "fewgenes"
    shutil.copytree(smoke_federation / "hospital_c", site, ignore=shutil.ignore_patterns(".omnifuse_cache"))
    table = pd.read_csv(site / "genomics.csv")
    table.iloc[:, :21].to_csv(site / "genomics.csv", index=False)  # key column + 20 of 32 genes
    with pytest.raises(RunMismatchError, match=r"'genomics' is genomics \[20\] here but genomics \[32\]"):
        predict_site(run, site, tmp_path / "p.csv")


def test_cli_predict(run, smoke_federation, tmp_path):
    out = tmp_path / "cli.csv"
    result = CliRunner().invoke(cli, ["-q", "predict", "--model", str(run), "--site",
                                      str(smoke_federation / "hospital_b"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "predictions written to" in result.output and len(pd.read_csv(out)) > 0
