"""The site's privacy round (client/site_privacy.py) with a stand-in trainer: calibration once, the spend in the
ledger before the reply, restarts, corrupt ledgers and the cap refuse, and reports agree with dp-accounting."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from client import site_privacy as sp
from omnifuse_core.config import Config
from omnifuse_core.privacy import PrivacyLedger, noisy_max_event
from omnifuse_core.tla import selections_in_call
from omnifuse_core.trainer import TrainResult

N_TRAIN = 40
CFG = Config(dp=True, batch_size=8, local_epochs=2, rounds=3, target_epsilon=4.0, delta=1e-5, tla_noise_scale=20.0)


@pytest.fixture(autouse=True)
def quiet_opacus():
    logging.disable(logging.WARNING)  # Opacus' RDP series warnings at large q
    yield
    logging.disable(logging.NOTSET)


def _site(name: str = "hospital_x", fp: str = "fp-x") -> SimpleNamespace:
    return SimpleNamespace(name=name, fingerprint=fp, train=list(range(N_TRAIN)))


class FakeTrainer:
    """Takes exactly the planned Poisson steps and one noisy-max selection per epoch whose incoming model is
    trained (all but round 1's first), like train_local under DP."""

    def __init__(self) -> None:
        self.calls: list = []
        self.rnd = 1

    def __call__(self, cfg: Config, dp) -> TrainResult:
        self.calls.append((cfg, dp))
        q, per_epoch = cfg.batch_size / N_TRAIN, int(N_TRAIN / cfg.batch_size)
        n = selections_in_call(cfg.local_epochs, self.rnd > 1)
        events = [dp.noisy_select([3.0, 1.0, 2.0])[1] for _ in range(n)] if dp.noisy_select else []
        return TrainResult({}, {}, {"dp_event": events}, cfg.local_epochs * per_epoch, q)


def _round(tmp: Path, rnd: int, trainer=None, *, cap=None, run_id="run-1", cfg=CFG, site=None):
    trainer = trainer or FakeTrainer()
    trainer.rnd = rnd
    return sp.dp_round(site or _site(), cfg, state_dir=tmp, max_epsilon=cap, server_round=rnd, run_id=run_id,
                       uses_tla=True, train=trainer)


def test_schedule_matches_what_the_trainer_takes():
    s = sp.plan_schedule(N_TRAIN, CFG, uses_tla=True)
    assert (s.sample_rate, s.steps_per_round, s.total_steps, s.noisy_max_per_round) == (0.2, 10, 30, 2)
    assert (s.noisy_max_in_round(1), s.noisy_max_in_round(2), s.noisy_max_total) == (1, 2, 5)
    odd = sp.plan_schedule(28, CFG.replace(batch_size=16, planned_rounds=5), uses_tla=False)
    assert odd.steps_per_round == 2 * 1 and odd.total_steps == 10 and odd.noisy_max_per_round == 0  # int(1/q)


def test_sigma_is_calibrated_once_and_reused_across_rounds_and_restarts(tmp_path, monkeypatch):
    calls = []
    real = sp.calibrate_noise_multiplier
    monkeypatch.setattr(sp, "calibrate_noise_multiplier", lambda *a, **k: calls.append(a) or real(*a, **k))
    eps = []
    for rnd in (1, 2):
        trainer = FakeTrainer()
        _, metrics, report = _round(tmp_path, rnd, trainer)
        eps.append(metrics["epsilon"])
        assert trainer.calls[0][1].noise_multiplier == metrics["noise_multiplier"]
    assert len(calls) == 1
    target_sgd, delta, q, steps = calls[0][:4]
    assert (q, steps) == (0.2, 30) and target_sgd == pytest.approx(4.0 - (1 + 2 * 2) * 2 / 20.0)  # minus planned noisy-max
    sigmas = {e[0] for e in PrivacyLedger(tmp_path, "fp-x").history()}
    assert len(sigmas) == 1
    assert eps[1] > eps[0] > 0
    # a full planned schedule stays within target-epsilon (calibration covers DP-SGD + noisy-max)
    _, metrics, _ = _round(tmp_path, 3)
    assert eps[1] < metrics["epsilon"] <= CFG.target_epsilon * 1.001
    assert len(calls) == 1
    state = json.loads(next((tmp_path / sp.CALIBRATION_DIR).glob("*.json")).read_text())
    assert len(state["schedules"]) == 1


def test_spend_is_in_the_ledger_when_the_process_dies_before_replying(tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise SystemExit("ClientApp killed after training, before the reply was built")

    monkeypatch.setattr(sp, "build_report", killed)
    trainer = FakeTrainer()
    with pytest.raises(SystemExit):
        _round(tmp_path, 1, trainer)
    assert trainer.calls, "training ran"
    ledger = PrivacyLedger(tmp_path, "fp-x")  # what a restarted process reads from disk
    kinds = [e["type"] for e in ledger.events()]
    assert kinds == ["dpsgd", "laplace"] and ledger.history()[0][2] == 10  # round 1: one mining after epoch 1
    assert all(e["round"] == 1 and e["run_id"] == "run-1" for e in ledger.events())
    monkeypatch.undo()
    # the restarted site continues from its ledger: round 2 adds to round 1, sigma unchanged
    _, metrics, report = _round(tmp_path, 2)
    hist = PrivacyLedger(tmp_path, "fp-x").history()
    assert len(hist) == 2 and hist[0][0] == hist[1][0] == metrics["noise_multiplier"]
    assert [r["round"] for r in report["per_round"]] == [1, 2]
    assert report["per_round"][0]["epsilon"] < report["per_round"][1]["epsilon"] == pytest.approx(metrics["epsilon"])


def test_corrupt_ledger_refuses_with_a_clear_message(tmp_path):
    _round(tmp_path, 1)
    path = tmp_path / "privacy-ledger" / "fp-x.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace('"steps":10', '"steps":1'), *lines[1:]]) + "\n")
    trainer = FakeTrainer()
    with pytest.raises(sp.PrivacyRefused) as err:
        _round(tmp_path, 2, trainer)
    msg = str(err.value)
    assert "hospital_x" in msg and "refuses to train" in msg and str(path) in msg and "line 1" in msg
    assert not trainer.calls


def test_corrupt_calibration_refuses(tmp_path):
    _round(tmp_path, 1)
    next((tmp_path / sp.CALIBRATION_DIR).glob("*.json")).write_text("{not json")
    with pytest.raises(sp.PrivacyRefused, match="hospital_x.*calibration file"):
        _round(tmp_path, 2)


def test_cap_refuses_before_training_and_names_site_projection_and_cap(tmp_path):
    _, first, _ = _round(tmp_path, 1, cap=2.5)
    trainer = FakeTrainer()
    with pytest.raises(sp.PrivacyRefused) as err:
        _round(tmp_path, 2, trainer, cap=first["epsilon"] * 1.05)
    msg = str(err.value)
    assert "hospital_x" in msg and "max-epsilon=" in msg and "epsilon=" in msg
    projected = float(msg.split("epsilon=")[1].split(" ")[0])
    assert projected > first["epsilon"] * 1.05
    assert not trainer.calls and len(PrivacyLedger(tmp_path, "fp-x")) == 2  # nothing recorded for round 2


def test_default_cap_is_target_epsilon_at_most_ten():
    assert sp.site_cap(None, CFG) == 4.0
    assert sp.site_cap(None, CFG.replace(target_epsilon=50.0)) == sp.DEFAULT_MAX_EPSILON == 10.0
    assert sp.site_cap(float("inf"), CFG) == float("inf")
    with pytest.raises(sp.PrivacyRefused, match="max-epsilon"):
        sp.site_cap(0.0, CFG)


def test_epsilon_never_decreases_across_rounds_restarts_and_runs(tmp_path):
    lifetime = []
    for run_id, rnd in [("run-1", 1), ("run-1", 2), ("run-2", 1), ("run-2", 2)]:
        _, metrics, report = _round(tmp_path, rnd, run_id=run_id, cap=100.0)
        lifetime.append(metrics["epsilon_lifetime"])
        assert report["lifetime"]["epsilon"] == pytest.approx(metrics["epsilon_lifetime"])
    assert all(b > a for a, b in zip(lifetime, lifetime[1:]))
    assert report["lifetime"]["runs"] == ["run-1", "run-2"]
    assert report["epsilon"] < report["lifetime"]["epsilon"]  # headline covers this run, lifetime all runs


def test_report_epsilon_matches_dp_accounting_recomputed_from_history(tmp_path):
    import dp_accounting  # noqa: F401
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    for rnd in (1, 2):
        _, metrics, report = _round(tmp_path, rnd)
    assert report["accountant"] == "prv" and report["history"] and report["other_events"]
    pld = None
    for sigma, q, steps in report["history"]:
        part = pld_lib.from_gaussian_mechanism(sigma, sampling_prob=q,
                                               value_discretization_interval=1e-4).self_compose(steps)
        pld = part if pld is None else pld.compose(part)
    # TLA's mean scores are not monotone: 2/b per selection; round 1 makes one selection fewer (untrained epoch)
    assert sum(ev["count"] for ev in report["other_events"]) == 1 + 2
    assert not any(ev["monotone"] for ev in report["other_events"])
    pure = sum(ev["count"] * 2 * ev["sensitivity"] / ev["scale"] for ev in report["other_events"])
    recomputed = pld.get_epsilon_for_delta(report["delta"]) + pure
    assert report["epsilon"] == pytest.approx(recomputed, rel=0.01)
    assert report["epsilon_cross_check"]["pld_basic"] == pytest.approx(report["epsilon"], rel=0.01)
    assert json.loads(json.dumps(report))["site"] == "hospital_x"  # travels as JSON


def test_noisy_max_seed_is_secret_to_the_site(tmp_path):
    a = sp.secret_seed(tmp_path / "a", "fp", 0, "run", 1)
    assert a == sp.secret_seed(tmp_path / "a", "fp", 0, "run", 1)  # reproducible at the site
    assert a != sp.secret_seed(tmp_path / "b", "fp", 0, "run", 1)  # not derivable from the run config
    trainer = FakeTrainer()
    _round(tmp_path, 1, trainer)
    assert trainer.calls[0][0].seed != CFG.seed


def test_planned_noisy_max_alone_over_target_refuses(tmp_path):
    with pytest.raises(sp.PrivacyRefused, match="tla-noise-scale"):
        _round(tmp_path, 1, cfg=CFG.replace(tla_noise_scale=1.0))
    assert noisy_max_event(1.0)["epsilon0"] == 1.0


def test_auto_tla_scale_spends_the_configured_share_of_the_target(tmp_path, monkeypatch):
    """tla-noise-scale 0: b = 2 * selections / (share * target), so the planned noisy-max selections cost exactly
    tla-epsilon-share of target-epsilon, DP-SGD is calibrated to the rest, and the ledger records that b."""
    cfg = CFG.replace(tla_noise_scale=0.0, tla_epsilon_share=0.1)
    sched = sp.plan_schedule(N_TRAIN, cfg, uses_tla=True)
    b = sp.with_tla_scale(cfg, sched).tla_noise_scale
    assert sched.noisy_max_total * 2 / b == pytest.approx(0.1 * cfg.target_epsilon)
    calls = []
    real = sp.calibrate_noise_multiplier
    monkeypatch.setattr(sp, "calibrate_noise_multiplier", lambda *a, **k: calls.append(a) or real(*a, **k))
    for rnd in (1, 2, 3):
        _, metrics, _ = _round(tmp_path, rnd, cfg=cfg)
        assert metrics["tla_noise_scale"] == pytest.approx(b)
    assert calls[0][0] == pytest.approx(0.9 * cfg.target_epsilon)
    laplace = [e for e in PrivacyLedger(tmp_path, "fp-x").events() if e["type"] == "laplace"]
    assert sum(e["count"] * e["epsilon0"] for e in laplace) == pytest.approx(0.1 * cfg.target_epsilon)
    assert metrics["epsilon"] <= cfg.target_epsilon * 1.001
    # an explicit scale is used as given; no selections (no TLA) need no scale
    assert sp.with_tla_scale(CFG, sched).tla_noise_scale == CFG.tla_noise_scale
    none = sp.plan_schedule(N_TRAIN, cfg, uses_tla=False)
    assert sp.with_tla_scale(cfg, none).tla_noise_scale == 0.0
