"""The DP pre-flight check: the noise-to-signal ratio sigma*sqrt(P)/B, its verdicts, the message a site reads, and
the site privacy layer's refusals for a schedule that cannot work (nothing spent, nothing written to the ledger)."""
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from client import site_privacy as sp
from omnifuse_core.config import Config
from omnifuse_core.privacy import PrivacyLedger
from omnifuse_core.privacy.preflight import check_noise, noise_to_signal

CFG = Config(dp=True, batch_size=8, local_epochs=1, rounds=2, target_epsilon=8.0, delta=1e-5)


def test_ratio_is_noise_norm_over_the_largest_clipped_signal():
    assert noise_to_signal(2.0, 10_000, 100.0) == pytest.approx(2.0 * 100 / 100)
    assert noise_to_signal(1.0, 0, 10.0) == 0.0
    with pytest.raises(ValueError):
        noise_to_signal(1.0, 10, 0.0)


@pytest.mark.parametrize("n_params,verdict", [(100, "ok"), (10_000, "poor"), (1_000_000, "hopeless")])
def test_verdicts_and_the_message_names_the_numbers_and_the_fixes(n_params, verdict):
    check = check_noise("hospital_x", n_train=400, sample_rate=0.25, noise_multiplier=1.5, n_params=n_params,
                        steps=100, limit=2.0)
    assert check.expected_batch == 100 and check.verdict == verdict
    assert check.ratio_run == pytest.approx(check.ratio / 10)
    text = check.message(2.0)
    assert "hospital_x" in text and f"{n_params:,}" in text
    if verdict != "ok":
        need = check.ratio / 2.0
        assert f"P <= {int(n_params / need ** 2):,}" in text and f"batch-size >= {math.ceil(100 * need)}" in text


def test_under_the_auto_schedule_a_larger_batch_is_not_offered():
    check = check_noise("hospital_x", n_train=400, sample_rate=0.25, noise_multiplier=1.5, n_params=1_000_000,
                        steps=100, limit=2.0)
    text = check.message(2.0, batch_chosen=True)
    assert "batch-size >=" not in text and "dp-schedule: auto already picked B = 100" in text
    assert "P <= " in text and "target-epsilon" in text  # the other levers stay


def _site(n: int) -> SimpleNamespace:
    return SimpleNamespace(name="hospital_x", fingerprint="fp-x", train=list(range(n)))


def _never(*_):
    raise AssertionError("nothing may be trained")


@pytest.mark.parametrize("changes,n,match", [
    (dict(batch_size=64), 40, "batch-size 64 exceeds its 40 training patients"),
    (dict(delta=0.05), 40, "delta = 0.05 is not below 1/N"),
    (dict(dp_preflight="error", dp_max_noise_ratio=0.5), 40, "noise-to-signal ratio"),
])
def test_a_schedule_that_cannot_work_is_refused_before_any_spend(tmp_path: Path, changes, n, match):
    with pytest.raises(sp.PrivacyRefused, match=match) as err:
        sp.dp_round(_site(n), CFG.replace(**changes), state_dir=tmp_path, max_epsilon=None, server_round=1,
                    run_id="r", uses_tla=False, train=_never, n_params=50_000)
    assert "hospital_x" in str(err.value)
    assert PrivacyLedger(tmp_path, "fp-x").events() == []


def test_warn_mode_trains_and_records_the_ratio(tmp_path: Path, caplog):
    from omnifuse_core.trainer import TrainResult

    def train(cfg, dp):
        return TrainResult({}, {}, {}, 5, 8 / 40)

    _, metrics, report = sp.dp_round(_site(40), CFG.replace(dp_preflight="warn", dp_max_noise_ratio=0.5),
                                     state_dir=tmp_path, max_epsilon=None, server_round=1, run_id="r",
                                     uses_tla=False, train=train, n_params=50_000)
    assert metrics["noise_ratio"] > 0.5 and metrics["trainable_params"] == 50_000
    assert report["mechanism"]["preflight"]["verdict"] == "hopeless"
    assert "pre-flight (hopeless)" in caplog.text
