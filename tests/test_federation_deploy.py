"""Integration: a real `flower-superlink` + 3 `flower-supernode` processes on 127.0.0.1 run 2 rounds of
configs/smoke.yaml through `flwr run`; every process started here is stopped, whatever happens."""
from __future__ import annotations

import json

import pytest

from sim.deploy import is_running, flower_processes, flwr_run, start_superlink, start_supernode, write_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_superlink_and_three_supernodes_run_two_rounds(tmp_path):
    from sim.generator import generate_federation

    data = generate_federation("smoke", 3, tmp_path / "data", seed=0)
    sites = sorted(p for p in data.iterdir() if p.is_dir())
    run_dir = tmp_path / "run"
    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        for site in sites:
            start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(tmp_path / "state" /
                                                                                               site.name)})
        write_connection(procs.env, port)
        assert len(procs.procs) == 4
        flwr_run(procs, {"config": "smoke", "run-dir": str(run_dir), "rounds": 2, "min-sites": 3}, timeout=840)
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
