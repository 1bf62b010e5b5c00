"""`omnifuse cv`: repeated random splits (split-seed) of the same config, a run per split and a summary with the
mean and a t-interval; refused where repeats would be identical (fixed split column) or would spend ε again (dp)."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from omnifuse_cli.main import cli
from sim.cv import t_interval


@pytest.fixture()
def random_split_federation(smoke_federation, tmp_path):
    """The smoke federation with its split columns removed (patients split by split-seed)."""
    fed = tmp_path / "fed"
    shutil.copytree(smoke_federation, fed)
    for site in yaml.safe_load((fed / "federation.yaml").read_text())["sites"]:
        rows = list(csv.DictReader((fed / site / "cohort.csv").open()))
        with (fed / site / "cohort.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, [k for k in rows[0] if k != "split"])
            w.writeheader()
            w.writerows([{k: v for k, v in r.items() if k != "split"} for r in rows])
        desc = yaml.safe_load((fed / site / "site.yaml").read_text())
        desc["split-column"] = None
        (fed / site / "site.yaml").write_text(yaml.safe_dump(desc))
    return fed


def test_cv_runs_each_split_and_summarises(random_split_federation, tmp_path):
    out = tmp_path / "cv"
    result = CliRunner().invoke(cli, ["-q", "cv", "--mode", "centralized", "--config", "smoke", "--data",
                                      str(random_split_federation), "--out", str(out), "--repeats", "2",
                                      "--set", "rounds=1"])
    assert result.exit_code == 0, result.output
    cv = json.loads((out / "cv.json").read_text())
    assert [r["split_seed"] for r in cv["runs"]] == [0, 1] and cv["metric"] == "auroc"
    tests = [json.loads((out / f"split-{k}" / "metrics.json").read_text())["final"] for k in (0, 1)]
    configs = [yaml.safe_load((out / f"split-{k}" / "config.yaml").read_text()) for k in (0, 1)]
    assert [c.get("split-seed", c.get("split_seed")) for c in configs] == [0, 1]
    assert tests[0]["global"]["auroc"] != tests[1]["global"]["auroc"]  # other patients in the test split
    s = cv["summary"]["global"]
    assert s["mean"] == pytest.approx((tests[0]["global"]["auroc"] + tests[1]["global"]["auroc"]) / 2)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and "pooled_binned" in cv["summary"]
    assert "auroc (global):" in result.output


def test_cv_refuses_fixed_splits_dp_and_a_single_repeat(smoke_federation, random_split_federation, tmp_path):
    runner = CliRunner()
    args = ["cv", "--mode", "centralized", "--config", "smoke", "--out", str(tmp_path / "x")]
    fixed = runner.invoke(cli, [*args, "--data", str(smoke_federation)])
    assert fixed.exit_code != 0 and "have a split column" in str(fixed.exception) and "hospital_a" in str(fixed.exception)
    dp = runner.invoke(cli, [*args, "--data", str(random_split_federation), "--set", "dp=true"])
    assert dp.exit_code != 0 and "spend the privacy budget again" in str(dp.exception)
    one = runner.invoke(cli, [*args, "--data", str(random_split_federation), "--repeats", "1"])
    assert one.exit_code != 0 and "--repeats >= 2" in str(one.exception)


def test_t_interval():
    mean, lo, hi = t_interval([0.6, 0.7, 0.8])
    assert mean == pytest.approx(0.7) and lo == pytest.approx(0.7 - 4.303 * 0.1 / 3 ** 0.5, abs=1e-3)
    assert hi == pytest.approx(2 * 0.7 - lo)
    assert t_interval([float("nan"), 0.5])[0] == 0.5
