"""Experiment tracking (omnifuse_core.tracking): TensorBoard event files derived from metrics.json."""
from __future__ import annotations

import json
import logging
import math
import struct
import sys
from pathlib import Path

import pytest

from omnifuse_core.config import TRACKER_NAMES, Config, ConfigError
from omnifuse_core.tracking import TRACKERS, TrackingError, make_tracker, record_scalars
from server.run_dir import RunRecorder


def read_scalars(folder: Path) -> dict[tuple[str, int], float]:
    """Every scalar in the TFRecord event files of ``folder`` (length, crc, Event proto, crc per record)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[tuple[str, int], float] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    key = (value.tag, int(event.step))
                    assert key not in out, f"{key} written twice"
                    out[key] = value.simple_value
    return out


RECORD = {
    "rounds": [
        {"round": 1, "global": {"n": 30, "auroc": 0.6, "ppv": None, "f1": float("nan")},
         "sites": {"a": {"n": 10, "auroc": 0.5}, "b": {"n": 20, "auroc": 0.65}},
         "train": {"a": {"loss": 2.0, "steps": 4, "counts": {"n": 8}, "trace": {"lazy": []}}},
         "rejected": {"b": "non-finite update"}, "seconds": 1.5,
         "timing": {"a": {"train": {"load": 0.1, "train": 0.7}, "evaluate": {"evaluate": 0.2}}}},
        {"round": 2, "global": {}, "sites": {}, "train": {"a": {"loss": 1.5}}, "seconds": 0.0},
    ],
    "privacy": {"a": {"epsilon": 1.25, "delta": 1e-5, "accountant": "prv"}},
    "final": {"global": {"n": 30, "auroc": 0.7}, "sites": {"a": {"auroc": 0.72}}, "model_round": 2,
              "pooled_binned": {"auroc": 0.69, "ci_low": 0.6, "bins": 1000}, "stopped_early": None},
}


def test_record_scalars_names_every_finite_number_by_round():
    got = {(tag, step): value for tag, step, value in record_scalars(RECORD)}
    assert got == {
        ("val/auroc", 1): 0.6, ("val_site/auroc/a", 1): 0.5, ("val_site/auroc/b", 1): 0.65,
        ("train/loss/a", 1): 2.0, ("train/steps/a", 1): 4.0, ("train/rejected_sites", 1): 1.0,
        ("time/round_seconds", 1): 1.5, ("time/train_load/a", 1): 0.1, ("time/train_train/a", 1): 0.7,
        ("time/evaluate_evaluate/a", 1): 0.2,
        ("train/loss/a", 2): 1.5, ("train/rejected_sites", 2): 0.0,
        ("privacy/epsilon/a", 2): 1.25, ("privacy/delta/a", 2): 1e-5,
        ("test/auroc", 2): 0.7, ("test_site/auroc/a", 2): 0.72,
        ("test/pooled_binned_auroc", 2): 0.69, ("test/pooled_binned_ci_low", 2): 0.6,
        ("test/pooled_binned_bins", 2): 1000.0,
    }  # n, None, NaN, strings, booleans, nested counts/traces and a not-yet-measured 0 s round are left out


def test_tracker_names_match_the_config_choices():
    assert tuple(TRACKERS.names()) == tuple(sorted(TRACKER_NAMES))
    with pytest.raises(ConfigError, match="tracking"):
        Config().replace(tracking="wandb")


def _recorder(tmp_path: Path, **kw) -> RunRecorder:
    return RunRecorder(Config().replace(run_dir=str(tmp_path / "run"), tracking="tensorboard"), **kw)


def test_recorder_writes_each_scalar_once_as_the_record_grows(tmp_path):
    rec = _recorder(tmp_path)
    rec.record_round({"round": 1, "global": {}, "sites": {}, "train": {"a": {"loss": 2.0}}, "seconds": 0.0})
    rec.update_round(1, {"global": {"n": 5, "auroc": 0.6}, "sites": {"a": {"n": 5, "auroc": 0.6}}})
    rec.update_round(1, {"seconds": 2.0})
    rec.record_round({"round": 2, "global": {}, "sites": {}, "train": {"a": {"loss": 1.0}}, "seconds": 0.0})
    rec.update_round(2, {"global": {"n": 5, "auroc": 0.8}, "sites": {"a": {"n": 5, "auroc": 0.8}}})
    rec.record_final({"global": {"n": 5, "auroc": 0.75}, "sites": {"a": {"n": 5, "auroc": 0.75}}, "model_round": 2})
    rec.close()
    events = read_scalars(tmp_path / "run" / "tensorboard")
    assert events[("val/auroc", 1)] == pytest.approx(0.6) and events[("val/auroc", 2)] == pytest.approx(0.8)
    assert events[("time/round_seconds", 1)] == 2.0 and events[("test/auroc", 2)] == pytest.approx(0.75)
    assert events[("train/loss/a", 1)] == 2.0 and events[("train/loss/a", 2)] == 1.0
    expected = {(tag, step): value for tag, step, value in record_scalars(rec.data)}
    assert events.keys() == expected.keys()


def test_resume_rebuilds_the_event_files_from_metrics_json(tmp_path):
    rec = _recorder(tmp_path)
    for rnd in (1, 2, 3):
        rec.record_round({"round": rnd, "global": {"n": 5, "auroc": 0.5 + rnd / 10}, "sites": {}, "seconds": 1.0})
    rec.close()
    again = _recorder(tmp_path, resume=True)
    again.keep_rounds(2)  # the checkpoint was round 2: round 3 is re-run with a different value
    again.record_round({"round": 3, "global": {"n": 5, "auroc": 0.95}, "sites": {}, "seconds": 1.0})
    again.close()
    folder = tmp_path / "run" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = read_scalars(folder)
    assert [round(events[("val/auroc", r)], 4) for r in (1, 2, 3)] == [0.6, 0.7, 0.95]


def test_missing_package_is_a_config_error_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(TrackingError, match=r"omnifuse-fl\[tracking\]"):
        make_tracker("tensorboard", tmp_path)
    assert isinstance(TrackingError("x"), ConfigError)  # the CLI shows it as a config error


def test_tracking_none_writes_nothing(tmp_path):
    rec = RunRecorder(Config().replace(run_dir=str(tmp_path / "run")))
    rec.record_round({"round": 1, "global": {"n": 5, "auroc": 0.6}, "sites": {}})
    rec.close()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_failing_tracker_is_switched_off_and_metrics_json_is_complete(tmp_path, caplog):
    rec = _recorder(tmp_path)

    def broken(record):
        raise OSError("No space left on device")

    rec.tracker.update = broken
    with caplog.at_level(logging.WARNING):
        rec.record_round({"round": 1, "global": {"n": 5, "auroc": 0.6}, "sites": {}})
        rec.record_round({"round": 2, "global": {"n": 5, "auroc": 0.7}, "sites": {}})
    rec.close()
    assert sum("tracking 'tensorboard' failed" in r.message for r in caplog.records) == 1
    assert [r["round"] for r in json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]] == [1, 2]
    assert math.isclose(json.loads(rec.path.read_text())["rounds"][1]["global"]["auroc"], 0.7)


def test_cli_names_the_missing_tracking_package(smoke_federation, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from omnifuse_cli.main import cli

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    result = CliRunner().invoke(cli, ["train", "--no-report", "--mode", "centralized", "--config", "smoke", "--data",
                                      str(smoke_federation), "--out", str(tmp_path / "r"), "--set", "tracking=tensorboard"])
    assert result.exit_code != 0
    assert isinstance(result.exception, TrackingError)  # main() prints ConfigErrors as one line without traceback
    assert "pip install 'omnifuse-fl[tracking]'" in str(result.exception)
