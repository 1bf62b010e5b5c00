"""``final-model``: which round's model gets the final test and is saved for predict (last | best-val)."""
import json
import math

import pytest
from click.testing import CliRunner

from omnifuse_cli.main import cli
from omnifuse_core.config import Config, ConfigError
from omnifuse_core.selection import RoundSelection


def test_best_val_keeps_the_first_highest_finite_value():
    sel = RoundSelection("best-val")
    for rnd, value in [(1, float("nan")), (2, 0.7), (3, 0.9), (4, 0.9), (5, None), (6, 0.8)]:
        sel.offer(rnd, value, f"w{rnd}")
    assert (sel.round, sel.value, sel.payload) == (3, 0.9, "w3")  # the tie at round 4 keeps round 3
    assert sel.state() == {"rule": "best-val", "round": 3, "value": 0.9}


def test_last_keeps_the_newest_round_whatever_its_value():
    sel = RoundSelection("last")
    for rnd, value in [(1, 0.9), (2, float("nan"))]:
        sel.offer(rnd, value, f"w{rnd}")
    assert (sel.round, sel.value, sel.payload) == (2, None, "w2")


def test_best_val_with_no_finite_value_selects_nothing_and_restore_continues():
    sel = RoundSelection("best-val")
    assert not sel.offer(1, math.nan, "w1") and sel.payload is None
    sel.restore({"rule": "best-val", "round": 4, "value": 0.8}, "w4")
    assert not sel.offer(5, 0.75, "w5") and sel.offer(6, 0.81, "w6") and sel.round == 6


def test_unknown_rule_is_a_named_config_error():
    with pytest.raises(ConfigError, match="final-model"):
        Config().replace(final_model="best")
    with pytest.raises(ValueError, match="final-model"):
        RoundSelection("best")


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_best_val_in_process_modes_test_the_best_validation_round(smoke_federation, tmp_path, mode):
    out = tmp_path / mode
    result = CliRunner().invoke(cli, ["-q", "train", "--mode", mode, "--config", "smoke", "--data",
                                      str(smoke_federation), "--out", str(out), "--set", "rounds=3",
                                      "--set", "final-model=best-val"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert final["final_model"] == "best-val"
    if mode == "centralized":
        vals = [r["global"].get("auroc") for r in metrics["rounds"]]
        finite = [v if v is not None and math.isfinite(v) else -1.0 for v in vals]
        expected = finite.index(max(finite)) + 1 if max(finite) >= 0 else 3
        assert final["model_round"] == expected
        pointer = json.loads((out / "checkpoints" / "latest.json").read_text())
        assert pointer["round"] == expected  # the saved model is the tested one
    else:
        for site, rnd in final["model_round"].items():
            vals = [r["sites"][site].get("auroc") for r in metrics["rounds"]]
            finite = [v if v is not None and math.isfinite(v) else -1.0 for v in vals]
            assert rnd == (finite.index(max(finite)) + 1 if max(finite) >= 0 else 3), site
            assert json.loads((out / "checkpoints" / site / "latest.json").read_text())["round"] == rnd
