"""`omnifuse train --mode centralized|local` on real site folders writes the run directory of DESIGN §8."""
import json
import math

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_train_mode_writes_run_directory(smoke_federation, tmp_path, mode):
    out = tmp_path / mode
    result = CliRunner().invoke(cli, ["-q", "train", "--mode", mode, "--config", "smoke", "--data",
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


def test_dp_outside_federated_mode_is_a_clear_error(smoke_federation, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--mode", "centralized", "--config", "smoke-dp", "--data",
                                      str(smoke_federation), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "federated mode only" in str(result.exception)
