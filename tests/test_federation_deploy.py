"""Integration: a real `flower-superlink` (state in an on-disk `--database`) + 3 `flower-supernode` processes on
127.0.0.1 run 2 rounds of configs/smoke.yaml through `flwr run`. Then, on the same processes, a second run is cut
twice: its ServerApp process is SIGKILLed once the round-1 checkpoint is on disk (resumed by `flwr run` with
resume=true); the resumed run loses the whole SuperLink (SIGKILL, ServerApp included) once the round-2 checkpoint is
on disk; the SuperLink is restarted on the same port and database, the SuperNodes — not restarted — reconnect by
themselves, and a third `flwr run` (resume=true) finishes the run within 0.005 AUROC of the uninterrupted one. Every
process started here is stopped, whatever happens."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from sim.deploy import (flower_processes, flwr_run, flwr_stop, flwr_submit, is_running, list_supernodes,
                        serverapp_pids, start_superlink, start_supernode, wait_supernodes_online, write_connection)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _kill_after_checkpoint(procs, run_dir, rnd: int, events: dict, stop: threading.Event, what: str) -> None:
    """SIGKILL ``what`` ("serverapp": the ServerApp process; "superlink": the SuperLink and all it spawned, as a
    crashed machine) as soon as ``checkpoints/latest.json`` says round ``rnd``."""
    latest = run_dir / "checkpoints" / "latest.json"
    while not stop.is_set():
        try:
            done = json.loads(latest.read_text())["round"]
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= rnd:
            if what == "superlink":
                pids = procs.kill("superlink")
            else:
                pids = serverapp_pids(procs)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
            events.update(killed=pids, at_round=done)
            return
        time.sleep(0.05)


def _cut(procs, run_dir, rnd: int, what: str, run_config: dict) -> tuple[str, dict]:
    """Submit ``run_config`` and kill ``what`` after round ``rnd``'s checkpoint; returns (run id, events)."""
    events: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_kill_after_checkpoint, args=(procs, run_dir, rnd, events, stop, what),
                               daemon=True)
    watcher.start()
    run_id = flwr_submit(procs, run_config)
    watcher.join(timeout=600)
    stop.set()
    assert events.get("killed"), f"{what} was not found or round {rnd} never finished: {events}"
    return run_id, events


def test_superlink_and_three_supernodes_run_two_rounds_and_resume_after_serverapp_or_superlink_dies(tmp_path):
    from sim.generator import generate_federation

    data = generate_federation("smoke", 3, tmp_path / "data", seed=0)
    sites = sorted(p for p in data.iterdir() if p.is_dir())
    run_dir, cut_dir = tmp_path / "run", tmp_path / "run-interrupted"
    database = tmp_path / "superlink.db"
    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False, database=database)
        supernodes = [start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(
            tmp_path / "state" / site.name)}) for site in sites]
        write_connection(procs.env, port)
        assert len(procs.procs) == 4
        run_config = {"config": "smoke", "rounds": 2, "min-sites": 3}
        flwr_run(procs, {**run_config, "run-dir": str(run_dir)}, timeout=840)
        node_ids = sorted(n["node-id"] for n in list_supernodes(procs))

        # the same federation again; its ServerApp dies right after the round-1 checkpoint
        cut_id, _ = _cut(procs, cut_dir, 1, "serverapp", {**run_config, "run-dir": str(cut_dir)})
        flwr_stop(procs, cut_id)  # what an operator does for a run whose server died
        assert json.loads((cut_dir / "checkpoints" / "latest.json").read_text())["round"] == 1

        # resumed; now the whole SuperLink dies right after the round-2 checkpoint and restarts on its database
        resumed_id, _ = _cut(procs, cut_dir, 2, "superlink", {**run_config, "run-dir": str(cut_dir), "resume": True})
        assert start_superlink(procs, simulation=False, database=database, port=port) == port
        assert sorted(n["node-id"] for n in wait_supernodes_online(procs, 3)) == node_ids  # the same nodes
        flwr_stop(procs, resumed_id)  # the restarted SuperLink still lists the lost run as running
        flwr_run(procs, {**run_config, "run-dir": str(cut_dir), "resume": True}, timeout=840)
        assert all(p.poll() is None for p in supernodes), "a SuperNode exited instead of reconnecting"
    # every process started here, and everything they spawned (ServerApp, ClientApps), is gone
    assert len(procs.stopped_pids) >= 4
    assert not [pid for pid in procs.stopped_pids if is_running(pid)], "a Flower process outlived the test"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = {s.name for s in sites}
    assert metrics["mode"] == "federated" and metrics["strategy"] == "modality_aware"
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for rnd in metrics["rounds"]:
        assert set(rnd["sites"]) == names and set(rnd["train"]) == names and rnd["rejected"] == {}
        assert 0.0 <= rnd["global"]["auroc"] <= 1.0
    final = metrics["final"]
    assert set(final["sites"]) == names and final["split"] == "test"
    assert final["global"]["n"] == sum(s["n"] for s in final["sites"].values()) > 0
    assert (run_dir / "checkpoints" / "round-0002.safetensors").exists()
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["round"] == 2

    # the resumed run: round 1 as recorded before the kill, round 2 trained once, final within 0.005 AUROC
    resumed = json.loads((cut_dir / "metrics.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1, 2]
    assert set(resumed["rounds"][1]["train"]) == names
    log_text = (cut_dir / "logs" / "server.log").read_text()
    assert "resuming after round 1" in log_text and "resuming after round 2" in log_text
    assert abs(resumed["final"]["global"]["auroc"] - final["global"]["auroc"]) <= 0.005
    for a, b in zip(metrics["rounds"], resumed["rounds"]):
        assert abs(a["global"]["auroc"] - b["global"]["auroc"]) <= 0.005
