"""`omnifuse train --mode centralized|local` on real site folders writes the run directory of DESIGN §8."""
import json
import math

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_train_mode_writes_run_directory(smoke_federation, tmp_path, mode):
    out = tmp_path / mode
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", mode, "--config", "smoke", "--data",
                                      str(smoke_federation), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "config.yaml").is_file() and (out / "logs").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == mode and metrics["task"] == "binary" and metrics["fusion"] == "omnifuse"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    sites = {"hospital_a", "hospital_b", "hospital_c"}
    assert set(metrics["rounds"][0]["sites"]) == sites
    final = metrics["final"]
    assert set(final["sites"]) == sites
    assert final["global"]["n"] == sum(s["n"] for s in final["sites"].values())
    auroc = final["global"]["auroc"]
    assert auroc is None or 0.0 <= auroc <= 1.0
    ckpts = list((out / "checkpoints").rglob("*.safetensors"))
    assert len(ckpts) == (1 if mode == "centralized" else 3)
    if mode == "centralized":
        assert final["prediction_mode"] in ("joint", "heads", "both")
        assert not math.isnan(final["pooled"]["n"])


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_dp_in_reference_modes_keeps_a_ledger_per_population(smoke_federation, tmp_path, mode):
    """centralized: one accountant for the pooled training set; local: one per site. Each spends at most its
    target, the run directory has the privacy reports, and the pre-flight ratio is recorded."""
    out = tmp_path / mode
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", mode, "--config", "smoke-dp", "--data",
                                      str(smoke_federation), "--out", str(out), "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    names = {"pooled"} if mode == "centralized" else {"hospital_a", "hospital_b", "hospital_c"}
    assert set(metrics["privacy"]) == names
    for values in metrics["privacy"].values():
        assert 0 < values["epsilon"] <= 8.0 * 1.0001 and values["noise_ratio"] > 0
    assert {json.loads(p.read_text())["site"] for p in (out / "privacy").glob("*.json")
            if p.name != "summary.json"} == names
    ledgers = list((out / "site-state").rglob("*.jsonl"))
    assert len(ledgers) == len(names)
    text = (out / "privacy" / "privacy.md").read_text()
    assert "pre-flight noise check" in text and "trainable parameters" in text  # P is stated in the report


def test_dp_preflight_refuses_a_hopeless_schedule(smoke_federation, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--no-report", "--mode", "centralized", "--config", "smoke-dp", "--data",
                                      str(smoke_federation), "--out", str(tmp_path / "r"),
                                      "--set", "dp-preflight=error", "--set", "rounds=1"])
    assert result.exit_code != 0
    text = str(result.exception)
    assert "noise-to-signal ratio" in text and "pooled" in text and "batch-size >=" in text
    assert not list((tmp_path / "r" / "site-state").rglob("*.jsonl")) or all(
        not p.read_text().strip() for p in (tmp_path / "r" / "site-state").rglob("*.jsonl"))
