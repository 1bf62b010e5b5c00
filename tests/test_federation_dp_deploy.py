"""Integration with DP: a real `flower-superlink` + 3 `flower-supernode` processes on 127.0.0.1 run 1 round of
configs/smoke-dp.yaml. Each site keeps its ledger in its own node-config `state-dir`; hospital_c's own
`max-epsilon` is below one round's spend, so it refuses, the server records why, and the others train."""
from __future__ import annotations

import json

import pytest

from omnifuse_core.privacy import PrivacyLedger
from sim.deploy import flower_processes, flwr_run, is_running, start_superlink, start_supernode, write_connection

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_dp_round_in_real_processes_with_a_site_refusing_over_its_cap(smoke_federation, tmp_path):
    sites = sorted(p for p in smoke_federation.iterdir() if p.is_dir())
    caps = {"hospital_a": 20.0, "hospital_b": 20.0, "hospital_c": 1.0}
    run_dir, state = tmp_path / "run", tmp_path / "state"
    with flower_processes(tmp_path / "flower") as procs:
        port = start_superlink(procs, simulation=False)
        for site in sites:
            start_supernode(procs, site.name, port, {"data-path": str(site), "state-dir": str(state / site.name),
                                                     "max-epsilon": caps[site.name]})
        write_connection(procs.env, port)
        flwr_run(procs, {"config": "smoke-dp", "run-dir": str(run_dir), "rounds": 1, "min-sites": 3}, timeout=840)
    assert not [pid for pid in procs.stopped_pids if is_running(pid)], "a Flower process outlived the test"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    (rnd,) = metrics["rounds"]
    assert set(rnd["train"]) == {"hospital_a", "hospital_b"}
    assert list(rnd["privacy_refused"]) == ["hospital_c"]
    reason = rnd["privacy_refused"]["hospital_c"]
    assert "hospital_c" in reason and "max-epsilon=1" in reason
    assert not (state / "hospital_c" / "privacy-ledger").exists() or \
        all(len(PrivacyLedger.from_file(f)) == 0 for f in (state / "hospital_c" / "privacy-ledger").glob("*.jsonl"))
    for name in ("hospital_a", "hospital_b"):
        report = json.loads((run_dir / "privacy" / f"{name}.json").read_text())
        ledger = PrivacyLedger.from_file(next((state / name / "privacy-ledger").glob("*.jsonl")))
        assert ledger.history() == [tuple(h) for h in report["history"]] and len(ledger.history()) == 1
        assert report["max_epsilon"] == 20.0 and metrics["privacy"][name]["epsilon"] == pytest.approx(report["epsilon"])
    assert not (run_dir / "site-state").exists()  # deployment: state lives only on the sites' own disks
    assert set(metrics["final"]["sites"]) == {s.name for s in sites}
