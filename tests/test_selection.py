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
    assert sel.state() == {"rule": "best-val", "round": 3, "value": 0.9, "best_round": 3, "best_value": 0.9}


def test_early_stopping_counts_rounds_since_the_best_value_whatever_the_rule():
    for rule in ("best-val", "last"):
        sel = RoundSelection(rule, patience=2)
        stops = []
        for r, v in [(1, math.nan), (2, 0.6), (3, 0.7), (4, 0.65), (5, 0.7)]:
            sel.offer(r, v, r)
            stops.append(sel.should_stop(r))
        assert stops == [False, False, False, False, True]  # best at 3; 4 and 5 not better
        assert sel.round == (3 if rule == "best-val" else 5)
    sel = RoundSelection("best-val", patience=1)
    for r in range(1, 5):
        sel.offer(r, math.nan, r)
        assert not sel.should_stop(r)  # never before a finite value
    assert not RoundSelection("last").should_stop(99)  # patience 0 = off
    again = RoundSelection("best-val", patience=2)
    again.restore({"rule": "best-val", "round": 3, "value": 0.7, "best_round": 3, "best_value": 0.7}, "w3")
    assert not again.should_stop(4) and again.should_stop(5)


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_early_stopping_in_process_modes(smoke_federation, tmp_path, mode):
    out = tmp_path / mode
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", mode, "--config", "smoke", "--data",
                                      str(smoke_federation), "--out", str(out), "--set", "rounds=6",
                                      "--set", "final-model=best-val", "--set", "early-stopping=1", "--set", "lr=0.05"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    final, rounds = metrics["final"], metrics["rounds"]
    if mode == "centralized":
        vals = [r["global"]["auroc"] for r in rounds]
        best = vals.index(max(vals)) + 1
        if final["stopped_early"]:  # stopped exactly one round after the best, and tested the best
            assert final["stopped_early"] == len(rounds) == best + 1 and final["model_round"] == best
        else:
            assert len(rounds) == 6 and best >= 5
    else:
        for site, rnd in (final["stopped_early"] or {}).items():
            assert rnd < 6 and final["model_round"][site] == rnd - 1


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
    result = CliRunner().invoke(cli, ["-q", "train", "--no-report", "--mode", mode, "--config", "smoke", "--data",
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
