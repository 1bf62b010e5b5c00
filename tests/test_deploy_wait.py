"""``flwr_wait`` polling: the interval backs off, and a local "the run is ending" check makes the end noticed within
a second instead of up to ``max_poll`` seconds late. A fake clock and a fake ``flwr`` CLI: deterministic, no timing."""
from __future__ import annotations

import json

import pytest

import sim.deploy as deploy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def fake(monkeypatch, tmp_path):
    clock = FakeClock()
    monkeypatch.setattr(deploy.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(deploy.time, "sleep", clock.sleep)
    calls: list[float] = []
    finish_at = {"t": 30.0}

    def cli(procs, args, timeout=120):
        if args[0] == "ls":
            calls.append(clock.now)
            status = "finished:completed" if clock.now >= finish_at["t"] else "running"
            return json.dumps({"runs": [{"status": status}]})
        return "log text"

    monkeypatch.setattr(deploy, "_cli", cli)

    class Procs:
        work = tmp_path

        def check_alive(self):
            pass

    return clock, calls, finish_at, Procs()


def test_polling_backs_off_and_notices_the_end_late_without_a_hint(fake):
    clock, calls, _, procs = fake
    assert deploy.flwr_wait(procs, "7", poll=2.0, max_poll=10.0) == "finished:completed"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[:3] == pytest.approx([2.0, 3.0, 4.5]) and max(gaps) == pytest.approx(10.0)
    assert calls[-1] - 30.0 > 1.0  # the end (t = 30) is seen only at the next backed-off poll


def test_ending_hint_makes_the_end_noticed_within_a_second(fake, tmp_path, monkeypatch):
    clock, calls, _, procs = fake
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"final": {"old": 1}}))  # a resumed run's previous final
    ending = deploy.final_written(run_dir)
    assert not ending()

    real_sleep = clock.sleep

    def sleep(seconds):  # the ServerApp writes its final entry at t = 29
        real_sleep(seconds)
        if clock.now >= 29.0:
            (run_dir / "metrics.json").write_text(json.dumps({"final": {"global": {"auroc": 0.7}}}))

    monkeypatch.setattr(deploy.time, "sleep", sleep)
    assert deploy.flwr_wait(procs, "7", poll=2.0, max_poll=10.0, ending=ending) == "finished:completed"
    assert ending() and 30.0 <= calls[-1] <= 31.0
